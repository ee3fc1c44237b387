"""The text model's tokenizer, straight from its `tokenizer.json` with the `tokenizers` library (Rust, about
0.1 s to import), in place of `transformers.AutoTokenizer` (seconds and 140 MB to import): the same ids,
checked against it in tests/test_minilm.py.

A batch is padded to its longest text and truncated to `max_length` tokens, [CLS] and [SEP] included,
as ``tokenizer(texts, padding=True, truncation=True, max_length=...)`` does in `transformers`.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


class TokenizerError(ValueError):
    pass


class Tokenizer:
    def __init__(self, tokenizer_json: str | Path):
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(tokenizer_json)
        self.path = path  # the tokenizer.json it was read from (named in the query graphs' manifest)
        try:
            self._tok = RustTokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the Rust side raises a bare Exception for a bad file
            raise TokenizerError(f"{path}: not a readable tokenizer.json ({exc})") from None
        pad = (json.loads(path.read_text(encoding="utf-8")).get("padding") or {})
        self.pad_id = int(pad.get("pad_id", 0))
        self.pad_token = pad.get("pad_token", "[PAD]")
        self._tok.no_truncation()
        self._tok.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token)  # to the longest of each batch
        self._max_length: int | None = None
        self._lock = threading.Lock()  # the Rust tokenizer refuses a settings change while another thread encodes

    def __call__(self, texts: Sequence[str], max_length: int = 64) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(B, T) int64 token ids and (B, T) int64 0/1 attention mask, T <= max_length, as torch tensors."""
        import torch

        ids, mask = self.arrays(texts, max_length)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def arrays(self, texts: Sequence[str], max_length: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) int64 token ids and (B, T) int64 0/1 attention mask, T <= max_length (numpy: the ONNX path)."""
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        if not texts:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64)
        with self._lock:  # encoding a query takes microseconds: one at a time costs nothing
            if max_length != self._max_length:
                self._tok.enable_truncation(max_length)
                self._max_length = max_length
            encodings = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], np.int64)
        mask = np.array([e.attention_mask for e in encodings], np.int64)
        return ids, mask

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(int(i)) for i in ids]
