"""xmodal.indexer.storage.index_choice: which FAISS index a collection gets."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from xmodal.indexer.storage.index_choice import (
    FLAT_THRESHOLD,
    choose_index,
    estimated_index_bytes,
    ivf_nlist,
)

SIZES = [100, 10_000, 100_000, 1_000_000, 10_000_000]
DIMS = [128, 256, 384, 512]


def family(factory: str) -> int:
    """Order of the index families from exact to most compressed."""
    if factory == "Flat":
        return 0
    if factory.startswith("HNSW"):
        return 1
    if factory.startswith("IVF") and factory.endswith(",Flat"):
        return 2
    if factory.startswith("OPQ") and ",PQ" in factory:
        return 3
    raise AssertionError(f"unexpected factory {factory}")


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("n", SIZES)
def test_every_choice_is_a_valid_faiss_factory_string(n, dim):
    factory = choose_index(n, dim)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    assert index.d == dim


@pytest.mark.parametrize("dim", DIMS)
def test_choices_move_from_exact_to_compressed_as_the_collection_grows(dim):
    families = [family(choose_index(n, dim)) for n in SIZES]
    assert families == sorted(families)
    assert families[0] == 0 and families[-1] == 3
    assert set(families) == {0, 1, 2, 3}


def test_small_collections_are_searched_exactly_even_on_a_tiny_budget():
    assert choose_index(FLAT_THRESHOLD - 1, 512) == "Flat"
    assert choose_index(FLAT_THRESHOLD - 1, 512, memory_budget_bytes=1) == "Flat"
    assert choose_index(FLAT_THRESHOLD, 512) != "Flat"


def test_a_moderate_collection_gets_hnsw32_when_it_fits():
    assert choose_index(100_000, 512, memory_budget_bytes=10 * 2**30) == "HNSW32"


@pytest.mark.parametrize("dim", DIMS)
def test_a_small_budget_forces_the_compressed_type_and_the_result_still_fits(dim):
    n = 100_000
    budget = n * dim  # a quarter of the raw float32 vectors
    factory = choose_index(n, dim, memory_budget_bytes=budget)
    assert family(factory) == 3
    assert estimated_index_bytes(factory, n, dim) <= budget
    faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def test_a_budget_between_hnsw_and_raw_vectors_picks_ivf_flat():
    n, dim = 100_000, 512
    budget = estimated_index_bytes(f"IVF{ivf_nlist(n)},Flat", n, dim) + 1
    assert budget < estimated_index_bytes("HNSW32", n, dim)
    assert choose_index(n, dim, memory_budget_bytes=budget) == f"IVF{ivf_nlist(n)},Flat"


def test_an_impossible_budget_still_returns_the_smallest_compressed_index():
    factory = choose_index(1_000_000, 512, memory_budget_bytes=1000)
    assert factory.startswith("OPQ8_32,")
    faiss.index_factory(512, factory, faiss.METRIC_INNER_PRODUCT)


@pytest.mark.parametrize("n, expected", [(20_000, 512), (100_000, 1024), (1_000_000, 4096), (10_000_000, 16384)])
def test_ivf_cell_count_is_four_sqrt_n_rounded_to_a_power_of_two(n, expected):
    assert ivf_nlist(n) == expected


def test_estimated_sizes_order_the_families_by_memory():
    n, dim = 1_000_000, 512
    flat = estimated_index_bytes("Flat", n, dim)
    hnsw = estimated_index_bytes("HNSW32", n, dim)
    ivf = estimated_index_bytes("IVF4096,Flat", n, dim)
    pq = estimated_index_bytes("OPQ64_256,IVF4096_HNSW32,PQ64x8", n, dim)
    assert pq < flat < ivf < hnsw
    assert flat >= n * dim * 4


def test_estimated_size_matches_a_real_flat_index_within_a_factor():
    n, dim = 2000, 64
    index = faiss.IndexIDMap2(faiss.index_factory(dim, "Flat", faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(np.zeros((n, dim), np.float32), np.arange(n, dtype=np.int64))
    actual = len(faiss.serialize_index(index))
    assert actual / 2 < estimated_index_bytes("Flat", n, dim) < actual * 2


def test_unknown_factory_strings_are_rejected_by_name():
    with pytest.raises(ValueError, match="'LSH'"):
        estimated_index_bytes("LSH", 10, 64)


def test_nonsense_sizes_are_rejected():
    with pytest.raises(ValueError):
        choose_index(-1, 512)
    with pytest.raises(ValueError):
        choose_index(100, 0)


def test_a_million_photos_under_a_one_and_a_half_gigabyte_budget_get_8_bit_vectors():
    """Raw float vectors (2 GB) would not fit; one byte per dimension (0.57 GB) does, before any PQ."""
    factory = choose_index(1_000_000, 512, memory_budget_bytes=int(1.5e9))
    assert factory == "IVF4096,SQ8"
    assert estimated_index_bytes(factory, 1_000_000, 512) < 0.6e9
    assert choose_index(1_000_000, 512, memory_budget_bytes=int(0.3e9)).startswith("OPQ")


def test_an_sq8_index_trains_adds_removes_and_finds_near_neighbours():
    from xmodal.indexer.storage.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex.create(32, "IVF16,SQ8")
    index.train(x)
    index.add(np.arange(3000), x)
    index.set_search_params(nprobe=16)
    _, ids = index.search(x[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.95
    assert index.remove([0, 1]) == 2 and 0 not in index.search(x[:1], 5)[1][0]
