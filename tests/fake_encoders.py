"""The deterministic fake encoder used by the tests, importable on its own so that child processes can use
it too: `python tests/fake_xmodal.py ...` registers it and runs the real `xmodal` command.

`FAKE_ENCODER_DELAY` (seconds, default 0) makes every `encode_images` call sleep, so that tests can kill
or interrupt an indexing run in the middle; nothing in the library code knows about it."""
from __future__ import annotations

import os
import time

import numpy as np

from xmodal.indexer.models.base import Preprocess

COLOURS = {
    "red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20),
    "white": (250, 250, 250), "black": (5, 5, 5), "purple": (140, 20, 200), "cyan": (20, 220, 220),
}


class ColourEncoder:
    """A deterministic stand-in for a dual encoder: an image is its mean colour, a text is the colour it
    names. Cosine similarity then ranks a red photo first for "red". Used only in tests."""

    name = "fake-colour"
    dim = 8
    preprocess = Preprocess(size=32)

    def __init__(self):
        self.calls = {"images": 0, "texts": 0}

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        v = np.concatenate([v, np.full((len(v), 1), 0.05), np.zeros((len(v), 4))], axis=1).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode_images(self, images) -> np.ndarray:
        delay = float(os.environ.get("FAKE_ENCODER_DELAY") or 0)
        if delay:
            time.sleep(delay)
        self.calls["images"] += len(images)
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self._unit(np.stack([np.asarray(im.convert("RGB"), np.float32).mean((0, 1)) / 255 for im in images]))

    def encode_texts(self, texts) -> np.ndarray:
        self.calls["texts"] += len(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        rows = []
        for t in texts:
            named = [COLOURS[w] for w in t.lower().replace(",", " ").split() if w in COLOURS]
            rows.append(np.mean(named, 0) / 255 if named else np.full(3, 0.5))
        return self._unit(np.array(rows))
