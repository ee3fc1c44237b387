"""The query engine through its Python API, with the fake colour encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import draw
from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.indexer.storage.library import Library
from xmodal.indexer.ingest.pipeline import index_images, index_texts


@pytest.fixture
def engine(photos, library, tmp_path, fake_encoder):
    corpus = tmp_path / "texts.txt"
    corpus.write_text("a red apple\na green meadow\na blue ocean\na yellow taxi\n")
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
        index_texts(lib, str(corpus), fake_encoder)
    with SearchEngine(library) as eng:
        yield eng


def test_text_query_ranks_the_described_photo_first(engine):
    hits = engine.search_text("something red", k=3)
    assert [Path(h.path).name for h in hits][:1] == ["red.jpg"]
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].score > hits[1].score


def test_image_query_finds_the_same_photo_and_then_similar_ones(engine, photos):
    hits = engine.search_image(photos / "trip" / "yellow.webp", k=4)
    assert Path(hits[0].path).name == "yellow.webp"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_image_to_text_returns_the_texts_that_describe_the_photo(engine, photos):
    hits = engine.search_image(photos / "blue.jpg", k=2, target="texts")
    assert hits[0].text == "a blue ocean" and hits[0].path is None


def test_text_to_text(engine):
    assert engine.search_text("green", k=1, target="texts")[0].text == "a green meadow"


def test_more_like_this_uses_the_stored_vector(engine):
    red = engine.search_text("red", k=1)[0]
    assert engine.similar(red.id, k=1)[0].id == red.id


def test_more_like_this_can_leave_the_photo_itself_out(engine):
    red = engine.search_text("red", k=1)[0]
    others = engine.similar(red.id, k=2, exclude_self=True)
    assert [h.rank for h in others] == [1, 2] and red.id not in [h.id for h in others]
    assert [h.id for h in others] == [h.id for h in engine.similar(red.id, k=3)[1:]]


def test_k_larger_than_the_library_returns_everything(engine):
    assert len(engine.search_text("red", k=100)) == 4


def test_queries_with_another_model_are_refused(engine, library):
    with pytest.raises(SearchError, match="built with model 'fake-colour'"):
        SearchEngine(library, model="lite")


def test_missing_library_and_bad_query_image_give_clear_errors(tmp_path, engine):
    with pytest.raises(SearchError, match="no xmodal library"):
        SearchEngine(tmp_path / "nowhere")
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    with pytest.raises(SearchError, match="bad.jpg"):
        engine.search_image(bad)
    with pytest.raises(SearchError, match="unknown target"):
        engine.search_text("red", target="videos")


def test_info_counts_and_describes_the_library(engine):
    info = engine.info()
    assert (info["images"], info["texts"], info["model"], info["dim"]) == (4, 4, "fake-colour", 8)
    assert info["indexes"]["images"]["factory"] == "Flat"
    assert info["bytes"]["library.db"] > 0


def add_and_find(eng, photos, library, encoder, colour: str) -> int:
    """Draw a new `colour` photo, index it from a separate writer, and check `eng` finds it first;
    returns how many photos `eng` now sees."""
    draw(photos / "later" / f"{colour}.jpg", colour)
    with Library(library) as lib:
        index_images(lib, [str(photos)], encoder)
    hits = eng.search_text(colour, k=100)
    assert Path(hits[0].path).name == f"{colour}.jpg"
    return len(hits)


def test_a_long_lived_engine_sees_photos_indexed_after_it_opened(engine, photos, library, fake_encoder):
    assert len(engine.search_text("purple", k=10)) == 4
    assert add_and_find(engine, photos, library, fake_encoder, "purple") == 5


def test_a_search_process_maps_a_large_index_and_still_sees_new_photos(photos, library, fake_encoder, monkeypatch):
    """Readers memory-map index files above MMAP_MIN_BYTES (here: every file); when the store moves on they
    patch a private in-memory copy instead, so new photos still show up."""
    from xmodal.indexer.storage import library as library_module

    monkeypatch.setattr(library_module, "MMAP_MIN_BYTES", 0)
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
    with SearchEngine(library) as eng:
        assert eng._index("images").read_only  # mapped, not read into memory
        assert len(eng.search_text("red", k=10)) == 4
        assert add_and_find(eng, photos, library, fake_encoder, "purple") == 5  # the saved file: mapped again
        with monkeypatch.context() as m:  # an index file behind the store: rows committed, FAISS not saved yet
            m.setattr(Library, "save", lambda self, modality: None)
            assert add_and_find(eng, photos, library, fake_encoder, "cyan") == 6
        assert not eng._index("images").read_only  # patched in memory, not in the shared file


def test_more_like_this_works_on_a_memory_mapped_ivf_index(photos, library, fake_encoder, monkeypatch):
    """A large library's search process maps its IVF index read-only, where FAISS cannot reconstruct a
    vector: 'similar' takes the photo's exact vector from the store instead."""
    from xmodal.indexer.storage import library as library_module

    monkeypatch.setattr(library_module, "MMAP_MIN_BYTES", 0)
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
        lib.rebuild_index("images", factory="IVF2,Flat")
    with SearchEngine(library) as eng:
        index = eng._index("images")
        assert index.read_only and index.factory == "IVF2,Flat"
        red = next(h for h in eng.search_text("red", k=4) if Path(h.path).name == "red.jpg")
        hits = eng.similar(red.id, k=4)
        assert Path(hits[0].path).name == "red.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_a_query_with_bytes_that_are_not_utf8_reaches_the_encoder_as_valid_text(engine, monkeypatch):
    """A shell passes `$(printf 'a red \xff')` on as a lone surrogate, which tokenizers refuse with a TypeError."""
    seen = []
    real = engine.encoder.encode_texts
    monkeypatch.setattr(engine.encoder, "encode_texts", lambda texts: seen.extend(texts) or real(texts))
    hits = engine.search_text("something red \udcff", k=1)
    assert Path(hits[0].path).name == "red.jpg"
    assert seen == ["something red \ufffd"]


def test_impossible_similarities_from_a_damaged_index_are_never_shown(engine, caplog):
    index = engine._index("images")
    real = index.search

    def damaged(queries, k):
        scores, ids = real(queries, k)
        scores[0, 0], scores[0, 1] = 9.5e35, np.nan  # what random bytes over the codes produced
        return scores, ids

    index.search = damaged
    with caplog.at_level("WARNING"):
        hits = engine.search_text("something red", k=3, mode="semantic")  # the index alone (hybrid adds words)
    assert [h.rank for h in hits] == [1] and abs(hits[0].score) <= 1.0 + 1e-5  # the two damaged hits are gone
    assert "xmodal check --repair" in caplog.text


def test_a_nan_match_score_ranks_the_hit_by_its_similarity_alone():
    from xmodal.engine.rerank.backends import rerank_hits
    from xmodal.indexer.records import SearchHit

    hits = [SearchHit(rank=n + 1, score=s, id=n) for n, s in enumerate([0.5, 0.4, 0.3])]
    out = rerank_hits(hits, np.array([0.0, np.nan, 1.0]), alpha=1.0)
    assert all(np.isfinite(h.score) for h in out) and [h.id for h in out] == [2, 1, 0]
    assert out[1].match == 0.5  # the others' median: neither pushed up nor down by a score it never got


@pytest.mark.parametrize("query, warned", [
    ("a cat on a sofa", False), ("一只猫在沙发上", True), ("قطة على الأريكة", True), ("🐱🐶🎉", True),
    ("a cat 猫", False), ("", True)])
def test_an_english_only_model_warns_about_queries_with_little_english(query, warned):
    from xmodal.engine.search.filters import language_notice

    assert (language_notice(query, ("en",)) is not None) is warned
    assert language_notice(query, None) is None  # multilingual or unknown models: no opinion


def test_the_notice_reaches_the_cli_and_the_web_api(engine, library, fake_encoder, monkeypatch):
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from xmodal.engine.cli.main import cli
    from xmodal.engine.web.server import create_app

    monkeypatch.setattr(fake_encoder, "languages", ("en",), raising=False)
    out = CliRunner().invoke(cli, ["search", "一只猫", "--library", str(library)])
    assert out.exit_code == 0 and "note: this model reads English only" in out.stderr
    with TestClient(create_app(library, allowed_hosts=("testserver",))) as c:
        assert "English only" in c.get("/api/search", params={"q": "一只猫"}).json()["notice"]
        assert c.get("/api/search", params={"q": "red"}).json()["notice"] is None
