"""Shared fixtures: a deterministic fake encoder registered through the real registry, photo folders
drawn with Pillow at test time, and paths to the optional real dataset."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_encoders import COLOURS, ColourEncoder  # noqa: F401 - importable by child processes too
from xmodal.indexer.models.encoders import register_encoder

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
SAMPLES = REPO / "data" / "samples"

_FAKE = ColourEncoder()
register_encoder("fake-colour", lambda: _FAKE)


@pytest.fixture
def fake_encoder() -> ColourEncoder:
    _FAKE.calls = {"images": 0, "texts": 0}
    return _FAKE


@contextmanager
def older_schema(version: int) -> Iterator[None]:
    """Inside the block, the store writes libraries as an xmodal of schema `version` did: only the first
    `version` migrations (frozen SQL) exist. A library made there is what that release left on disk."""
    from xmodal.indexer.storage import store

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "MIGRATIONS", store.MIGRATIONS[:version])
        mp.setattr(store, "SCHEMA_VERSION", version)
        yield


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


def vectors_by_path(library: Path) -> dict[str, np.ndarray]:
    """{path: vector} of every photo in a library, from its FAISS index (to compare two libraries)."""
    from xmodal.indexer.storage.library import Library

    with Library(library) as lib:
        ids = lib.store.all_image_ids()
        paths = {r.id: r.path for r in lib.store.get_images(ids.tolist())}
        vectors = lib.vector_index("images").reconstruct(ids)
        return {paths[int(i)]: v for i, v in zip(ids, vectors)}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A Flickr8k-style folder drawn at test time (images/, captions.txt, splits/): two one-colour photos per colour
    (8 x 2), two captions each; variant 0 of each colour is train, variant 1 dev. For `xmodal train ...` end to end."""
    root = tmp_path_factory.mktemp("tiny")
    rows, names = ["image,caption"], []
    for i, colour in enumerate(COLOURS):
        for variant in range(2):
            name = f"{colour}{variant}.jpg"
            draw(root / "images" / name, colour, size=(96 + 8 * variant, 96))
            names.append(name)
            rows += [f"{name},a {colour} picture", f'{name},"plain {colour}, nothing else"']
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(n for n in names if n[-5] == "0") + "\n")
    (root / "splits" / "dev.txt").write_text("\n".join(n for n in names if n[-5] == "1") + "\n")
    return root
