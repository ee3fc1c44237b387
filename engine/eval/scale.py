"""Search speed at scale, one collection size at a time: the code behind `xmodal bench speed` and the scripts
benchmarks/scale.py and benchmarks/scale_10m.py (thin wrappers that only parse arguments and write reports).

`run_scale(n, base, workdir)`:
* simulates `n` vectors like `base.images` (engine.eval.simulate, memory-mapped in `workdir`);
* builds xmodal's own index as a library does: `choose_index` under the memory budget, trained on a 200k
  sample, vectors added in batches with ids 1..n beside a real n-row store (vectors in the rows);
* tunes it with `tune_search_params` to recall@10 >= 0.95 on `base.tune_texts` (compressed codes that fall
  short shortlist candidates and rank them by the exact vectors read from the store), and saves it;
* measures it on `base.test_texts`, single queries on one thread, against exact FAISS `Flat` and NumPy brute
  force on the same vectors (and hnswlib with `hnsw=True`). Up to `piece` vectors the exact index is resident
  and every query runs on every system back to back, the order rotating; beyond, exact search streams the
  vectors in `piece`-sized parts (a query's exact time is the sum over the parts: a full scan), timed on
  `timed_exact` queries;
* opens the saved index and store in a fresh search process (engine.eval.search_process): its resident
  memory with the models, and metadata fetch latency; disk bytes per photo.
Latencies: median and p95 in ms. Query = encode + ANN + fetch medians (`stage_ms` gives encode and rerank).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from xmodal.engine.eval.search_process import ms
from xmodal.engine.eval.simulate import simulate
from xmodal.engine.eval.sources import Base

logger = logging.getLogger(__name__)

K = 10
TARGET_RECALL = 0.95
BUDGET_BYTES = 1_500_000_000
PIECE = 1_000_000
TRAIN_SAMPLE = 200_000
ADD_BATCH = 100_000


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def build_store(path: Path, vectors: np.ndarray, batch: int = 50_000) -> float:
    """A real xmodal store with one row per vector (fake paths; rows 1..n); returns seconds."""
    from xmodal.indexer.records import DecodedImage
    from xmodal.indexer.storage.store import Store

    t0 = time.perf_counter()
    with Store(path, create=True) as store:
        store.set_meta("dim", vectors.shape[1])
        for s in range(0, len(vectors), batch):
            rows = [DecodedImage(f"/photos/{i // 1000:05d}/IMG_{i:07d}.jpg", 3_000_000, 1.7e9,
                                 hashlib.sha256(str(i).encode()).hexdigest(), 4000, 3000, None, None)
                    for i in range(s, min(len(vectors), s + batch))]
            store.add_images(rows, "lite", np.asarray(vectors[s:s + batch], np.float32))
    return time.perf_counter() - t0


class Exact:
    """Exact inner-product search over `vectors` (positions 0..n-1): one resident FAISS Flat up to `piece`
    vectors, else streamed through one Flat per `piece` vectors at a time."""

    def __init__(self, vectors: np.ndarray, piece: int = PIECE):
        import faiss

        self.vectors, self.piece = vectors, piece
        self.flat = None
        if len(vectors) <= piece:
            self.flat = faiss.IndexFlatIP(vectors.shape[1])
            self.flat.add(np.ascontiguousarray(vectors, np.float32))

    def _pieces(self):
        import faiss

        for s in range(0, len(self.vectors), self.piece):
            flat = faiss.IndexFlatIP(self.vectors.shape[1])
            x = np.ascontiguousarray(self.vectors[s:s + self.piece], np.float32)
            flat.add(x)
            yield s, x, flat

    def search(self, queries: np.ndarray, k: int, timed: np.ndarray | None = None) -> np.ndarray:
        """(q, k) true positions; streamed with `timed` (a few queries), also fills `self.flat_s` and
        `self.numpy_s`: their single-query exact and NumPy times, summed over the pieces."""
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        if self.flat is not None:
            return self.flat.search(np.asarray(queries, np.float32), k)[1]
        best_d = np.full((len(queries), k), -np.inf, np.float32)
        best_i = np.full((len(queries), k), -1, np.int64)
        flat_s = np.zeros(0 if timed is None else len(timed))
        numpy_s = np.zeros_like(flat_s)
        for s, x, flat in self._pieces():
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            d, i = flat.search(np.asarray(queries, np.float32), k)
            dd, ii = np.concatenate([best_d, d], 1), np.concatenate([best_i, i + s], 1)
            order = np.argsort(-dd, axis=1, kind="stable")[:, :k]
            best_d, best_i = np.take_along_axis(dd, order, 1), np.take_along_axis(ii, order, 1)
            faiss.omp_set_num_threads(1)
            for j, q in enumerate([] if timed is None else timed):
                t = time.perf_counter()
                flat.search(q[None], k)
                flat_s[j] += time.perf_counter() - t
                t = time.perf_counter()
                numpy_top(x, q, k)
                numpy_s[j] += time.perf_counter() - t
            del flat, x
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        if timed is not None:  # kept from the timed pass only (tuning searches again, untimed)
            self.flat_s, self.numpy_s = flat_s, numpy_s
        return best_i


def numpy_top(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Brute force: matrix-vector product and argpartition."""
    s = vectors @ q
    top = np.argpartition(-s, k)[:k]
    return top[np.argsort(-s[top])]


def _side_by_side(systems: dict, queries: np.ndarray, warm: int = 5) -> tuple[dict, dict]:
    """Every query on every system back to back, the order rotating per query: {name: seconds}, {name: found}."""
    names = list(systems)
    times = {name: [] for name in names}
    found = {name: [] for name in names}
    for q in queries[:warm]:
        for name in names:
            systems[name](q[None])
    for j, q in enumerate(queries):
        for name in names[j % len(names):] + names[:j % len(names)]:
            t = time.perf_counter()
            found[name].append(np.asarray(systems[name](q[None])).reshape(1, -1))
            times[name].append(time.perf_counter() - t)
    return times, {name: np.concatenate(f) for name, f in found.items()}


def _hnswlib(vectors: np.ndarray, exact: Exact, tune_q: np.ndarray) -> tuple:
    """hnswlib (M 16), efSearch raised until it reaches the target recall on the tuning queries."""
    import hnswlib

    t0 = time.perf_counter()
    h = hnswlib.Index(space="ip", dim=vectors.shape[1])
    h.init_index(max_elements=len(vectors), ef_construction=100, M=16, random_seed=0)
    h.set_num_threads(os.cpu_count() or 1)
    for s in range(0, len(vectors), ADD_BATCH):
        h.add_items(np.asarray(vectors[s:s + ADD_BATCH], np.float32), np.arange(s, min(len(vectors), s + ADD_BATCH)))
    build = time.perf_counter() - t0
    h.set_num_threads(1)
    truth = exact.search(tune_q, K)
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        h.set_ef(ef)
        if recall(h.knn_query(tune_q, k=K)[0].astype(np.int64), truth) >= TARGET_RECALL:
            break
    return (lambda q: h.knn_query(q, k=K)[0].astype(np.int64) + 1), {"params": {"ef": ef}, "build_s": round(build, 1)}


def run_scale(n: int, base: Base, workdir: Path, budget: int | None = BUDGET_BYTES, distribution: str = "mixture",
              hnsw: bool = False, piece: int = PIECE, timed_exact: int = 20, model: str = "lite",
              stage_ms: dict | None = None) -> dict:
    """One collection of `n` simulated photos in the empty folder `workdir` (see the module docstring)."""
    import faiss

    from xmodal.indexer.storage.index_choice import choose_index, estimated_index_bytes
    from xmodal.indexer.storage.index_tuning import tune_search_params
    from xmodal.indexer.storage.library import store_rescorer
    from xmodal.indexer.models.patch_projector import default_projector
    from xmodal.indexer.storage.store import Store
    from xmodal.indexer.storage.vector_index import VectorIndex

    t_all = time.perf_counter()
    out: dict = {"n": n, "distribution": distribution}
    t0 = time.perf_counter()
    vectors = simulate(base.images, n, workdir / "vectors.npy", distribution)
    out["vectors"] = f"{vectors.dtype}, memory-mapped"
    out["synthesis_s"] = round(time.perf_counter() - t0, 1)
    dim = vectors.shape[1]
    factory = choose_index(n, dim, budget)
    out["factory"] = factory
    out["estimated_index_bytes"] = estimated_index_bytes(factory, n, dim)
    logger.info("%d vectors simulated in %.1f s; index %s", n, out["synthesis_s"], factory)

    t0 = time.perf_counter()
    index = VectorIndex.create(dim, factory)
    if not index.is_trained:
        pick = np.sort(np.random.default_rng(0).choice(n, size=min(n, TRAIN_SAMPLE), replace=False))
        index.train(np.asarray(vectors[pick], np.float32))
    out["train_s"] = round(time.perf_counter() - t0, 1)
    for s in range(0, n, ADD_BATCH):  # ids 1..n, as the store numbers its rows
        index.add(np.arange(s, min(n, s + ADD_BATCH)) + 1, np.asarray(vectors[s:s + ADD_BATCH], np.float32))
    out["build_s"] = round(time.perf_counter() - t0, 1)
    logger.info("index built in %.1f s", out["build_s"])
    out["store_build_s"] = round(build_store(workdir, vectors), 1)
    out["store_file_bytes"] = (workdir / "library.db").stat().st_size
    store = Store(workdir)
    index.rescore = store_rescorer(store, "images", dim)  # a shortlist is re-ranked from the store, if tuned so

    tune_q, test_q = base.tune_texts, base.test_texts
    t0 = time.perf_counter()
    exact = Exact(vectors, piece)
    truth = exact.search(test_q, K, timed=test_q[:timed_exact]) + 1
    out["exact_pass_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    tuning = tune_search_params(index, vectors, k=K, target=TARGET_RECALL, queries=tune_q, exact_search=exact.search)
    out["tuning"] = {**tuning, "seconds": round(time.perf_counter() - t0, 1)}
    logger.info("tuned: %s", tuning)
    index.save(workdir / "images.faiss")
    out["index_file_bytes"] = (workdir / "images.faiss").stat().st_size

    # single-query searches on one thread, as xmodal's own (indexer.vector_index.FEW_QUERIES)
    ours = f"xmodal {factory}"
    systems = {ours: lambda q: index.search(q, K)[1]}
    extra: dict = {ours: {"params": tuning["params"]}}
    if exact.flat is not None:
        systems["faiss Flat (exact)"] = lambda q: exact.flat.search(q, K)[1] + 1
        systems["NumPy brute force"] = lambda q: numpy_top(vectors, q[0], K) + 1
        if hnsw:
            systems["hnswlib HNSW16"], extra["hnswlib HNSW16"] = _hnswlib(vectors, exact, tune_q)
    faiss.omp_set_num_threads(1)
    times, found = _side_by_side(systems, test_q)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    peers = {name: {**ms(times[name]), "recall_at_10": round(recall(found[name], truth), 4), **extra.get(name, {})}
             for name in systems}
    if exact.flat is None:
        streamed = f"streamed in {piece // 1_000_000}M pieces" if piece >= 1_000_000 else f"streamed in {piece:,} pieces"
        peers[f"faiss Flat (exact, {streamed})"] = {**ms(list(exact.flat_s)), "recall_at_10": 1.0,
                                                     "queries": len(exact.flat_s)}
        peers[f"NumPy brute force ({streamed})"] = {**ms(list(exact.numpy_s)), "recall_at_10": 1.0,
                                                    "queries": len(exact.numpy_s)}
    out["peers"] = peers
    flat = next(p for name, p in peers.items() if name.startswith("faiss Flat"))
    brute = next(p for name, p in peers.items() if name.startswith("NumPy"))
    ann = peers[ours]
    out["ann_ms"] = {"p50": ann["p50"], "p95": ann["p95"]}
    out["ann_recall_at_10"] = ann["recall_at_10"]
    out["speedup_vs_exact"] = round(flat["p50"] / ann["p50"], 1)
    out["speedup_vs_numpy"] = round(brute["p50"] / ann["p50"], 1)
    logger.info("ANN p50 %.2f ms recall %.3f; x%.1f vs exact", ann["p50"], ann["recall_at_10"], out["speedup_vs_exact"])
    exact = systems = index = vectors = None  # freed before the search process starts
    store.close()
    (workdir / "vectors.npy").unlink()

    # a fresh search process: resident memory and metadata fetch; disk per photo; the query totals
    from xmodal.engine.eval.search_process import measure

    out["search_process"] = measure(workdir, test_q, model)
    out["fetch_ms"] = out["search_process"]["fetch_ms"]
    projector = default_projector(model)  # the model's own reranker's tokens, when it has one
    slot = projector.spec.slot_bytes if projector is not None else 0
    disk = {"index": round(out["index_file_bytes"] / n, 1), "store": round(out["store_file_bytes"] / n, 1),
            "patch_tokens": slot}
    disk["total"] = round(sum(disk.values()), 1)
    out["disk_bytes_per_photo"] = disk
    if stage_ms is not None:
        encode, rerank = stage_ms["encode_ms"], stage_ms["rerank32_ms"]
        total = encode["p50"] + out["ann_ms"]["p50"] + out["fetch_ms"]["p50"]
        out["query_ms_p50"] = round(total, 2)
        out["query_ms_p95_stages"] = round(encode["p95"] + out["ann_ms"]["p95"] + out["fetch_ms"]["p95"], 2)
        out["query_ms_p50_with_rerank"] = round(total + rerank["p50"], 2) if rerank else None
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    return out
