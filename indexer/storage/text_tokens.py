"""Per-text token states (the text tower's: MiniLM 384 wide, MPNet 768) for the cross-attention reranker,
stored when a text corpus is indexed, so that reranking an image query's candidate texts needs no text-tower
pass at query time (measured: the pass over 16 candidate texts is ~40 ms of a ~50 ms image -> text rerank
on 2 cores; reading them is ~0.1 ms).

Layout: `text_tokens.f16` holds the states (float16, real tokens only, [CLS] ... [SEP]) appended one text
after another; `text_tokens.v2.idx` holds one fixed 32-byte slot per text id: an 8-byte tag (the first 8
bytes of the SHA-256 of the text), the offset (in tokens), the token count and the CRC-32 of the states'
bytes. The states are written and flushed before the slot, so a crash leaves at worst unreferenced bytes; a
slot whose tag does not match the stored text (an id reused after a delete) or whose states fail their CRC
(bit rot) reads as missing, and missing states are computed at query time. A library with the older
24-byte `text_tokens.idx` (no CRC) starts both files afresh on its next write.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

DATA, INDEX, OLD_INDEX = "text_tokens.f16", "text_tokens.v2.idx", "text_tokens.idx"
SLOT = np.dtype([("tag", "<u8"), ("offset", "<u8"), ("length", "<u8"), ("crc", "<u8")])  # 32 bytes per text id


def text_tag(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") or 1  # 0 = empty slot


class TextTokenStore:
    """`width`: the token states' width (the library's text tower: 384 for lite's MiniLM, 768 for base's
    MPNet); read with another width, a slot fails its CRC and reads as missing."""

    def __init__(self, root: str | os.PathLike, width: int = 384):
        self.root, self.width = Path(root), width
        self.data, self.index = self.root / DATA, self.root / INDEX

    def write(self, ids: Sequence[int], texts: Sequence[str], states: Sequence[np.ndarray]) -> None:
        """states[i]: (T_i, width) token states of texts[i] (real tokens only)."""
        if not ids:
            return
        wrong = {np.shape(s)[-1] for s in states} - {self.width}
        if wrong:
            raise ValueError(f"token states {sorted(wrong)} wide do not fit a store of width {self.width}")
        if (self.root / OLD_INDEX).exists():  # the layout without CRCs: its states are dropped, not misread
            for old in (self.root / OLD_INDEX, self.data, self.index):
                old.unlink(missing_ok=True)
        blob = np.concatenate([np.asarray(s, np.float16).reshape(-1, self.width) for s in states])
        with open(self.data, "ab") as f:
            start = f.tell() // (2 * self.width)
            f.write(blob.tobytes())
            f.flush()
            os.fsync(f.fileno())
        offsets = start + np.concatenate([[0], np.cumsum([len(s) for s in states])[:-1]])
        with open(self.index, "r+b" if self.index.exists() else "w+b") as f:
            for i, text, off, s in sorted(zip(ids, texts, offsets, states), key=lambda x: x[0]):
                f.seek(int(i) * SLOT.itemsize)
                data = np.asarray(s, np.float16).reshape(-1, self.width).tobytes()
                f.write(np.array([(text_tag(text), int(off), len(s), zlib.crc32(data))], SLOT).tobytes())
            f.flush()
            os.fsync(f.fileno())

    def read(self, ids: Sequence[int], texts: Sequence[str]) -> list[np.ndarray | None]:
        """(T_i, width) float16 states per text, or None where missing or stale."""
        out: list[np.ndarray | None] = [None] * len(ids)
        if not self.index.exists() or not self.data.exists():
            return out
        slots = np.memmap(self.index, SLOT, "r")
        data = np.memmap(self.data, np.float16, "r").reshape(-1, self.width)
        for r, (i, text) in enumerate(zip(ids, texts)):
            if text is None or not 0 <= int(i) < len(slots):
                continue
            tag, off, n, crc = slots[int(i)]
            if tag and tag == text_tag(text) and off + n <= len(data):
                states = np.asarray(data[off:off + n])
                if zlib.crc32(states.tobytes()) == crc:
                    out[r] = states
        return out
