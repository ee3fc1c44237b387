"""A library remembers which weights made its vectors (indexer.storage.revision): when an upgrade changes a
model's weights under it, search says so instead of ranking with incomparable vectors, and the next
`xmodal index` embeds every photo and text again, resuming where an interrupted run stopped.

The weights are a fake colour encoder registered through the real registry whose `revision` the tests
change: revision "v2" rolls the vector's components, so its vectors are unlike v1's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fake_encoders import ColourEncoder
from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.indexer.ingest.pipeline import index_images, index_texts
from xmodal.indexer.models.base import Preprocess
from xmodal.indexer.models.encoders import register_encoder
from xmodal.indexer.storage.library import Library
from xmodal.indexer.storage.revision import recorded_revision, stale_counts


class VersionedEncoder(ColourEncoder):
    """The colour encoder under weights that an upgrade can change: `revision` None is an encoder that
    does not say (an xmodal from before revisions were kept), "v1" the same vectors, "v2" other ones."""

    name = "fake-versioned"

    def __init__(self):
        super().__init__()
        self.revision: str | None = "v1"

    def _weights(self, v: np.ndarray) -> np.ndarray:
        if self.revision == "close":  # retrained heads close to v1's (cosine ~0.93, as base's 260 vs 280 px)
            v = v + 0.4 * np.roll(v, 1, axis=1)
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        return np.roll(v, 1, axis=1) if self.revision == "v2" else v

    def encode_images(self, images) -> np.ndarray:
        return self._weights(super().encode_images(images))

    def encode_texts(self, texts) -> np.ndarray:
        return self._weights(super().encode_texts(texts))


_ENCODER = VersionedEncoder()
register_encoder("fake-versioned", lambda: _ENCODER)


@pytest.fixture
def encoder():
    _ENCODER.revision = "v1"
    _ENCODER.calls = {"images": 0, "texts": 0}
    yield _ENCODER
    _ENCODER.revision = "v1"


@pytest.fixture
def indexed(photos, library, tmp_path, encoder):
    """The four colour photos and four captions naming them, indexed with the v1 weights."""
    corpus = tmp_path / "captions.csv"
    corpus.write_text("image,caption\nred.jpg,a red wall\ngreen.png,a green field\nblue.jpg,a blue sky\n"
                      "yellow.webp,a yellow taxi\n")
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], encoder)
        index_texts(lib, str(corpus), encoder)
    return library


def _vectors(library: Path, modality: str) -> dict[str, np.ndarray]:
    with Library(library) as lib:
        store = lib.store
        ids = (store.all_image_ids() if modality == "images" else store.all_text_ids()).tolist()
        rows = store.get_images(ids) if modality == "images" else store.get_texts(ids)
        vectors = lib.vector_index(modality).reconstruct(np.asarray(ids, np.int64))
        return {(Path(r.path).name if modality == "images" else r.text): v for r, v in zip(rows, vectors)}


def test_a_new_library_records_the_revision_of_the_weights_that_embedded_it(indexed):
    import json

    from xmodal.engine.cli.main import cli

    with Library(indexed) as lib:
        assert recorded_revision(lib) == "v1" and stale_counts(lib) == {"images": 0, "texts": 0}
    info = json.loads(CliRunner().invoke(cli, ["info", "--library", str(indexed), "--json"]).stdout)
    assert (info["revision"], info["stale"]) == ("v1", {"images": 0, "texts": 0})


def test_search_refuses_a_library_embedded_by_other_weights_and_names_the_cure(indexed, encoder):
    from fastapi.testclient import TestClient

    from xmodal.engine.cli.main import cli
    from xmodal.engine.web.server import create_app

    encoder.revision = "v2"  # an upgrade shipped other weights for the same model name
    with SearchEngine(indexed) as eng, pytest.raises(SearchError, match=r"revision v1.*`xmodal index --library"):
        eng.search_text("red")
    out = CliRunner().invoke(cli, ["search", "red", "--library", str(indexed), "--json"])
    assert out.exit_code == 1 and "other weights of model 'fake-versioned'" in out.output
    with TestClient(create_app(indexed, allowed_hosts=("testserver",))) as client:
        answer = client.get("/api/search", params={"q": "red"})
        assert answer.status_code == 400 and "xmodal index" in answer.json()["detail"]


def test_index_after_a_weights_change_embeds_every_photo_and_text_again_keeping_their_links(
        indexed, photos, encoder):
    before = _vectors(indexed, "images")
    encoder.revision = "v2"
    with Library(indexed) as lib:
        report = index_images(lib, None, encoder)
        assert (report.reembedded, report.added, report.texts_reembedded) == (4, 0, 4)
        assert recorded_revision(lib) == "v2" and stale_counts(lib) == {"images": 0, "texts": 0}
        assert lib.store.get_meta("stale_below") is None
        names = {r.id: Path(r.path).name for r in lib.store.get_images(lib.store.all_image_ids().tolist())}
        links = {t.text: names.get(t.image_id) for t in lib.store.get_texts(lib.store.all_text_ids().tolist())}
    assert links["a red wall"] == "red.jpg"  # the re-embedded caption still describes its (re-embedded) photo
    after = _vectors(indexed, "images")
    assert not np.allclose(after["red.jpg"], before["red.jpg"])
    np.testing.assert_allclose(after["red.jpg"], encoder.encode_images([photos_image(photos, "red.jpg")])[0],
                               atol=1e-6)
    np.testing.assert_allclose(_vectors(indexed, "texts")["a blue sky"], encoder.encode_texts(["a blue sky"])[0],
                               atol=1e-6)
    with SearchEngine(indexed) as eng:
        assert Path(eng.search_text("red", k=1)[0].path).name == "red.jpg"
        assert eng.search_image(photos / "blue.jpg", k=1, target="texts")[0].text == "a blue sky"
    with Library(indexed) as lib:  # and the run after that has nothing left to do
        again = index_images(lib, None, encoder)
    assert (again.reembedded, again.added, again.texts_reembedded, again.unchanged) == (0, 0, 0, 4)


def photos_image(photos: Path, name: str):
    from PIL import Image

    return Image.open(photos / name).convert("RGB")


def test_an_interrupted_reembedding_resumes_with_only_the_rows_still_stale(indexed, encoder):
    encoder.revision = "v2"
    with Library(indexed) as lib:
        first = index_images(lib, None, encoder, batch_size=1, should_stop=lambda: True)
        assert first.interrupted and first.reembedded == 1
        assert stale_counts(lib) == {"images": 3, "texts": 4}  # the texts wait for a run that finishes
        assert recorded_revision(lib) == "v2"
    with SearchEngine(indexed) as eng:  # searchable meanwhile: the rows it has redone rank as they should
        assert eng.search_text("red", k=4)
    from xmodal.engine.cli.main import cli

    info = CliRunner().invoke(cli, ["info", "--library", str(indexed)])
    assert "3 photos, 4 texts still carry vectors from the model's earlier weights" in info.output
    encoder.calls = {"images": 0, "texts": 0}
    with Library(indexed) as lib:
        rest = index_images(lib, None, encoder)
        assert (rest.reembedded, rest.texts_reembedded) == (3, 4) and encoder.calls["images"] == 3
        assert stale_counts(lib) == {"images": 0, "texts": 0}


def test_indexing_texts_after_a_weights_change_redoes_the_old_texts_and_leaves_photos_to_index(
        indexed, tmp_path, encoder):
    encoder.revision = "v2"
    more = tmp_path / "more.txt"
    more.write_text("a purple cat\n")
    with Library(indexed) as lib:
        index_texts(lib, str(more), encoder)
        assert stale_counts(lib) == {"images": 4, "texts": 0}
        assert lib.store.count_texts() == 5
    np.testing.assert_allclose(_vectors(indexed, "texts")["a red wall"], encoder.encode_texts(["a red wall"])[0],
                               atol=1e-6)


@pytest.mark.parametrize("weights, redone", [("v1", 0), ("v2", 4), ("close", 4)])
def test_a_library_from_before_revisions_is_judged_by_embedding_a_few_photos_again(photos, library, encoder,
                                                                                   weights, redone):
    encoder.revision = None  # an xmodal that kept no revision made this library
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], encoder)
        assert recorded_revision(lib) is None
    encoder.revision = weights  # the upgrade: the same weights ("v1" and None embed alike), others, or close ones
    with Library(library) as lib:
        report = index_images(lib, None, encoder)
        assert report.reembedded == redone and recorded_revision(lib) == weights


def test_a_revision_changes_with_the_checkpoint_or_the_input_size():
    a = Preprocess(size=260).revision("ab" * 32)
    assert a == Preprocess(size=260).revision("ab" * 32) and len(a) == 16
    assert a != Preprocess(size=280).revision("ab" * 32)
    assert a != Preprocess(size=260).revision("cd" * 32)
