"""Index choice in a live library: it grows from exact search into HNSW / IVF by itself, without
re-embedding, tunes nprobe / efSearch to recall@10 >= 0.95, and `xmodal reindex --index-type` forces a type."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import COLOURS
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine
from xmodal.indexer.storage import index_choice
from xmodal.indexer.storage.index_tuning import needs_rebuild, tier, tune_search_params
from xmodal.indexer.storage.library import Library
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.storage.vector_index import VectorIndex


def clustered(n: int, centres: int, spread: float, dim: int = 32, seed: int = 0) -> np.ndarray:
    """n unit vectors around `centres` random centres (Gaussian noise of `spread`): a photo-like collection."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    x = (c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def built(factory: str, x: np.ndarray, first_id: int = 0) -> VectorIndex:
    """A trained `factory` index holding `x` under ids first_id, first_id + 1, ..."""
    index = VectorIndex.create(x.shape[1], factory)
    index.train(x)
    index.add(np.arange(len(x), dtype=np.int64) + first_id, x)
    return index


def test_needs_rebuild_moves_up_tiers_only():
    assert needs_rebuild("Flat", 1_000, 256) is None
    assert tier(needs_rebuild("Flat", 100_000, 256)) == 1
    assert tier(needs_rebuild("HNSW32", 2_000_000, 256)) == 2
    assert needs_rebuild("HNSW32", 10, 256) is None  # never shrinks by itself
    assert needs_rebuild("IVF2048,Flat", 1_100_000, 256) is None
    assert needs_rebuild("IVF256,Flat", 1_100_000, 256) == "IVF4096,Flat"


@pytest.mark.parametrize("factory", ["HNSW16", "IVF64,Flat"])
def test_tuning_reaches_the_recall_target_on_clustered_vectors(factory):
    x = clustered(5000, centres=50, spread=0.3)
    index = built(factory, x, first_id=100)
    result = tune_search_params(index, x)
    assert result["recall_at_k"] >= 0.95
    assert set(result["params"]) == ({"efSearch"} if factory.startswith("HNSW") else {"nprobe"})


def test_an_hnsw_coarse_quantizer_searches_a_longer_list_than_nprobe_and_the_setting_is_saved(tmp_path):
    """IVF..._HNSW32 finds its lists through an HNSW graph over the centroids: tuning gives that graph a list of
    at least 2 x nprobe (and 64), or it misses some of the nearest lists; the value is kept with the index."""
    x = clustered(6000, centres=64, spread=0.4)
    index = built("IVF128_HNSW32,Flat", x)
    result = tune_search_params(index, x)
    params = result["params"]
    assert result["reached"] and set(params) == {"nprobe", "quantizer_efSearch"}
    assert params["quantizer_efSearch"] == max(64, 2 * params["nprobe"])
    index.save(tmp_path / "ivf.faiss")
    assert VectorIndex.load(tmp_path / "ivf.faiss").search_params == params


def test_an_index_that_cannot_reach_the_target_stops_probing_where_recall_levels_off(caplog):
    """Coarse product-quantised codes cap recall below 0.95 however many lists are probed: tuning says so and
    keeps the cheapest setting near the best recall instead of probing every list."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = built("IVF64,PQ4x4", x)
    with caplog.at_level("WARNING", logger="xmodal.indexer.storage.index_tuning"):
        result = tune_search_params(index, x)
    assert not result["reached"] and result["recall_at_k"] < 0.95
    assert result["params"]["nprobe"] < 64 and "cannot reach recall@10 0.95" in caplog.text
    truth = np.argsort(-(x[:300] @ x.T), axis=1)[:, :10]
    index.set_search_params(nprobe=64)  # every list: the best this index can do
    _, everything = index.search(x[:300], 10)
    best = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(everything.tolist(), truth.tolist())])
    assert result["recall_at_k"] >= best - 0.03


def _many_photos(root, start, stop):
    """Photos start..stop-1, each a distinct shade of one of the test colours."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(start, stop):
        base = np.array(COLOURS[names[i % len(names)]]) * (0.4 + 0.6 * i / 100)
        Image.new("RGB", (8, 8), tuple(int(c) for c in base)).save(root / f"{i:03d}.png")


def test_a_growing_library_is_rebuilt_into_the_next_index_type_without_reembedding(tmp_path, fake_encoder, monkeypatch):
    monkeypatch.setattr(index_choice, "FLAT_THRESHOLD", 60)
    root = tmp_path / "photos"
    _many_photos(root, 0, 40)
    with Library(tmp_path / "lib", create=True) as lib:
        first = index_images(lib, [str(root)], fake_encoder)
        assert first.rebuilt is None and lib.vector_index("images").factory == "Flat"
    _many_photos(root, 40, 80)
    fake_encoder.calls["images"] = 0
    with Library(tmp_path / "lib") as lib:
        second = index_images(lib, [str(root)], fake_encoder)
        assert second.rebuilt["factory"] == "HNSW32" and second.rebuilt["vectors"] == 80
        assert second.rebuilt["recall_at_k"] >= 0.95
    assert second.added == 40 and fake_encoder.calls["images"] == 40  # the rebuild itself embedded nothing
    with SearchEngine(tmp_path / "lib") as eng:
        assert eng.library.vector_index("images").factory == "HNSW32"
        assert len(eng.search_text("red", k=5)) == 5
    info = json.loads(CliRunner().invoke(cli, ["info", "--json", "--library", str(tmp_path / "lib")]).stdout)
    assert info["indexes"]["images"]["factory"] == "HNSW32" and "efSearch" in info["indexes"]["images"]["search_params"]


def test_reindex_index_type_forces_a_choice_and_deletions_still_work(tmp_path, photos, fake_encoder):
    lib_dir = tmp_path / "lib"
    run = CliRunner().invoke
    assert run(cli, ["index", str(photos), "--model", "fake-colour", "--library", str(lib_dir)]).exit_code == 0
    out = run(cli, ["reindex", "--index-type", "HNSW16", "--json", "--library", str(lib_dir)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["index"][0]["factory"] == "HNSW16"
    (photos / "red.jpg").unlink()
    report = json.loads(run(cli, ["index", "--json", "--library", str(lib_dir)]).stdout)
    assert report["removed"] == 1
    hits = json.loads(run(cli, ["search", "red", "-k", "10", "--json", "--library", str(lib_dir)]).stdout)
    assert len(hits) == 3 and all("red.jpg" not in h["path"] for h in hits)
    assert run(cli, ["reindex", "--library", str(lib_dir)]).exit_code == 2


def test_compressed_codes_that_fall_short_are_refined_with_the_exact_vectors():
    """A PQ index whose codes cap recall below 0.95 shortlists k * refine candidates and ranks them by their
    exact vectors (what a library reads from its store): tuning finds the refine that reaches the target,
    and it is saved with the index."""
    x = clustered(6000, centres=40, spread=0.5)
    index = built("IVF64,PQ4x4", x, first_id=10)
    assert not tune_search_params(index, x)["reached"]  # codes alone
    index.rescore = lambda ids: x[np.asarray(ids) - 10]
    result = tune_search_params(index, x)
    assert result["reached"] and result["recall_at_k"] >= 0.95 and result["params"]["refine"] > 1
    scores, ids = index.search(x[:5], 10)
    assert (ids[:, 0] == np.arange(5) + 10).all()  # each vector's nearest is itself, exactly scored
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert VectorIndex(index._index, index.factory, index.search_params).search_params["refine"] == result["params"]["refine"]
