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

from indexer.encoders import Encoder
from indexer.index_choice import choose_index
from indexer.index_tuning import TUNING_QUERIES, recall_at_k, tune_search_params
from indexer.library import Library
from indexer.pipeline import index_images
from indexer.vector_index import VectorIndex

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


def onnx_forward_rate(encoder: Encoder, batch: int = 16, repeats: int = 5) -> float:
    """Images/s of the encoder's ONNX Runtime image path (what the lite encoder indexes with when
    onnxruntime is installed), or nan when it has none."""
    onnx = getattr(encoder, "onnx", None)
    if onnx is None:
        return float("nan")
    x = torch.randn(batch, 3, 224, 224)
    onnx(x)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        onnx(x)
        rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates)


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
    from indexer.patch_tokens import LITE_RERANK

    if not hasattr(encoder, "encode_text_states") or not LITE_RERANK.exists() or not len(tokens):
        return None
    from .rerank import Reranker

    rr = Reranker()
    cand = torch.from_numpy(np.resize(tokens, (k, *tokens.shape[1:]))).float()
    times = []
    for i, q in enumerate(queries * 2):
        _, states, mask, _ = encoder.encode_text_states([q])
        t0 = time.perf_counter()
        rr.score_text_to_images(states[0], mask[0], cand)
        if i:  # the first is a warm-up
            times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 2)


def bench_speed(encoder: Encoder, photos: Path, scale: int = 10_000, repeats: int = 30) -> dict:
    from indexer.patch_tokens import default_projector

    with tempfile.TemporaryDirectory() as tmp:
        with Library(Path(tmp) / "lib", create=True) as lib:
            projector = default_projector(encoder.name)
            report = index_images(lib, [str(photos)], encoder, patches=projector)
            index_img_s = report.indexed / report.seconds if report.seconds else float("nan")
            ids = lib.vector_index("images").ids()
            real = lib.vector_index("images").reconstruct(ids)
            tokens = np.zeros((0,))
            if projector is not None:
                records = lib.store.get_images(ids.tolist())
                tokens, found = lib.patch_store().read([r.id for r in records], [r.sha256 for r in records])
                tokens = tokens[found]
    forward_img_s = forward_rate(encoder)
    forward_cl_img_s = forward_rate(encoder, channels_last=True)
    forward_onnx_img_s = onnx_forward_rate(encoder)
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
        "index_img_s": _num(index_img_s), "forward_img_s": _num(forward_img_s),
        "forward_channels_last_img_s": _num(forward_cl_img_s), "forward_onnx_img_s": _num(forward_onnx_img_s),
        "photos": report.indexed, "scale": scale, "factory": factory, "search_params": tuning["params"],
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
