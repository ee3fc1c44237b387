"""Speed at scale: query latency by stage, ANN recall and speed-up over exact search, memory and disk per
photo, for collections of 10k, 100k and 1M photos (10M with --scales on a machine with the memory for it).

    python benchmarks/scale.py [--scales 10000 100000 1000000] [--queries 200] [--budget-gb 1.5] [--json]

Vectors: beyond the real photos, collections are drawn to resemble the real embedding distribution of the
lite model's embeddings of real photos (default: the 7,000 Flickr8k train + dev photos), renormalised:
* `--distribution mixture` (default, engine.speed.mixture_like): a Gaussian mixture with k-means centres (one
  per 5 real photos, weighted by cluster size) and the pooled within-cluster covariance: the clustering of a
  real collection (groups of similar scenes), without near-duplicates;
* `--distribution gaussian` (engine.speed.gaussian_like): one Gaussian with the real mean and covariance, no
  cluster structure: a harder, worst-case set for every ANN method.
Queries are real: the lite text embeddings of dev captions.

Per scale, side by side in one run on the same vectors and queries:
* xmodal's own index (`choose_index` under the memory budget, trained on a sample, `tune_search_params` to
  recall@10 >= 0.95 on held-out queries), through indexer.vector_index exactly as a library uses it;
* exact FAISS `Flat` (inner product), NumPy brute force (matrix-vector product + argpartition), and
  hnswlib (M = 16, efSearch raised until it reaches the same recall), when installed;
* stages of one text query: encode (the real lite text tower), ANN search, metadata fetch from a real
  xmodal store holding that many rows (vectors in the rows, as a library stores them), and the rerank of
  the top 32 (the real reranker over stored-format patch tokens, with the hubness and exemplar terms of 32
  photo vectors; its cost does not depend on the scale);
* memory: resident set of a fresh search process that opens the saved index and the store, answers
  queries (ANN + metadata fetch) and holds the lite encoder and the reranker, as `xmodal search` does
  (measured in a child process, so the benchmark's own arrays do not count; `rss_index_store_mb` is the
  same before the models are loaded); disk: bytes per photo
  of the index file, the store and the patch tokens.
Every latency is single-query (batch of 1), median and p95 over the queries, after a warm-up.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xmodal" / "bench"
K = 10
TARGET_RECALL = 0.95


def ms(seconds: list[float]) -> dict:
    a = np.asarray(seconds) * 1000
    return {"p50": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3)}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


# ------------------------------------------------------------------------------------------- real data
def real_embeddings(n_queries: int, splits=("dev",)) -> dict:
    """Lite embeddings of the photos of `splits` and of dev captions (cached: ~25 s per 1,000 photos)."""
    from xmodal.engine.eval.datasets import load_captions_csv

    ds = load_captions_csv(FLICKR8K, FLICKR8K / "splits" / "dev.txt")
    if tuple(splits) != ("dev",):
        images = [im for sp in splits for im in load_captions_csv(FLICKR8K, FLICKR8K / "splits" / f"{sp}.txt").images]
        ds.images = images
    key = hashlib.sha256(json.dumps([sorted(ds.images), n_queries, 1]).encode()).hexdigest()[:12]
    f = CACHE / f"real-{key}.npz"
    if not f.exists():
        from xmodal.indexer.ingest.decode import read_image
        from xmodal.indexer.models.encoders import get_encoder

        enc = get_encoder("lite")
        images = []
        for s in range(0, len(ds.images), 32):
            images.append(enc.encode_images([read_image(str(ds.image_dir / n)).image for n in ds.images[s:s + 32]]))
        captions = list(ds.captions[2::5][:n_queries])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(f, images=np.concatenate(images), texts=enc.encode_texts(captions), captions=np.array(captions))
    z = np.load(f)
    return {"images": z["images"], "texts": z["texts"], "captions": [str(c) for c in z["captions"]]}


# ------------------------------------------------------------------------------------------- one scale
def build_store(path: Path, vectors: np.ndarray, batch: int = 20_000) -> float:
    """A real xmodal store with one row per vector (fake paths); returns seconds."""
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


def run_scale(n: int, real: dict, budget: int, queries: np.ndarray, workdir: Path, hnsw: bool,
              rerank_ms: dict, encode_ms: dict) -> dict:
    import faiss

    from xmodal.indexer.storage.index_choice import choose_index, estimated_index_bytes
    from xmodal.indexer.storage.index_tuning import tune_search_params
    from xmodal.indexer.storage.vector_index import VectorIndex

    out: dict = {"n": n}
    t0 = time.perf_counter()
    from xmodal.engine.eval.speed import gaussian_like, mixture_like

    draw = mixture_like if real.get("distribution") == "mixture" else gaussian_like
    vectors = np.concatenate(list(draw(real["images"], n, seed=n)))
    out["synthesis_s"] = round(time.perf_counter() - t0, 1)
    dim = vectors.shape[1]
    factory = choose_index(n, dim, budget)
    out["factory"] = factory
    out["estimated_index_bytes"] = estimated_index_bytes(factory, n, dim)

    # --- xmodal's index, as a library builds it
    t0 = time.perf_counter()
    index = VectorIndex.create(dim, factory)
    if not index.is_trained:
        sample = vectors[np.random.default_rng(0).choice(n, size=min(n, 200_000), replace=False)]
        index.train(sample)
    for s in range(0, n, 100_000):
        index.add(np.arange(s, min(n, s + 100_000)), vectors[s:s + 100_000])
    out["build_s"] = round(time.perf_counter() - t0, 1)
    tune_q, test_q = queries[: len(queries) // 4], queries[len(queries) // 4:]
    t0 = time.perf_counter()
    tuning = tune_search_params(index, vectors, k=K, target=TARGET_RECALL, queries=tune_q)
    out["tuning"] = {**tuning, "seconds": round(time.perf_counter() - t0, 1)}
    index_path = workdir / "images.faiss"
    index.save(index_path)
    out["index_file_bytes"] = index_path.stat().st_size

    # --- exact search and the peers on the same vectors
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth = exact.search(test_q, K)
    systems: dict = {"xmodal " + factory: lambda q: index.search(q, K)[1],
                     "faiss Flat (exact)": lambda q: exact.search(q, K)[1]}
    extra: dict = {"xmodal " + factory: {"params": tuning["params"]}}

    def numpy_search(q):
        s = vectors @ q[0]
        top = np.argpartition(-s, K)[:K]
        return top[np.argsort(-s[top])][None]

    systems["NumPy brute force"] = numpy_search
    if hnsw:
        import hnswlib

        t0 = time.perf_counter()
        h = hnswlib.Index(space="ip", dim=dim)
        h.init_index(max_elements=n, ef_construction=100, M=16, random_seed=0)
        h.set_num_threads(os.cpu_count() or 1)
        h.add_items(vectors, np.arange(n))
        build = time.perf_counter() - t0
        h.set_num_threads(1)
        _, tune_truth = exact.search(tune_q, K)
        for ef in (16, 32, 64, 128, 256, 512, 1024):
            h.set_ef(ef)
            if recall(h.knn_query(tune_q, k=K)[0].astype(np.int64), tune_truth) >= TARGET_RECALL:
                break
        systems["hnswlib HNSW16"] = lambda q: h.knn_query(q, k=K)[0].astype(np.int64)
        extra["hnswlib HNSW16"] = {"params": {"ef": ef}, "build_s": round(build, 1)}
    # side by side: every query runs on every system back to back, the order rotating per query; FAISS
    # single-query searches on one thread, as xmodal's own (indexer.vector_index.FEW_QUERIES)
    faiss.omp_set_num_threads(1)
    names = list(systems)
    times = {name: [] for name in names}
    found = {name: [] for name in names}
    for q in test_q[:5]:
        for name in names:
            systems[name](q[None])
    for j, q in enumerate(test_q):
        for name in names[j % len(names):] + names[:j % len(names)]:
            t = time.perf_counter()
            found[name].append(systems[name](q[None]))
            times[name].append(time.perf_counter() - t)
    peers = {name: {**ms(times[name]), "recall_at_10": round(recall(np.concatenate(found[name]), truth), 4),
                    **extra.get(name, {})} for name in names}
    out["peers"] = peers
    ann = peers["xmodal " + factory]
    out["ann_ms"] = {"p50": ann["p50"], "p95": ann["p95"]}
    out["ann_recall_at_10"] = ann["recall_at_10"]
    out["speedup_vs_exact"] = round(peers["faiss Flat (exact)"]["p50"] / ann["p50"], 1)
    out["speedup_vs_numpy"] = round(peers["NumPy brute force"]["p50"] / ann["p50"], 1)
    del exact

    # --- the store, metadata fetch, and a fresh search process's memory
    out["store_build_s"] = round(build_store(workdir, vectors), 1)
    out["store_file_bytes"] = (workdir / "library.db").stat().st_size
    del vectors
    finish(out, workdir, test_q, encode_ms, rerank_ms)
    return out


def finish(out: dict, workdir: Path, test_q: np.ndarray, encode_ms: dict, rerank_ms: dict) -> None:
    """The last steps of one scale, shared with scale_10m.py: a fresh search process over the saved index and
    store in `workdir` (resident memory, metadata fetch), disk bytes per photo, and the query totals.
    `out` must hold n, index_file_bytes, store_file_bytes and ann_ms already."""
    from xmodal.indexer.models.patch_projector import LITE_RERANK, PatchProjector

    n = out["n"]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(workdir), "--child-queries",
                           str(len(test_q))], capture_output=True, text=True, input=json.dumps(test_q.tolist()),
                          check=True)
    out["search_process"] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["fetch_ms"] = out["search_process"]["fetch_ms"]
    slot = PatchProjector.from_checkpoint(LITE_RERANK).spec.slot_bytes if LITE_RERANK.exists() else 0
    disk = {"index": round(out["index_file_bytes"] / n, 1), "store": round(out["store_file_bytes"] / n, 1),
            "patch_tokens": slot}
    disk["total"] = round(sum(disk.values()), 1)
    out["disk_bytes_per_photo"] = disk
    total = encode_ms["p50"] + out["ann_ms"]["p50"] + out["fetch_ms"]["p50"]
    out["query_ms_p50"] = round(total, 2)
    out["query_ms_p50_with_rerank"] = round(total + rerank_ms["p50"], 2)


def child(workdir: Path, n_queries: int) -> None:
    """A fresh search process: open the index (memory-mapped where the type allows) and the store, answer
    the queries (ANN + metadata fetch), report resident memory and fetch latency."""
    from xmodal.indexer.storage.library import store_rescorer  # imports torch, as every search process does
    from xmodal.indexer.storage.store import Store
    from xmodal.indexer.storage.vector_index import VectorIndex

    def status() -> dict:
        return dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)

    def mb(st: dict, key: str) -> float:
        return round(int(st[key].split()[0]) / 1024, 1)

    queries = np.asarray(json.loads(sys.stdin.read()), np.float32)
    t0 = time.perf_counter()
    index = VectorIndex.load(workdir / "images.faiss", mmap=True)
    store = Store(workdir)
    index.rescore = store_rescorer(store, "images", index.dim)  # as a library does (used only with `refine`)
    opened = time.perf_counter() - t0
    fetch = []
    for q in queries:
        _, ids = index.search(q[None], K)
        t = time.perf_counter()
        store.get_images([int(i) for i in ids[0] if i >= 0])
        fetch.append(time.perf_counter() - t)
    index_store = mb(status(), "VmRSS")
    # and what `xmodal search` holds besides: the lite encoder (to encode the query) and the reranker
    from xmodal.engine.rerank.lite import LITE_RERANK, Reranker
    from xmodal.indexer.models.encoders import get_encoder

    enc = get_encoder("lite")
    enc.encode_text_states(["a warm-up query"])
    rr = Reranker() if LITE_RERANK.exists() else None
    st = status()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked parent across exec
    print(json.dumps({"open_s": round(opened, 3), "rss_mb": mb(st, "VmRSS"), "rss_index_store_mb": index_store,
                      "peak_rss_mb": mb(st, "VmHWM"), "fetch_ms": ms(fetch[5:] or fetch),
                      "models": ["lite"] + (["reranker"] if rr is not None else [])}))


# ------------------------------------------------------------------------------------------- query stages
def stage_latencies(real: dict) -> tuple[dict, dict]:
    """Encode a text query (lite) and rerank its top 32: the real reranker over stored-format tokens, with the
    candidates' hubness priors and exemplar term from 32 real photo vectors (as engine.reranking does)."""
    import torch

    from xmodal.engine.rerank.lite import Reranker, TextTokens
    from xmodal.indexer.models.encoders import get_encoder

    enc = get_encoder("lite")
    captions = real["captions"]
    for c in captions[:5]:
        enc.encode_text_states([c])
    encode = []
    for c in captions:
        t = time.perf_counter()
        enc.encode_text_states([c])
        encode.append(time.perf_counter() - t)
    rr = Reranker()
    spec = rr.projector.spec
    tokens = torch.from_numpy(np.random.default_rng(0).standard_normal((32, spec.tokens, spec.dim)).astype(np.float16))
    vectors = np.ascontiguousarray(real["images"][:32], np.float32)  # (32, D) unit photo vectors
    rerank = []
    for c in captions:
        _, states, mask, _ = enc.encode_text_states([c])
        t = time.perf_counter()
        rr.score_text_to_images(states[0], mask[0], tokens.float())
        if rr.hub is not None:
            rr.hub_prior(vectors, "t2i")
            if rr.beta["t2i"]:
                rr.exemplar_scores(TextTokens(states, mask), vectors)
        rerank.append(time.perf_counter() - t)
    return ms(encode), ms(rerank[5:])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--budget-gb", type=float, default=1.5, help="memory budget for the index choice")
    ap.add_argument("--no-hnswlib", action="store_true")
    ap.add_argument("--distribution", choices=["mixture", "gaussian"], default="mixture",
                    help="mixture: clustered like the real photos (default); gaussian: one Gaussian, no clusters")
    ap.add_argument("--base", choices=["dev", "train+dev"], default="train+dev",
                    help="real photos whose embeddings the distribution is fitted to")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-queries", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.child_queries)
        return {}
    if not (FLICKR8K / "captions.txt").exists():
        raise SystemExit(f"needs the Flickr8k data at {FLICKR8K}")
    try:
        import hnswlib  # noqa: F401
        hnsw = not args.no_hnswlib
    except ImportError:
        hnsw = False
        print("hnswlib is not installed (pip install -e .[bench]); its column is left out", file=sys.stderr)
    real = real_embeddings(args.queries, ("dev",) if args.base == "dev" else ("train", "dev"))
    real["distribution"] = args.distribution
    queries = real["texts"].astype(np.float32)
    encode_ms, rerank_ms = stage_latencies(real)
    result = {"date": datetime.now().strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "distribution": args.distribution, "base_photos": len(real["images"]),
              "budget_bytes": int(args.budget_gb * 1e9), "queries": len(queries), "encode_ms": encode_ms,
              "rerank32_ms": rerank_ms, "scales": []}
    for n in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = run_scale(n, real, result["budget_bytes"], queries, Path(tmp), hnsw, rerank_ms, encode_ms)
            r["seconds"] = round(time.perf_counter() - t0, 1)
        result["scales"].append(r)
        print(f"{n:>10,d}  {r['factory']:<22s} ANN p50 {r['ann_ms']['p50']:.2f} ms  recall@10 "
              f"{r['ann_recall_at_10']:.3f}  x{r['speedup_vs_exact']} vs exact  query p50 {r['query_ms_p50']:.1f} ms "
              f"(+rerank {r['query_ms_p50_with_rerank']:.1f})  rss {r['search_process']['rss_mb']:.0f} MB  "
              f"{r['disk_bytes_per_photo']['total'] / 1024:.1f} KB/photo  ({r['seconds']:.0f}s)", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
