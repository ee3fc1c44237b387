"""An IVF index built for size: trained on a sample, filled part by part, its inverted lists merged on disk.

    train(sample) -> empty trained index -> each page of stored vectors added to a copy of it (a part file,
    on a Ray worker or in this process) -> FAISS merge_ondisk: the parts' inverted lists into one
    <modality>.<generation>.ivfdata -> <modality>.faiss, an IndexIDMap over the trained index whose lists
    point into that file

Nothing here holds the collection in memory: the driver streams the store's vectors page by page
(indexer.storage.stored_vectors), a part holds one page, and the merged lists live in the .ivfdata file,
which FAISS memory-maps wherever the index is opened (a search process reads only the lists it probes).
The index file is saved atomically with its sidecar like any other; the .ivfdata of the previous build is
deleted only after the new index file is in place. Used by `--engine ray` when the collection calls for
IVF-PQ (`index_choice`), and by `build_ondisk` directly for any IVF factory. On Ray the parts are filled by
plain Ray tasks (`ray_pool`), not Ray Data as the embedding is: a few stateless calls, each given its page."""
from __future__ import annotations

import logging
import shutil
from typing import Callable, Sequence

import faiss
import numpy as np

from xmodal.indexer.storage.index_choice import train_size
from xmodal.indexer.storage.library import Library, LibraryError
from xmodal.indexer.storage.vector_index import VectorIndex

logger = logging.getLogger(__name__)

IVFDATA = ".ivfdata"
#: runs fn over a list of argument tuples, returning the results in order (Ray tasks, or a plain loop)
Pool = Callable[[Callable, Sequence[tuple]], list]


def wants_ondisk(factory: str | None) -> bool:
    """Whether `factory` is an IVF with compressed (PQ) codes: the size at which lists belong on disk."""
    return bool(factory) and "IVF" in factory and "PQ" in factory


def add_part(trained: np.ndarray, vectors: np.ndarray, positions: np.ndarray, path: str) -> str:
    """Add `vectors` at `positions` to a copy of the trained empty index (`faiss.serialize_index` bytes) and
    write it to `path`. Runs on a worker."""
    index = faiss.deserialize_index(trained)
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(positions, np.int64))
    faiss.write_index(index, path)
    return path


def local_pool(fn: Callable, args: Sequence[tuple]) -> list:
    return [fn(*a) for a in args]


def build_ondisk(library: Library, modality: str, factory: str, queries: np.ndarray | None = None,
                 pool: Pool = local_pool, page: int | None = None) -> dict:
    """Rebuild the modality's index as `factory` (an IVF) with on-disk inverted lists, from the store's
    vectors (nothing is re-embedded); tune nprobe to recall@10 >= 0.95 as `Library.rebuild_index` does, and
    save it. The caller holds the writer lock. `page`: vectors per part (default: the store's page size).
    Returns what `rebuild_index` returns, plus the .ivfdata file."""
    from xmodal.indexer.storage.index_tuning import tune_search_params
    from xmodal.indexer.storage.stored_vectors import PAGE, StoredVectors

    if "IVF" not in factory:
        raise ValueError(f"{factory!r} has no inverted lists to put on disk; give an IVF factory")
    dim = library.dim
    if dim is None:
        raise LibraryError(f"library {library.root} holds no vectors yet; nothing to build")
    generation, ids, has = library.store.vector_state(modality)
    vectors = StoredVectors(library.store, modality, ids[has], dim, page=page or PAGE)
    inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    inner.train(np.ascontiguousarray(vectors.sample(train_size(factory, len(vectors))), np.float32))
    trained = faiss.serialize_index(inner)
    parts = library.root / f"{modality}.parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    try:
        order, jobs, offset = [], [], 0
        for n, (part_ids, page) in enumerate(vectors.pages()):
            order.append(np.asarray(part_ids, np.int64))
            jobs.append((trained, page, np.arange(offset, offset + len(page), dtype=np.int64),
                         str(parts / f"part{n:05d}.faiss")))
            offset += len(page)
        part_files = pool(add_part, jobs)
        ivfdata = library.root / f"{modality}.{generation}{IVFDATA}"
        ivfdata.unlink(missing_ok=True)
        wrapped = faiss.IndexIDMap2(inner)  # wrapped while empty; the merge then fills `inner` in place
        from faiss.contrib.ondisk import merge_ondisk

        merge_ondisk(inner, part_files, str(ivfdata))
        faiss.copy_array_to_vector(np.concatenate(order) if order else np.empty(0, np.int64), wrapped.id_map)
        wrapped.ntotal = inner.ntotal
        wrapped.construct_rev_map()
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    index = VectorIndex(wrapped, factory)
    index.rescore = library._rescorer(modality)
    tuning = tune_search_params(index, vectors, queries=queries, exact_search=vectors.exact_search)
    index.generation = generation
    library._indexes[modality] = index
    library.save(modality)
    for old in library.root.glob(f"{modality}.*{IVFDATA}"):  # earlier builds' lists, now unreferenced
        if old != ivfdata:
            old.unlink(missing_ok=True)
    logger.info("%s: %s index built on disk as %s over %d vectors (%s)", library.root, modality, factory,
                len(vectors), tuning)
    return {"modality": modality, "factory": factory, "vectors": int(len(vectors)), "on_disk": ivfdata.name,
            **tuning}


def ray_pool(ray, in_flight: int) -> Pool:
    """A pool running each call as a Ray task, at most `in_flight` at once (a part holds one page)."""
    def run(fn: Callable, args: Sequence[tuple]) -> list:
        remote = ray.remote(num_cpus=1, max_retries=3)(fn)
        position, results, refs = {}, [None] * len(args), []
        for i, a in enumerate(args):
            if len(refs) >= in_flight:
                ready, refs = ray.wait(refs, num_returns=1)
                results[position.pop(ready[0])] = ray.get(ready[0])
            ref = remote.remote(*a)
            position[ref] = i
            refs.append(ref)
        for ref in refs:
            results[position.pop(ref)] = ray.get(ref)
        return results
    return run
