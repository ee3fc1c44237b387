"""`xmodal bench speed`: indexing throughput next to the image tower's forward-pass rate, and text-query
latency / ANN recall / speedup over exact search at a chosen scale, in one run on this machine.

Beyond the photos actually indexed, the collection is simulated: `scale` vectors drawn to resemble the
real embedding distribution (a Gaussian with the real image embeddings' mean and covariance, renormalised:
see `gaussian_like`). Medians of repeated measurements; the machine's core count is reported with them.
"""
from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from xmodal.indexer.models.base import Encoder
from xmodal.indexer.storage.index_choice import choose_index
from xmodal.indexer.storage.index_tuning import TUNING_QUERIES, recall_at_k, tune_search_params
from xmodal.indexer.storage.library import Library
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.storage.vector_index import VectorIndex

QUERIES = ["a dog running on the grass", "two children playing in the water", "a man riding a bike",
           "a group of people standing in the snow", "a black and white dog", "a woman in a red shirt",
           "a boy jumping into a swimming pool", "people walking down a city street"]


def _num(x: float) -> float | None:
    return round(float(x), 1) if np.isfinite(x) else None


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def forward_rate(encoder: Encoder, batch: int = 16, repeats: int = 5, channels_last: bool = False) -> float:
    """Images/s of the image tower alone (preprocessed random pixels, batch `batch`), median of repeats;
    with `channels_last`, input and weights in the NHWC memory format (on a copy of the model)."""
    import copy

    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "image_patches"):
        return float("nan")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=fmt)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    rates = []
    with torch.inference_mode():
        model.encode_image(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.encode_image(x)
            rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def onnx_forward_rates(encoder: Encoder, batch: int = 16, repeats: int = 5) -> dict[str, float]:
    """Images/s of the encoder's ONNX Runtime image path (what the lite encoder indexes with when
    onnxruntime is installed), uint8 pixels in, embeddings and patch maps out, two ways side by side:
    {"session": one session using every core, "lanes": one single-threaded session per core running
    batches concurrently (what indexing uses)}; empty when the encoder has no ONNX path."""
    import threading

    onnx = getattr(encoder, "onnx", None)
    if onnx is None:
        return {}
    size = encoder.preprocess.size
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)  # normalised in the graph
    lanes = list(range(onnx.lanes))
    for lane in [None, *lanes]:  # warm-up: the first run of a session allocates its memory
        onnx(x, lane)

    def run_lane(lane: int, n: int) -> None:
        for _ in range(n):
            onnx(x, lane)

    single, parallel = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        t0 = time.perf_counter()
        onnx(x)
        single.append(batch / (time.perf_counter() - t0))
        threads = [threading.Thread(target=run_lane, args=(lane, 2)) for lane in lanes]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parallel.append(2 * batch * len(lanes) / (time.perf_counter() - t0))
    return {"session": statistics.median(single), "lanes": statistics.median(parallel)}


def onnx_forward_rate(encoder: Encoder, batch: int = 16, repeats: int = 5) -> float:
    """The faster of `onnx_forward_rates`, or nan without an ONNX path."""
    rates = onnx_forward_rates(encoder, batch, repeats)
    return max(rates.values()) if rates else float("nan")


def warm_up(encoder: Encoder, images: list) -> None:
    """Run the image path once on every inference lane, so that timings see a running indexer."""
    lanes = int(getattr(encoder, "lanes", 1))
    for lane in range(lanes) if lanes > 1 else [None]:
        if hasattr(encoder, "encode_images_with_patches"):
            encoder.encode_images_with_patches(images, **({} if lane is None else {"lane": lane}))
        else:
            encoder.encode_images(images)


def index_rate(encoder: Encoder, photos: Path, runs: int = 3) -> tuple[float, Library | None, np.ndarray, np.ndarray]:
    """Median images/s of `runs` indexing runs of `photos` into fresh libraries (encoder warmed up first),
    with the last run's (image vectors, patch tokens)."""
    from PIL import Image

    from xmodal.indexer.models.patch_projector import default_projector

    projector = default_projector(encoder.name)
    warm_up(encoder, [Image.new("RGB", (640, 480), (120, 90, 60))] * 16)
    rates, real, tokens = [], np.zeros((0, encoder.dim), np.float32), np.zeros((0,))
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            with Library(Path(tmp) / "lib", create=True) as lib:
                report = index_images(lib, [str(photos)], encoder, patches=projector)
                rates.append(report.indexed / report.seconds if report.seconds else float("nan"))
                ids = lib.vector_index("images").ids()
                real = lib.vector_index("images").reconstruct(ids)
                if projector is not None:
                    records = lib.store.get_images(ids.tolist())
                    tokens, found = lib.patch_store().read([r.id for r in records], [r.sha256 for r in records])
                    tokens = tokens[found]
    return statistics.median(rates), real, tokens


def gaussian_like(real: np.ndarray, n: int, seed: int = 0, chunk: int = 100_000):
    """Yield float32 chunks (at most `chunk` rows) of `n` unit vectors drawn from N(mean, cov) of the `real`
    embeddings, renormalised: the anisotropy of the real space without near-duplicate clusters. With fewer
    real vectors than dimensions the covariance is shrunk towards its average variance (Ledoit-Wolf style,
    weight d / (m + d)) so that it stays full rank."""
    real = np.asarray(real, np.float64)
    m, d = real.shape
    cov = np.cov(real, rowvar=False) if m > 1 else np.zeros((d, d))
    shrink = d / (m + d)
    cov = (1 - shrink) * cov + shrink * (np.trace(cov) / d + 1e-6) * np.eye(d)
    root = np.linalg.cholesky(cov).astype(np.float32)
    mean = real.mean(0).astype(np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        x = mean + rng.standard_normal((min(chunk, n - s), d), dtype=np.float32) @ root.T
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def mixture_like(real: np.ndarray, n: int, seed: int = 0, per_cluster: int = 5, chunk: int = 100_000):
    """Yield float32 chunks of `n` unit vectors from a Gaussian mixture fitted to the `real` embeddings:
    k-means centres (one per `per_cluster` real vectors, weighted by their cluster sizes) and the pooled
    within-cluster covariance, renormalised. Keeps the clustering of real photo collections (groups of
    similar scenes) that a single Gaussian (gaussian_like) lacks, still without near-duplicates."""
    import faiss

    real = np.ascontiguousarray(real, np.float32)
    m, d = real.shape
    k = max(1, m // per_cluster)
    km = faiss.Kmeans(d, k, niter=20, seed=seed, verbose=False, min_points_per_centroid=1)  # few points per centre, on purpose
    km.train(real)
    _, assign = km.index.search(real, 1)
    assign = assign[:, 0]
    residual = (real - km.centroids[assign]).astype(np.float64)
    cov = residual.T @ residual / max(1, m - k)
    shrink = d / (m + d)
    cov = (1 - shrink) * cov + shrink * (np.trace(cov) / d + 1e-6) * np.eye(d)
    root = np.linalg.cholesky(cov).astype(np.float32)
    weights = np.bincount(assign, minlength=k) / m
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        c = rng.choice(k, size=min(chunk, n - s), p=weights)
        x = km.centroids[c] + rng.standard_normal((len(c), d), dtype=np.float32) @ root.T
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def simulated_collection(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n, d) unit vectors resembling `real` (see gaussian_like)."""
    return np.concatenate(list(gaussian_like(real, n, seed))) if n else np.zeros((0, real.shape[1]), np.float32)


def rerank_latency(encoder: Encoder, tokens: np.ndarray, queries: list[str], k: int = 32) -> float | None:
    """Median ms of the bundled reranker scoring `k` candidates' stored-format tokens for a text query."""
    from xmodal.indexer.models.patch_projector import LITE_RERANK

    if not hasattr(encoder, "encode_text_states") or not LITE_RERANK.exists() or not len(tokens):
        return None
    from xmodal.engine.rerank.lite import Reranker, TextTokens

    rr = Reranker()
    cand = torch.from_numpy(np.resize(tokens, (k, *tokens.shape[1:]))).float()
    vectors = None
    if rr.hub is not None:  # the candidates' hubness priors cost the same for any unit vectors
        vectors = np.random.default_rng(0).standard_normal((k, rr.hub["texts"].shape[1])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    times = []
    for i, q in enumerate(queries * 2):
        _, states, mask, _ = encoder.encode_text_states([q])
        t0 = time.perf_counter()
        rr.score_text_to_images(states[0], mask[0], cand)
        if vectors is not None:
            rr.hub_prior(vectors, "t2i")
            if rr.beta["t2i"]:
                rr.exemplar_scores(TextTokens(states, mask), vectors)
        if i:  # the first is a warm-up
            times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 2)


def bench_speed(encoder: Encoder, photos: Path, scale: int = 10_000, repeats: int = 30, index_runs: int = 3) -> dict:
    index_img_s, real, tokens = index_rate(encoder, photos, runs=index_runs)
    forward_img_s = forward_rate(encoder)
    forward_cl_img_s = forward_rate(encoder, channels_last=True)
    onnx_rates = onnx_forward_rates(encoder)
    forward_onnx_img_s = max(onnx_rates.values()) if onnx_rates else float("nan")
    fastest = max((r for r in (forward_img_s, forward_cl_img_s, forward_onnx_img_s) if np.isfinite(r)),
                  default=float("nan"))
    vectors = simulated_collection(real, scale)
    factory = choose_index(scale, vectors.shape[1])
    index = VectorIndex.create(vectors.shape[1], factory)
    if not index.is_trained:
        index.train(vectors)
    index.add(np.arange(scale, dtype=np.int64), vectors)
    tuning = tune_search_params(index, vectors, queries=encoder.encode_texts(TUNING_QUERIES))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    encode_ms, ann_ms, exact_ms, found, truth = [], [], [], [], []
    for i in range(repeats):
        q = QUERIES[i % len(QUERIES)]
        t0 = time.perf_counter()
        qv = encoder.encode_texts([q])
        t1 = time.perf_counter()
        _, ids = index.search(qv, 10)
        t2 = time.perf_counter()
        _, ex = exact.search(qv, 10)
        t3 = time.perf_counter()
        encode_ms.append(1000 * (t1 - t0))
        ann_ms.append(1000 * (t2 - t1))
        exact_ms.append(1000 * (t3 - t2))
        found.append(ids[0])
        truth.append(ex[0])
    query_ms = [e + a for e, a in zip(encode_ms, ann_ms)]
    return {
        "index_img_s": _num(index_img_s), "forward_img_s": _num(fastest), "forward_eager_img_s": _num(forward_img_s),
        "forward_channels_last_img_s": _num(forward_cl_img_s), "forward_onnx_img_s": _num(forward_onnx_img_s),
        "forward_onnx_session_img_s": _num(onnx_rates.get("session", float("nan"))),
        "forward_onnx_lanes_img_s": _num(onnx_rates.get("lanes", float("nan"))),
        "index_vs_fastest": round(index_img_s / fastest, 3) if np.isfinite(fastest) and fastest else None,
        "photos": len(real), "index_runs": index_runs, "scale": scale, "factory": factory, "search_params": tuning["params"],
        "query_ms_p50": round(statistics.median(query_ms), 2), "query_ms_p95": round(_percentile(query_ms, 95), 2),
        "encode_ms_p50": round(statistics.median(encode_ms), 2), "ann_ms_p50": round(statistics.median(ann_ms), 3),
        "exact_ms_p50": round(statistics.median(exact_ms), 3),
        "rerank_ms_p50": rerank_latency(encoder, tokens, QUERIES),
        "ann_recall_at_10": round(recall_at_k(np.array(found), np.array(truth)), 3),
        "speedup_vs_exact": round(statistics.median(exact_ms) / max(statistics.median(ann_ms), 1e-6), 1),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cores": os.cpu_count(),
        "simulated": "Gaussian with the real image embeddings' mean and (shrunk) covariance, renormalised",
    }
