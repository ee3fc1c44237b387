"""xmodal.indexer.storage.vector_index: FAISS vectors keyed by store ids, saved atomically with a JSON sidecar."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal.indexer.storage.vector_index import IndexMismatchError, VectorIndex, VectorIndexError

DIM = 32


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filled(factory: str = "Flat", n: int = 300, first_id: int = 1000) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    vectors = unit_vectors(n)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    index = VectorIndex.create(DIM, factory)
    index.train(vectors)
    index.add(ids, vectors)
    index.set_search_params(nprobe=16, efSearch=64)  # all 16 IVF cells, a wide HNSW beam: exact on this tiny set
    return index, ids, vectors


# -- add / search


def test_a_vector_finds_itself_first_with_cosine_one_under_its_store_id():
    index, ids, vectors = filled()
    scores, found = index.search(vectors[:5], k=3)
    assert scores.shape == found.shape == (5, 3)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_array_equal(found[:, 0], ids[:5])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_properties_describe_the_index():
    index, ids, _ = filled()
    assert (index.dim, index.factory, index.ntotal, len(index), index.is_trained) == (DIM, "Flat", 300, 300, True)
    np.testing.assert_array_equal(index.ids(), ids)


def test_asking_for_more_neighbours_than_vectors_returns_only_real_ones():
    index, ids, vectors = filled(n=4)
    scores, found = index.search(vectors[:2], k=10)
    assert found.shape == (2, 4)
    assert (found >= 0).all() and set(found[0]) == set(ids)


def test_searching_an_empty_index_gives_empty_columns():
    scores, found = VectorIndex.create(DIM).search(unit_vectors(3), k=5)
    assert scores.shape == (3, 0) and found.shape == (3, 0) and found.dtype == np.int64


def test_a_single_1d_query_is_one_row():
    index, ids, vectors = filled()
    _, found = index.search(vectors[7], k=1)
    assert found.tolist() == [[ids[7]]]


def test_wrong_dimension_says_what_was_expected():
    index = VectorIndex.create(DIM)
    with pytest.raises(ValueError, match=rf"expected dim {DIM}.*\(2, 16\)"):
        index.add(np.array([1, 2]), unit_vectors(2, dim=16))
    with pytest.raises(ValueError, match=rf"expected dim {DIM}"):
        index.search(unit_vectors(1, dim=64), k=1)


def test_float64_vectors_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"float32, got float64.*astype"):
        VectorIndex.create(DIM).add(np.array([1]), unit_vectors(1).astype(np.float64))


def test_ids_must_be_integers_one_per_vector():
    index = VectorIndex.create(DIM)
    with pytest.raises(ValueError, match="integer"):
        index.add(np.array([1.0, 2.0]), unit_vectors(2))
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        index.add(np.array([1, 2]), unit_vectors(3))
    with pytest.raises(ValueError, match=">= 0"):
        index.add(np.array([-1]), unit_vectors(1))


def test_unnormalised_vectors_are_refused():
    with pytest.raises(ValueError, match="L2-normalised.*row 1"):
        VectorIndex.create(DIM).add(np.array([1, 2]), np.vstack([unit_vectors(1), 3 * unit_vectors(1, seed=5)]))


def test_an_id_cannot_be_added_twice():
    index, ids, vectors = filled(n=10)
    with pytest.raises(ValueError, match=rf"already in the index: \[{ids[3]}\]"):
        index.add(np.array([ids[3]]), vectors[:1])
    with pytest.raises(ValueError, match="duplicates"):
        index.add(np.array([5, 5]), vectors[:2])
    assert index.ntotal == 10


def test_an_unknown_factory_string_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot build index 'Nonsense42'"):
        VectorIndex.create(DIM, "Nonsense42")


def test_adding_to_an_untrained_ivf_index_says_to_train_first():
    index = VectorIndex.create(DIM, "IVF16,Flat")
    assert not index.is_trained
    with pytest.raises(VectorIndexError, match="not trained; call train"):
        index.add(np.array([1]), unit_vectors(1))


# -- remove / reconstruct


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_removed_vectors_are_gone_and_the_others_keep_their_ids(factory):
    index, ids, vectors = filled(factory)
    assert index.remove(np.array([ids[0], ids[150], 123456])) == 2
    assert index.ntotal == 298
    _, found = index.search(vectors, k=1)
    kept = np.ones(len(ids), bool)
    kept[[0, 150]] = False
    np.testing.assert_array_equal(found[kept, 0], ids[kept])  # every survivor still finds itself
    assert ids[0] not in found and ids[150] not in found
    assert set(index.ids()) == set(ids[kept])


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_reconstruct_returns_the_stored_vectors_by_id(factory):
    index, ids, vectors = filled(factory)
    np.testing.assert_allclose(index.reconstruct(ids[[5, 2]]), vectors[[5, 2]], atol=1e-6)
    index.remove(ids[:3])  # still right after positions shift
    np.testing.assert_allclose(index.reconstruct(ids[[5, 299]]), vectors[[5, 299]], atol=1e-6)


def test_reconstructing_an_unknown_id_names_it():
    index, _, _ = filled(n=5)
    with pytest.raises(KeyError, match="424242"):
        index.reconstruct([424242])


def test_removing_nothing_is_a_no_op():
    index, _, _ = filled(n=5)
    assert index.remove([]) == 0 and index.remove([9]) == 0 and index.ntotal == 5


# -- search parameters


def test_search_params_apply_where_they_make_sense_and_unknown_names_fail():
    flat = VectorIndex.create(DIM)
    flat.set_search_params(nprobe=8)  # meaningless for Flat: ignored
    assert flat.search_params == {}
    ivf, _, _ = filled("IVF16,Flat")
    assert ivf.search_params == {"nprobe": 16}
    with pytest.raises(ValueError, match="not_a_param"):
        ivf.set_search_params(not_a_param=3)


def test_nprobe_changes_ivf_results():
    index, ids, vectors = filled("IVF16,Flat", n=600)
    index.set_search_params(nprobe=1)
    _, narrow = index.search(vectors, k=50)
    index.set_search_params(nprobe=16)
    _, wide = index.search(vectors, k=50)
    assert (narrow < 0).any() or not np.array_equal(narrow, wide)


# -- persistence


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_save_and_load_round_trip(tmp_path, factory):
    index, ids, vectors = filled(factory)
    path = tmp_path / "images.faiss"
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.faiss", "images.faiss.json"]  # no .tmp left
    sidecar = json.loads((tmp_path / "images.faiss.json").read_text())
    assert sidecar["factory"] == factory and sidecar["dim"] == DIM and sidecar["ntotal"] == 300
    loaded = VectorIndex.load(path)
    assert (loaded.factory, loaded.dim, loaded.ntotal) == (factory, DIM, 300)
    assert loaded.search_params == index.search_params
    np.testing.assert_array_equal(loaded.search(vectors[:20], 1)[1][:, 0], ids[:20])
    loaded.add(np.array([1]), unit_vectors(1, seed=9))  # a normally loaded index stays writable
    assert loaded.ntotal == 301


def test_saving_again_replaces_the_previous_files(tmp_path):
    index, ids, vectors = filled(n=10)
    index.save(tmp_path / "i.faiss")
    index.remove(ids[:4])
    index.save(tmp_path / "i.faiss")
    assert VectorIndex.load(tmp_path / "i.faiss").ntotal == 6


def test_an_mmap_loaded_flat_index_searches_but_refuses_writes(tmp_path):
    index, ids, vectors = filled()
    index.save(tmp_path / "i.faiss")
    mapped = VectorIndex.load(tmp_path / "i.faiss", mmap=True)
    np.testing.assert_array_equal(mapped.search(vectors[:10], 1)[1][:, 0], ids[:10])
    with pytest.raises(VectorIndexError, match="mmap=True.*read-only"):
        mapped.add(np.array([1]), unit_vectors(1))


def test_a_mapped_index_holds_no_id_to_position_hash_map_but_still_reconstructs(tmp_path):
    """Saved with IndexIDMap's tag, a read-only search process never builds IndexIDMap2's rev_map (40 bytes
    a vector); a writable load still gets an IndexIDMap2, and can remove."""
    import faiss

    index, ids, vectors = filled("Flat", n=50)
    index.save(tmp_path / "i.faiss")
    assert (tmp_path / "i.faiss").read_bytes()[:4] == b"IxMp"
    mapped = VectorIndex.load(tmp_path / "i.faiss", mmap=True)
    assert mapped.read_only and type(mapped._index) is faiss.IndexIDMap
    np.testing.assert_array_equal(mapped.search(vectors[:5], 1)[1][:, 0], ids[:5])
    np.testing.assert_allclose(mapped.reconstruct(ids[[7, 3, 40]]), vectors[[7, 3, 40]], atol=1e-6)
    writable = VectorIndex.load(tmp_path / "i.faiss")
    assert type(writable._index) is faiss.IndexIDMap2
    np.testing.assert_allclose(writable.reconstruct(ids[[7]]), vectors[[7]], atol=1e-6)
    assert writable.remove(ids[:10]) == 10 and writable.ntotal == 40


@pytest.mark.parametrize("mmap", [False, True])
def test_an_index_saved_with_the_old_indexidmap2_tag_still_loads(tmp_path, mmap):
    import faiss

    index, ids, vectors = filled("IVF16,Flat", n=300)
    index.save(tmp_path / "i.faiss")
    faiss.write_index(index._index, str(tmp_path / "i.faiss"))  # as saved before 2026-11-29
    assert (tmp_path / "i.faiss").read_bytes()[:4] == b"IxM2"
    loaded = VectorIndex.load(tmp_path / "i.faiss", mmap=mmap)
    assert loaded.read_only == mmap and loaded.ntotal == 300
    np.testing.assert_array_equal(loaded.search(vectors[:10], 1)[1][:, 0], ids[:10])


def test_loading_a_missing_index_names_the_path(tmp_path):
    with pytest.raises(VectorIndexError, match=r"no vector index at .*nope\.faiss"):
        VectorIndex.load(tmp_path / "nope.faiss")


def test_loading_without_the_sidecar_names_the_sidecar(tmp_path):
    filled(n=3)[0].save(tmp_path / "i.faiss")
    (tmp_path / "i.faiss.json").unlink()
    with pytest.raises(VectorIndexError, match=r"i\.faiss\.json .* is missing"):
        VectorIndex.load(tmp_path / "i.faiss")


def test_a_sidecar_that_disagrees_with_the_index_is_a_mismatch(tmp_path):
    small, _, _ = filled(n=3)
    small.save(tmp_path / "i.faiss")
    sidecar = tmp_path / "i.faiss.json"
    meta = json.loads(sidecar.read_text())
    meta["ntotal"] = 4
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(IndexMismatchError, match=r"i\.faiss holds 3 vectors .* says 4"):
        VectorIndex.load(tmp_path / "i.faiss")


def test_a_corrupt_index_file_is_reported(tmp_path):
    filled(n=3)[0].save(tmp_path / "i.faiss")
    (tmp_path / "i.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexMismatchError, match=r"i\.faiss is 7 bytes but .* describes a file of"):
        VectorIndex.load(tmp_path / "i.faiss")  # the sidecar's size gives it away before FAISS reads it
    sidecar = tmp_path / "i.faiss.json"
    meta = json.loads(sidecar.read_text())
    del meta["bytes"], meta["sha256"]  # a sidecar saved before checksums: FAISS itself refuses the bytes
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(VectorIndexError, match=r"cannot read vector index .*i\.faiss"):
        VectorIndex.load(tmp_path / "i.faiss")


def test_a_failed_save_leaves_the_previous_index_and_no_temp_file(tmp_path, monkeypatch):
    index, _, _ = filled(n=5)
    index.save(tmp_path / "i.faiss")
    import xmodal.indexer.storage.vector_index as vi

    def crash(tmp, final):
        raise OSError("disk full")

    monkeypatch.setattr(vi, "_replace_durably", crash)
    index.remove(index.ids()[:2])
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "i.faiss")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.faiss", "i.faiss.json"]
    assert VectorIndex.load(tmp_path / "i.faiss").ntotal == 5


def test_a_removed_id_can_be_added_again():
    index, ids, vectors = filled(n=10)
    index.remove(ids[2:3])
    index.add(ids[2:3], vectors[2:3])
    assert index.search(vectors[2], k=1)[1].tolist() == [[ids[2]]]


def test_a_compressed_ivf_pq_index_behind_a_transform_removes_by_id_and_still_finds_the_survivors(tmp_path):
    index, ids, vectors = filled("RR32,IVF4,PQ8x4", n=400)  # a pre-transform (like OPQ, but untrained) before IVF-PQ
    assert index.remove(ids[:100]) == 100
    _, found = index.search(vectors[100:], k=1)
    assert not np.isin(found, ids[:100]).any()
    assert np.mean(found[:, 0] == ids[100:]) > 0.9  # PQ is approximate, but ids must not be shifted
    index.save(tmp_path / "pq.faiss")
    assert VectorIndex.load(tmp_path / "pq.faiss").ntotal == 300


FAISS_FULL = ("Error in void faiss::write_index(const faiss::Index*, faiss::IOWriter*, int) at "
              "/project/faiss/faiss/impl/index_write.cpp:860: Error: 'ret == (size * 4)' failed")


def _disk(monkeypatch, free: int):
    import os
    from types import SimpleNamespace

    import faiss

    def write_index(*a, **kw):
        raise RuntimeError(FAISS_FULL)

    monkeypatch.setattr(faiss, "write_index", write_index)
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_bavail=free, f_frsize=4096))


def test_a_full_disk_is_named_without_faiss_internals(tmp_path, monkeypatch):
    index = VectorIndex.create(8, "Flat")
    index.add(np.arange(8), np.eye(8, dtype=np.float32))
    _disk(monkeypatch, free=0)
    with pytest.raises(VectorIndexError) as e:
        index.save(tmp_path / "i.faiss")
    assert str(e.value) == f"cannot write {tmp_path / 'i.faiss'}: the disk is full"
    assert not list(tmp_path.iterdir())  # no partial file left
    _disk(monkeypatch, free=10**9)  # space left: another failure, still without FAISS's assertion text
    with pytest.raises(VectorIndexError, match="the write failed") as e:
        index.save(tmp_path / "i.faiss")
    assert "faiss::" not in str(e.value) and "ret ==" not in str(e.value)
