"""Reranking inside the engine: patch tokens stored at index time, text -> image and image -> text searches
rerank their top k, --no-rerank gives the dual order, explain draws where the words matched."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import SAMPLES
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine
from xmodal.indexer.models.encoders import get_encoder
from xmodal.indexer.storage.library import Library
from xmodal.indexer.storage.patch_tokens import MAX_SLOT_BYTES
from xmodal.indexer.storage import text_tokens
from xmodal.indexer.models.patch_projector import LITE_RERANK, default_projector
from xmodal.indexer.ingest.pipeline import index_images, index_texts, missing_patches

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not LITE_RERANK.exists(), reason="no data/lite-rerank.pt")]
PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="module")
def lite_library(tmp_path_factory):
    """The sample photos and captions indexed with the lite model, patch tokens included."""
    root = tmp_path_factory.mktemp("lite") / "library"
    photos = root.parent / "photos"
    shutil.copytree(SAMPLES, photos)
    (photos / "LICENSE.md").unlink()
    encoder = get_encoder("lite")
    with Library(root, create=True) as lib:
        report = index_images(lib, [str(photos)], encoder, patches=default_projector("lite"))
        index_texts(lib, str(photos / "captions.txt"), encoder, tokens=True)
    assert report.added == len(PHOTOS) and report.patched == 0
    return root


def test_indexing_stores_compact_patch_tokens_for_every_photo(lite_library):
    with Library(lite_library) as lib:
        store = lib.patch_store()
        assert store.spec.slot_bytes <= MAX_SLOT_BYTES
        assert missing_patches(lib, store.spec) == []
        assert store.bytes_on_disk() <= (max(lib.store.all_image_ids()) + 1) * store.spec.slot_bytes


def test_text_search_reranks_the_top_k_and_no_rerank_keeps_the_dual_order(lite_library):
    with SearchEngine(lite_library) as eng:
        dual = eng.search_text("a cat", k=8, rerank_k=0, mode="semantic")
        reranked = eng.search_text("a cat", k=8, rerank_k=5, mode="semantic")
    assert all(h.match is None for h in dual)
    assert [h.score for h in dual] == sorted((h.score for h in dual), reverse=True)
    head = reranked[:5]
    assert {h.id for h in head} == {h.id for h in dual[:5]}  # the same candidates, reordered
    assert all(h.match is not None for h in head) and all(h.match is None for h in reranked[5:])
    assert [h.id for h in reranked[5:]] == [h.id for h in dual[5:]]
    assert [h.score for h in head] == sorted((h.score for h in head), reverse=True)
    alpha, beta = eng.reranker.alpha["t2i"], eng.reranker.beta["t2i"]
    assert beta > 0  # the bundled reranker carries an exemplar bank and uses it for text -> image
    for h in head:  # fused = cosine - hubness + beta * exemplar + alpha * match, the cosine being the dual score
        assert h.hubness > 0  # the bundled reranker carries a hubness bank
        assert -1.0 <= h.exemplar <= 1.0
        assert h.score == pytest.approx(h.similarity - h.hubness + beta * h.exemplar + alpha * h.match)
        assert h.similarity == pytest.approx(next(d.score for d in dual if d.id == h.id), abs=1e-5)
    assert [h.rank for h in reranked] == list(range(1, 9))


def test_reranking_opens_no_image_file_when_tokens_are_stored(lite_library, monkeypatch):
    from xmodal.engine.rerank import backends as reranking_module

    def no_files(path, *a, **kw):
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(reranking_module, "read_image", no_files)
    with SearchEngine(lite_library) as eng:
        hits = eng.search_text("a cup of coffee", k=3, mode="semantic")
        assert hits[0].match is not None
        assert eng.similar(hits[0].id, k=2, target="texts")[0].match is not None


def test_image_to_text_search_is_reranked(lite_library):
    with SearchEngine(lite_library) as eng:
        hits = eng.search_image(SAMPLES / "cat-chelsea.jpg", k=3, target="texts")
        plain = eng.search_image(SAMPLES / "cat-chelsea.jpg", k=3, target="images")
    assert all(h.match is not None for h in hits) and "cat" in hits[0].text.lower()
    assert all(h.match is None for h in plain)  # image -> image is not reranked


def test_a_library_without_tokens_gets_them_on_the_next_index(lite_library, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(lite_library, root)
    (root / "patches.f16").unlink()
    with Library(root) as lib:
        assert len(missing_patches(lib, default_projector("lite").spec)) == len(PHOTOS)
        with SearchEngine(root) as eng:  # until then, reranking reads the photos themselves
            assert eng.search_text("a cat", k=2, mode="semantic")[0].match is not None
        report = index_images(lib, None, get_encoder("lite"), patches=default_projector("lite"))
        assert report.patched == len(PHOTOS) and report.indexed == 0
        assert missing_patches(lib, default_projector("lite").spec) == []


def test_no_exemplar_leaves_the_exemplar_term_out(lite_library):
    runner = CliRunner()
    args = ["search", "a horse", "--mode", "semantic", "--library", str(lite_library), "--json", "-k", "3"]
    with_ex = json.loads(runner.invoke(cli, args).output)
    without = json.loads(runner.invoke(cli, args + ["--no-exemplar"]).output)
    assert all("exemplar" in h for h in with_ex) and not any("exemplar" in h for h in without)
    from xmodal.engine.rerank.lite import Reranker

    alpha = Reranker().alpha["t2i"]
    for h in without:  # score = cosine - hubness + alpha * match
        assert h["score"] == pytest.approx(h["similarity"] - h["hubness"] + alpha * h["match"], abs=1e-5)
    table = runner.invoke(cli, args[:-3] + ["-k", "3", "--no-exemplar"]).output
    assert "hubness" in table and "exemplar" not in table


def test_search_cli_rerank_options(lite_library):
    runner = CliRunner()
    args = ["search", "a horse", "--mode", "semantic", "--library", str(lite_library), "--json", "-k", "3"]
    reranked = json.loads(runner.invoke(cli, args).output)
    plain = json.loads(runner.invoke(cli, args + ["--no-rerank"]).output)
    small = json.loads(runner.invoke(cli, args + ["--rerank-k", "2"]).output)
    assert all("match" in h for h in reranked) and not any("match" in h for h in plain)
    assert ["match" in h for h in small] == [True, True, False]
    text = runner.invoke(cli, args[:-3] + ["-k", "2"]).output
    assert "cosine" in text and "hubness" in text and "exemplar" in text and "match" in text
    header, first = text.splitlines()[:2]
    assert header.index("cosine") < header.index("hubness") < header.index("exemplar") < header.index("match")
    score, cosine, hubness, exemplar, match = (float(v) for v in first.split()[1:6])
    from xmodal.engine.rerank.lite import Reranker

    r = Reranker()  # the columns add up (to their printed rounding)
    alpha, beta = r.alpha["t2i"], r.beta["t2i"]
    assert hubness > 0 and score == pytest.approx(cosine - hubness + beta * exemplar + alpha * match, abs=0.006)


def test_explain_writes_pngs_of_the_photos_size(lite_library, tmp_path):
    with SearchEngine(lite_library) as eng:
        cat = next(h.id for h in eng.search_text("a cat", k=8, mode="semantic") if h.path.endswith("cat-chelsea.jpg"))
        exp, photo = eng.explain("a tabby cat", cat)
    assert exp.words == ["a", "tabby", "cat"] and exp.word_maps.shape == (3, 7, 7)
    np.testing.assert_allclose(exp.word_maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    out = tmp_path / "heat.png"
    result = CliRunner().invoke(cli, ["explain", "a tabby cat", str(cat), "-o", str(out), "--per-word",
                                      "--library", str(lite_library), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["written"]) == 4 and data["words"][2]["word"] == "cat"
    size = Image.open(SAMPLES / "cat-chelsea.jpg").size
    for path in data["written"]:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == size
    # a photo that is not in the library works too
    result = CliRunner().invoke(cli, ["explain", "grass", str(SAMPLES / "grass.jpg"), "-o", str(tmp_path / "g.png"),
                                      "--library", str(lite_library)])
    assert result.exit_code == 0 and Image.open(tmp_path / "g.png").size == Image.open(SAMPLES / "grass.jpg").size


def test_explain_errors_name_the_problem(lite_library, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["explain", "a cat", "99999", "-o", str(tmp_path / "x.png"), "--library",
                                 str(lite_library)])
    assert result.exit_code == 1 and "no image with id 99999" in result.output
    result = runner.invoke(cli, ["explain", "a cat", str(SAMPLES / "LICENSE.md"), "-o", str(tmp_path / "x.png"),
                                 "--library", str(lite_library)])
    assert result.exit_code == 1 and "LICENSE.md" in result.output


def test_the_lite_reranker_is_refused_for_a_library_of_another_model(library, photos, fake_encoder):
    from xmodal.engine.search.engine import SearchError

    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
    with pytest.raises(SearchError, match="lite model"):
        SearchEngine(library, reranker="lite")
    with SearchEngine(library) as eng:  # auto: no reranker for this model, plain dual search
        assert eng.reranker is None and eng.search_text("red", k=1, mode="semantic")[0].match is None


def test_web_api_reranks_and_explains(lite_library):
    import io

    from fastapi.testclient import TestClient

    from xmodal.engine.web.server import create_app

    with TestClient(create_app(lite_library, allowed_hosts=("testserver",))) as client:
        hits = client.get("/api/search", params={"q": "a cat", "k": 3}).json()["hits"]
        assert all("match" in h for h in hits)
        plain = client.get("/api/search", params={"q": "a cat", "k": 3, "rerank_k": 0}).json()["hits"]
        assert not any("match" in h for h in plain)
        assert [h["reranked"] for h in hits] == [True] * 3 and not any(h["reranked"] for h in plain)
        # the head the reranker scored, then the tail in dual-encoder order with cosines: marked apart
        mixed = client.get("/api/search", params={"q": "a cat", "k": 4, "rerank_k": 2}).json()["hits"]
        assert [h["reranked"] for h in mixed] == [True, True, False, False] and [h["rank"] for h in mixed] == [1, 2, 3, 4]
        cat = hits[0]["id"]
        data = client.get(f"/api/images/{cat}/explain", params={"q": "a tabby cat"}).json()
        assert [w["word"] for w in data["words"]] == ["a", "tabby", "cat"] and data["grid"] == [7, 7]
        png = client.get(f"/api/images/{cat}/explain.png", params={"q": "a tabby cat", "word": 2})
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).format == "PNG"
        bad = client.get(f"/api/images/{cat}/explain.png", params={"q": "a tabby cat", "word": 7})
        assert bad.status_code == 400 and "3 words" in bad.json()["detail"]
        assert client.get("/api/images/99999/explain", params={"q": "x"}).status_code == 404


def test_image_to_text_reranking_reads_stored_text_tokens(lite_library, monkeypatch, tmp_path):
    """Texts indexed with their token states need no text-tower pass when an image query reranks them, and
    scores are the same as when the states are computed at query time."""
    from xmodal.engine.rerank.backends import LiteBackend
    from xmodal.indexer.storage.text_tokens import TextTokenStore

    with SearchEngine(lite_library) as eng:
        stored = eng.search_image(SAMPLES / "cat-chelsea.jpg", k=4, target="texts")
        assert TextTokenStore(lite_library).read([h.id for h in stored], [h.text for h in stored])[0] is not None
        original = LiteBackend.query_tokens

        def only_the_query(self, texts):  # the query image's own pass is fine; candidate texts must not need one
            raise AssertionError(f"text tower run for {texts}")

        monkeypatch.setattr(LiteBackend, "query_tokens", only_the_query)
        again = eng.search_image(SAMPLES / "cat-chelsea.jpg", k=4, target="texts")
        monkeypatch.setattr(LiteBackend, "query_tokens", original)
    assert [h.id for h in again] == [h.id for h in stored]
    root = tmp_path / "copy"
    shutil.copytree(lite_library, root)
    (root / text_tokens.INDEX).unlink()  # computed at query time instead
    with SearchEngine(root) as eng:
        computed = eng.search_image(SAMPLES / "cat-chelsea.jpg", k=4, target="texts")
    assert [h.id for h in computed] == [h.id for h in stored]
    np.testing.assert_allclose([h.match for h in computed], [h.match for h in stored], atol=2e-3)


def test_the_web_api_takes_exemplar_false(lite_library):
    from fastapi.testclient import TestClient

    from xmodal.engine.web.server import create_app

    with TestClient(create_app(lite_library, allowed_hosts=("testserver",))) as c:
        on = c.get("/api/search", params={"q": "a horse", "k": 3}).json()["hits"]
        off = c.get("/api/search", params={"q": "a horse", "k": 3, "exemplar": "false"}).json()["hits"]
    assert all("exemplar" in h for h in on) and not any("exemplar" in h for h in off)
    assert all("match" in h for h in off)  # still reranked, by the cross-attention score
