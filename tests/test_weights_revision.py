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


def test_indexing_texts_into_a_library_of_other_weights_waits_for_xmodal_index(indexed, tmp_path, encoder):
    from xmodal.indexer.storage.library import LibraryError

    encoder.revision = "v2"
    more = tmp_path / "more.txt"
    more.write_text("a purple cat\n")
    with Library(indexed) as lib:
        with pytest.raises(LibraryError, match="run `xmodal index --library .*` first"):
            index_texts(lib, str(more), encoder)
        assert lib.store.count_texts() == 4 and recorded_revision(lib) == "v1"  # nothing changed
        index_images(lib, None, encoder)
        index_texts(lib, str(more), encoder)
        assert lib.store.count_texts() == 5 and stale_counts(lib) == {"images": 0, "texts": 0}


def test_indexing_a_new_folder_after_a_weights_change_redoes_the_whole_library(indexed, tmp_path, encoder):
    from conftest import draw

    encoder.revision = "v2"
    draw(tmp_path / "new" / "white.jpg", "white")
    with Library(indexed) as lib:  # `xmodal index ~/new-photos`: the library's other roots are walked too
        report = index_images(lib, [str(tmp_path / "new")], encoder)
        assert (report.added, report.reembedded) == (1, 4) and stale_counts(lib) == {"images": 0, "texts": 0}


def test_a_photo_moved_during_the_upgrade_keeps_its_captions_and_ocr_text(indexed, photos, encoder):
    with Library(indexed) as lib, lib.writing():
        lib.store.set_ocr([(i, "STOP", [], "ocr-model") for i in lib.store.all_image_ids().tolist()])
    (photos / "moved").mkdir()
    (photos / "red.jpg").rename(photos / "moved" / "red.jpg")
    encoder.revision = "v2"
    with Library(indexed) as lib:
        report = index_images(lib, None, encoder)
        assert (report.reembedded, report.removed, stale_counts(lib)["images"]) == (4, 0, 0)
        ids = lib.store.all_image_ids().tolist()
        names = {r.id: Path(r.path).name for r in lib.store.get_images(ids)}
        links = {t.text: names.get(t.image_id) for t in lib.store.get_texts(lib.store.all_text_ids().tolist())}
        ocr = {names[i]: w["ocr"] for i, w in lib.store.image_words(ids).items()}
    assert links["a red wall"] == "red.jpg" and ocr == dict.fromkeys(ocr, "STOP")  # all four kept their text
    assert _vectors(indexed, "images")["red.jpg"] == pytest.approx(
        encoder.encode_images([photos_image(photos / "moved", "red.jpg")])[0], abs=1e-6)


def test_a_text_reembedding_that_fails_to_write_keeps_the_old_texts(indexed, encoder, monkeypatch):
    from xmodal.indexer.storage.store import Store, StoreError

    encoder.revision = "v2"

    def disk_full(*args, **kwargs):
        raise StoreError("disk full (simulated)")

    with Library(indexed) as lib:
        monkeypatch.setattr(Store, "add_texts", disk_full)
        with pytest.raises(Exception, match="disk full"):
            index_images(lib, None, encoder)
        monkeypatch.undo()
        assert lib.store.count_texts() == 4 and stale_counts(lib)["texts"] == 4  # the delete was rolled back
    with Library(indexed) as lib:
        assert index_images(lib, None, encoder).texts_reembedded == 4


def test_search_refuses_an_unrecorded_library_of_a_model_whose_weights_changed_since(photos, library, tmp_path,
                                                                                      encoder, monkeypatch, caplog):
    """base's 260-px libraries record no revision (made before revisions were kept): its BundledModel says such
    libraries are stale, so search refuses them and index embeds them again without a sample check."""
    from xmodal.indexer.models import towers

    monkeypatch.setitem(towers.BUNDLED, "fake-versioned", towers.BundledModel(
        "fake-versioned", "efficientnet-lite0", "all-minilm-l6-v2", 32, "x.pt", "", unrecorded_stale=True))
    with Library(tmp_path / "new", create=True) as lib:  # a new library of that model is simply current
        assert index_images(lib, [str(photos)], encoder).added == 4 and recorded_revision(lib) == "v1"
    assert "again" not in caplog.text  # no re-embedding announced for it
    encoder.revision = None
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], encoder)
    encoder.revision = "v1"  # the same vectors: only the flag can tell
    with SearchEngine(library) as eng, pytest.raises(SearchError, match="not recorded: made by an xmodal from before"):
        eng.search_text("red")
    with Library(library) as lib:
        assert index_images(lib, None, encoder).reembedded == 4 and recorded_revision(lib) == "v1"


def test_an_unrecorded_library_whose_photos_are_away_stays_unjudged_until_they_are_back(photos, library, tmp_path,
                                                                                        encoder):
    from conftest import draw

    encoder.revision = None
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], encoder)
    away = photos.rename(tmp_path / "unplugged")
    encoder.revision = "v2"
    draw(tmp_path / "other" / "white.jpg", "white")
    with Library(library) as lib:
        index_images(lib, [str(tmp_path / "other")], encoder)
        assert recorded_revision(lib) is None  # nothing to compare: not stamped as current
    away.rename(photos)
    with Library(library) as lib:
        assert index_images(lib, None, encoder).reembedded == 5 and recorded_revision(lib) == "v2"


@pytest.mark.parametrize("factory, during, after", [("HNSW32", "Flat", "Flat"), ("IVF1,Flat", "IVF1,Flat", "IVF1,Flat")])
def test_a_reembedding_searches_an_index_it_can_delete_from_and_retrains_at_the_end(indexed, encoder, factory,
                                                                                   during, after):
    """HNSW cannot delete (every replaced batch would rebuild it): the re-embedding runs on an exact index and
    the end gives the library the index its size calls for (Flat for 4 photos); an IVF index is retrained
    on the new vectors."""
    with Library(indexed) as lib, lib.writing():
        lib.rebuild_index("images", factory)
    encoder.revision = "v2"
    with Library(indexed) as lib:
        first = index_images(lib, None, encoder, batch_size=1, should_stop=lambda: True)
        assert first.interrupted and lib.vector_index("images").factory == during
        report = index_images(lib, None, encoder)
        assert lib.vector_index("images").factory == after and stale_counts(lib)["images"] == 0
        assert (report.rebuilt is not None) == factory.startswith("IVF")


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


def test_ray_shards_replace_the_stale_rows_and_shards_of_other_weights_are_refused(indexed, encoder):
    """What `index --engine ray` does with each shard, without Ray: workers' shards of the new weights replace
    the stale rows (a row with the same path and content is not "merged before" when it is stale), and a
    shard embedded with other weights (an older worker, a shard a killed run staged) is never merged."""
    from xmodal.indexer.distributed.merge import MergeState, merge_shard
    from xmodal.indexer.distributed.plan import cut
    from xmodal.indexer.distributed.worker import embed_shard
    from xmodal.indexer.ingest.pipeline import IndexReport, catch_up_texts, plan
    from xmodal.indexer.ingest.reembed import sync_weights
    from xmodal.indexer.storage.revision import stale_ids

    encoder.revision = "v2"
    with Library(indexed) as lib, lib.writing():
        report = IndexReport(roots=lib.roots)
        lib.bind_model(encoder.name, encoder.dim)
        sync_weights(lib, encoder)
        forced = set(stale_ids(lib, "images").tolist())
        todo, changed, _ = plan(lib, report.roots, report, force=forced)
        state = MergeState(changed, forced)
        shards = cut(todo, 2)
        encoder.revision = "v1"  # a worker still on the old files
        old = embed_shard(shards[0].name, list(shards[0].paths), encoder)
        encoder.revision = "v2"
        with pytest.raises(ValueError, match="weights v1"):
            merge_shard(lib, old, state, report, encoder.name, revision="v2")
        for shard in shards:
            merge_shard(lib, embed_shard(shard.name, list(shard.paths), encoder), state, report, encoder.name,
                        revision="v2")
        lib.save("images")
        catch_up_texts(lib, encoder, report)
        assert report.reembedded == 4 and stale_counts(lib) == {"images": 0, "texts": 0}


def test_check_reports_rows_of_earlier_weights_and_repair_embeds_them(indexed, encoder):
    from xmodal.indexer.storage.check import check_library, repair

    encoder.revision = "v2"
    with Library(indexed) as lib:
        index_images(lib, None, encoder, batch_size=1, should_stop=lambda: True)  # a re-embedding, interrupted
        report = check_library(lib)
        assert not report.ok and len(report.modalities["images"].earlier_weights) == 3
        assert any("earlier weights" in p for p in report.problems)
        fixed = repair(lib, load_encoder=lambda: encoder)
        assert fixed.reembedded == 3 + 4 and stale_counts(lib) == {"images": 0, "texts": 0}
        assert lib.store.get_meta("stale_below") is None and check_library(lib).ok
