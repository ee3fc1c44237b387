"""Index rebuilds read the store's vectors page by page (indexer.stored_vectors): training on a sample,
adding and tuning never need the whole collection in memory."""
import hashlib

import faiss
import numpy as np

from xmodal.indexer.storage.index_choice import MIN_TRAIN, TRAIN_PER_LIST, train_size
from xmodal.indexer.records import DecodedImage
from xmodal.indexer.storage.store import Store
from xmodal.indexer.storage.stored_vectors import StoredVectors, merge_top_k


def _store(path, n=230, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = Store(path, create=True)
    rows = [DecodedImage(f"/p/{i}.jpg", 1, 1.0, hashlib.sha256(str(i).encode()).hexdigest(), 4, 3, None, None)
            for i in range(n)]
    ids = store.add_images(rows, "fake", x)
    return store, np.asarray(ids, np.int64), x


def test_pages_cover_every_vector_once_in_position_order(tmp_path):
    store, ids, x = _store(tmp_path)
    with store:
        vectors = StoredVectors(store, "images", ids, 16, page=50)
        parts = list(vectors.pages())
        assert [len(p) for p, _ in parts] == [50, 50, 50, 50, 30]
        np.testing.assert_array_equal(np.concatenate([p for p, _ in parts]), ids)
        np.testing.assert_allclose(np.concatenate([v for _, v in parts]), x)
        np.testing.assert_allclose(vectors[[3, 200]], x[[3, 200]])
        assert vectors.shape == (230, 16) and len(vectors.sample(40)) == 40 and len(vectors.sample(10**6)) == 230


def test_streamed_exact_search_equals_one_flat_index_over_everything(tmp_path):
    store, ids, x = _store(tmp_path)
    queries = x[:20] + 0.1
    flat = faiss.IndexFlatIP(16)
    flat.add(x)
    _, truth = flat.search(queries, 10)
    with store:
        got = StoredVectors(store, "images", ids, 16, page=37).exact_search(queries, 10)
    np.testing.assert_array_equal(got, truth)


def test_merging_two_top_lists_keeps_the_best_k():
    d, i = merge_top_k(np.array([[0.9, 0.5]]), np.array([[1, 2]]), np.array([[0.7, 0.1]]), np.array([[8, 9]]))
    assert i.tolist() == [[1, 8]] and d.tolist() == [[0.9, 0.7]]


def test_training_sets_are_samples_sized_by_the_index_lists():
    assert train_size("HNSW32", 5_000_000) == MIN_TRAIN
    assert train_size("IVF16384_HNSW32,PQ64x8", 10_000_000) == TRAIN_PER_LIST * 16384
    assert train_size("OPQ64_256,IVF1024,PQ64x8", 30_000) == 30_000  # a small collection trains on all of it


def test_a_library_rebuilt_into_compressed_codes_reranks_its_shortlist_from_the_store(tmp_path):
    """Rebuilding into product-quantised codes that cap recall: the library's index shortlists and ranks by the
    exact vectors its store holds, reaching recall@10 >= 0.95; a reopened library does the same."""
    from xmodal.indexer.storage.library import Library

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 32))
    x = (centres[rng.integers(0, 40, 6000)] + 0.5 * rng.normal(size=(6000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [DecodedImage(f"/p/{i}.jpg", 1, 1.0, hashlib.sha256(str(i).encode()).hexdigest(), 4, 3, None, None)
            for i in range(6000)]
    with Library(tmp_path / "lib", create=True) as lib:
        lib.bind_model("fake", 32)
        ids, _ = lib.add_images(rows, x, "fake")
        with lib.writing():
            result = lib.rebuild_index("images", "IVF64,PQ4x4")
    assert result["reached"] and result["params"]["refine"] > 1
    truth = np.asarray(ids)[np.argsort(-(x[:50] @ x.T), axis=1)[:, :10]]
    with Library(tmp_path / "lib") as lib:
        index = lib.vector_index("images")
        assert index.factory == "IVF64,PQ4x4" and index.search_params["refine"] == result["params"]["refine"]
        _, found = index.search(x[:50], 10)
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())]) >= 0.9
