"""A bundled model (lite, base) at query time without torch: its text and image paths as ONNX Runtime graphs.

A search encodes one query: importing torch for it costs about 4 s and 300 MB, more than everything else a
search does. `LiteQueryEncoder` runs the same graphs the indexer exports (`onnx_text.py`, `onnx_image.py`),
found through a small manifest in the cache that `LiteEncoder.export_query_graphs()` writes (after every
`xmodal index` with the lite model, and on the first search on a machine otherwise). It has the encoder
interface of `LiteEncoder` and the same outputs to ~1e-6 (tests/test_query_path.py); only a query photo's
resize differs (Pillow's bicubic instead of torch's kernel that mimics it: pixels within about one level).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from xmodal.indexer.models.base import Preprocess
from xmodal.indexer.models.onnx_runtime import OnnxImagePath, OnnxTextPath, cache_dir, file_stamp
from xmodal.indexer.resources import data_file

logger = logging.getLogger(__name__)

LITE_HEADS = data_file("lite-align.pt")  # as lite_encoder.LITE_HEADS, without importing torch
FORMAT = 3  # of the manifest (2: graphs with their weights in files beside them; 3: the text graph saved optimised)


def manifest_path(checkpoint: str | os.PathLike = LITE_HEADS) -> Path:
    """Where the manifest of this heads checkpoint's query graphs lives (keyed by the file's path, size and
    modification time and the onnxruntime version: no hashing at start-up)."""
    return cache_dir() / f"lite-query-{file_stamp(checkpoint, 'query', FORMAT)}.json"


def read_manifest(checkpoint: str | os.PathLike = LITE_HEADS) -> dict | None:
    """The manifest, or None when it is missing, unreadable or names a file that is gone."""
    path = manifest_path(checkpoint)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or not all(Path(manifest[k]).exists() for k in ("text", "image", "tokenizer")):
        return None
    return manifest


def write_manifest(checkpoint: str | os.PathLike, manifest: dict) -> Path:
    path = manifest_path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**manifest, "format": FORMAT}, indent=1,
                              default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)), encoding="utf-8")
    os.replace(tmp, path)
    return path


class LiteQueryEncoder:
    """The lite encoder's query side on ONNX Runtime: encode_texts, encode_text_states, encode_images and
    encode_images_with_patches as `LiteEncoder`'s, with numpy outputs. The image session is made on first use
    (a text search never loads it)."""

    name = "lite"
    runtime = "onnx"

    def __init__(self, manifest: dict):
        from xmodal.indexer.models.tokenizer import Tokenizer

        self.manifest = manifest
        self.name = str(manifest.get("model", "lite"))  # the bundled model: "lite", "base"
        self.dim = int(manifest["dim"])
        self.languages = tuple(manifest.get("languages", ("en",)))
        self.preprocess = Preprocess(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in manifest["preprocess"].items()})
        self.info = manifest.get("info", {})
        self.batch_size = 16
        self.tokenizer = Tokenizer(manifest["tokenizer"])
        self.text_path = OnnxTextPath(Path(manifest["text"]), optimized=True)  # format 3: saved optimised
        self._image, self._lock = None, threading.Lock()

    @property
    def revision(self) -> str | None:
        """As LiteEncoder.revision: from the heads checkpoint's sha256 the manifest keeps."""
        sha = self.manifest.get("checkpoint_sha256")
        return self.preprocess.revision(sha) if sha else None

    @property
    def image_path(self) -> OnnxImagePath:
        with self._lock:
            if self._image is None:
                self._image = OnnxImagePath(Path(self.manifest["image"]))
            return self._image

    @property
    def lanes(self) -> int:
        return 1

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = [self.encode_text_states(texts[s:s + 64])[0] for s in range(0, len(texts), 64)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_text_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> (n, dim) embeddings, (n, T, C) token states, (n, T) mask, (n, T) ids (as LiteEncoder's)."""
        ids, mask = self.tokenizer.arrays(list(texts), max_length=64)
        if len(ids) == 0:
            width = int(self.manifest.get("text_width", 384))
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 0, width), np.float32), mask, ids
        emb, states = self.text_path(ids, mask)
        return np.ascontiguousarray(emb, np.float32), states, mask, ids

    def encode_images_with_patches(self, images: Sequence[Image.Image], lane: int | None = None
                                   ) -> tuple[np.ndarray, np.ndarray]:
        """-> (n, dim) embeddings and (n, P, 1280) raw patch tokens (row-major: 7 x 7 at 224 px, 9 x 9 at
        280 px), as LiteEncoder's."""
        vectors, tokens = [], []
        for s in range(0, len(images), self.batch_size):
            emb, maps = self.image_path(self.preprocess.array(images[s:s + self.batch_size]))  # (B, D), (B, C, 7, 7)
            vectors.append(emb)
            tokens.append(maps.reshape(maps.shape[0], maps.shape[1], -1).transpose(0, 2, 1))  # (B, P, C)
        if not vectors:
            side = -(-self.preprocess.size // 32)  # the tower's stride
            return np.zeros((0, self.dim), np.float32), np.zeros((0, side * side, 1280), np.float32)
        return np.ascontiguousarray(np.concatenate(vectors), np.float32), np.concatenate(tokens)

    def encode_images(self, images: Sequence[Image.Image], lane: int | None = None) -> np.ndarray:
        return self.encode_images_with_patches(images, lane)[0]
