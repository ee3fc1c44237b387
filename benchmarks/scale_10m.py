"""Speed at 10 million photos on a machine whose memory cannot hold 10M raw vectors beside an index.

    python benchmarks/scale_10m.py [--n 10000000] [--queries 800] [--budget-gb 1.5] [--json FILE]

The same measurements as benchmarks/scale.py (whose docstring describes the vectors, queries and stages),
changed only where 10M x 512 float32 vectors (20.5 GB) do not fit in this machine's 24 GB next to the
index being built:
* the simulated vectors (the Gaussian mixture fitted to the real photos' lite embeddings) are kept as
  float16 (10.2 GB), and every consumer (xmodal's index, exact search, NumPy) sees the same float32 values
  converted back from them;
* exact search streams the vectors in 1M pieces: each piece becomes a FAISS `Flat` (inner product) that
  answers all the queries (the true neighbours, merged over the pieces) and, one query at a time on one
  thread, the timed ones; a query's exact time is the sum of its times over the pieces: a full scan of the
  10M vectors, as a resident Flat would do it. NumPy brute force is timed the same way;
* hnswlib is left out: its graph over 10M raw vectors needs more than 24 GB.
xmodal's index is built as a library builds it: `choose_index` under the budget, trained on a 200k sample,
vectors added in batches beside a real 10M-row store (vectors in the rows), `tune_search_params` to
recall@10 >= 0.95 (with the streamed exact search; compressed codes that fall short shortlist k * refine
candidates and rank them by the exact vectors read from the store), saved, then a fresh search process
memory-maps it, re-ranks from the store and fetches metadata.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from scale import (FLICKR8K, K, TARGET_RECALL, build_store, finish, ms, real_embeddings, recall,  # noqa: E402
                   stage_latencies)

PIECE = 1_000_000


def simulate(real: np.ndarray, n: int) -> np.ndarray:
    """(n, d) float16 unit vectors from the mixture fitted to `real` (engine.speed.mixture_like)."""
    from xmodal.engine.eval.speed import mixture_like

    out = np.empty((n, real.shape[1]), np.float16)
    s = 0
    for chunk in mixture_like(real, n, seed=n):
        out[s:s + len(chunk)] = chunk
        s += len(chunk)
    return out


def pieces(vectors: np.ndarray):
    for s in range(0, len(vectors), PIECE):
        yield s, np.ascontiguousarray(vectors[s:s + PIECE], np.float32)


def merge(best_d, best_i, d, i):
    dd, ii = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
    order = np.argsort(-dd, axis=1, kind="stable")[:, :best_d.shape[1]]
    return np.take_along_axis(dd, order, 1), np.take_along_axis(ii, order, 1)


def streamed_exact(vectors: np.ndarray, queries: np.ndarray, k: int, timed: np.ndarray | None = None) -> dict:
    """True top-k positions of `queries`; with `timed` (a few queries) also their single-query exact times
    (FAISS Flat, one thread) and NumPy brute-force times, summed over the pieces."""
    import faiss

    best_d = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    flat_s = np.zeros(0 if timed is None else len(timed))
    numpy_s = np.zeros_like(flat_s)
    for s, x in pieces(vectors):
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        d, i = flat.search(queries, k)
        best_d, best_i = merge(best_d, best_i, d, i + s)
        if timed is not None:
            faiss.omp_set_num_threads(1)
            for j, q in enumerate(timed):
                t = time.perf_counter()
                flat.search(q[None], k)
                flat_s[j] += time.perf_counter() - t
                t = time.perf_counter()
                sims = x @ q
                top = np.argpartition(-sims, k)[:k]
                top[np.argsort(-sims[top])]
                numpy_s[j] += time.perf_counter() - t
        del flat, x
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return {"truth": best_i, "flat_s": flat_s, "numpy_s": numpy_s}


def run(n: int, real: dict, budget: int, queries: np.ndarray, workdir: Path, encode_ms: dict, rerank_ms: dict,
        n_timed_exact: int = 20) -> dict:
    import faiss

    from xmodal.indexer.storage.index_choice import choose_index, estimated_index_bytes
    from xmodal.indexer.storage.index_tuning import tune_search_params
    from xmodal.indexer.storage.library import store_rescorer
    from xmodal.indexer.storage.store import Store
    from xmodal.indexer.storage.vector_index import VectorIndex

    out: dict = {"n": n, "vectors": "float16 in memory, float32 to every consumer"}
    t0 = time.perf_counter()
    vectors = simulate(real["images"], n)
    out["synthesis_s"] = round(time.perf_counter() - t0, 1)
    dim = vectors.shape[1]
    factory = choose_index(n, dim, budget)
    out["factory"] = factory
    out["estimated_index_bytes"] = estimated_index_bytes(factory, n, dim)
    log(f"{n:,} vectors simulated in {out['synthesis_s']} s; index {factory}")

    t0 = time.perf_counter()
    index = VectorIndex.create(dim, factory)
    sample = np.asarray(vectors[np.sort(np.random.default_rng(0).choice(n, size=min(n, 200_000), replace=False))],
                        np.float32)
    index.train(sample)
    out["train_s"] = round(time.perf_counter() - t0, 1)
    log(f"trained in {out['train_s']} s")
    for s in range(0, n, 100_000):  # ids 1..n, as the store numbers its rows
        index.add(np.arange(s, min(n, s + 100_000)) + 1, np.asarray(vectors[s:s + 100_000], np.float32))
    out["build_s"] = round(time.perf_counter() - t0, 1)
    log(f"built in {out['build_s']} s")
    out["store_build_s"] = round(build_store(workdir, vectors, batch=50_000), 1)
    out["store_file_bytes"] = (workdir / "library.db").stat().st_size
    log(f"store built in {out['store_build_s']} s")
    store = Store(workdir)
    index.rescore = store_rescorer(store, "images", dim)  # a shortlist is re-ranked from the store, if tuned so

    tune_q, test_q = queries[: len(queries) // 4], queries[len(queries) // 4:]
    t0 = time.perf_counter()
    exact = streamed_exact(vectors, test_q, K, timed=test_q[:n_timed_exact])
    truth = exact["truth"] + 1
    out["exact_pass_s"] = round(time.perf_counter() - t0, 1)
    log(f"exact pass in {out['exact_pass_s']} s")
    t0 = time.perf_counter()
    tuning = tune_search_params(index, vectors, k=K, target=TARGET_RECALL, queries=tune_q,
                                exact_search=lambda q, k: streamed_exact(vectors, q, k)["truth"])
    out["tuning"] = {**tuning, "seconds": round(time.perf_counter() - t0, 1)}
    log(f"tuned: {tuning}")
    index_path = workdir / "images.faiss"
    index.save(index_path)
    out["index_file_bytes"] = index_path.stat().st_size

    faiss.omp_set_num_threads(1)  # single-query searches on one thread, as xmodal's own
    for q in test_q[:5]:
        index.search(q[None], K)
    times, found = [], []
    for q in test_q:
        t = time.perf_counter()
        found.append(index.search(q[None], K)[1])
        times.append(time.perf_counter() - t)
    ann = {**ms(times), "recall_at_10": round(recall(np.concatenate(found), truth), 4), "params": tuning["params"]}
    out["peers"] = {f"xmodal {factory}": ann,
                    "faiss Flat (exact, streamed in 1M pieces)": {**ms(list(exact["flat_s"])), "recall_at_10": 1.0,
                                                                  "queries": n_timed_exact},
                    "NumPy brute force (streamed in 1M pieces)": {**ms(list(exact["numpy_s"])),
                                                                  "queries": n_timed_exact}}
    out["ann_ms"] = {"p50": ann["p50"], "p95": ann["p95"]}
    out["ann_recall_at_10"] = ann["recall_at_10"]
    out["speedup_vs_exact"] = round(1000 * float(np.median(exact["flat_s"])) / ann["p50"], 1)
    out["speedup_vs_numpy"] = round(1000 * float(np.median(exact["numpy_s"])) / ann["p50"], 1)
    log(f"ANN p50 {ann['p50']} ms recall {ann['recall_at_10']}; exact p50 {1000 * np.median(exact['flat_s']):.0f} ms")
    del index
    store.close()
    del vectors
    finish(out, workdir, test_q, encode_ms, rerank_ms)
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=800, help="dev captions: a quarter tune the index, the rest measure it")
    ap.add_argument("--budget-gb", type=float, default=1.5, help="memory budget for the index choice")
    ap.add_argument("--timed-exact", type=int, default=20, help="queries timed on the streamed exact search")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if not (FLICKR8K / "captions.txt").exists():
        raise SystemExit(f"needs the Flickr8k data at {FLICKR8K}")
    real = real_embeddings(args.queries, ("train", "dev"))
    queries = real["texts"].astype(np.float32)
    encode_ms, rerank_ms = stage_latencies(real)
    result = {"date": datetime.now().strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "distribution": "mixture", "base_photos": len(real["images"]), "budget_bytes": int(args.budget_gb * 1e9),
              "queries": len(queries), "encode_ms": encode_ms, "rerank32_ms": rerank_ms}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result["scale"] = run(args.n, real, result["budget_bytes"], queries, Path(tmp), encode_ms, rerank_ms,
                              args.timed_exact)
        result["scale"]["seconds"] = round(time.perf_counter() - t0, 1)
    r = result["scale"]
    log(f"{args.n:,}: {r['factory']} ANN p50 {r['ann_ms']['p50']:.2f} ms recall@10 {r['ann_recall_at_10']:.3f} "
        f"x{r['speedup_vs_exact']} vs exact; query p50 {r['query_ms_p50']:.1f} ms (+rerank "
        f"{r['query_ms_p50_with_rerank']:.1f}); search process {r['search_process']['rss_mb']:.0f} MB")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
