"""Shared fixtures: a deterministic fake encoder registered through the real registry, photo folders
drawn with Pillow at test time, and paths to the optional real dataset."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.encoders import Preprocess, register_encoder

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
SAMPLES = REPO / "data" / "samples"

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


_FAKE = ColourEncoder()
register_encoder("fake-colour", lambda: _FAKE)


@pytest.fixture
def fake_encoder() -> ColourEncoder:
    _FAKE.calls = {"images": 0, "texts": 0}
    return _FAKE


def draw(path: Path, colour: str, size=(64, 48), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLOURS[colour]).save(path, format=fmt)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A small photo folder: four colours, one in a nested folder, mixed formats."""
    root = tmp_path / "photos"
    draw(root / "red.jpg", "red")
    draw(root / "green.png", "green")
    draw(root / "blue.jpg", "blue")
    draw(root / "trip" / "yellow.webp", "yellow")
    return root


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return tmp_path / "library"


@pytest.fixture
def flickr8k() -> Path:
    if not (FLICKR8K / "captions.txt").exists():
        pytest.skip(f"the Flickr8k data is not at {FLICKR8K} (it is in CI and on the dev machines)")
    return FLICKR8K


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("XMODAL_LIBRARY", raising=False)
