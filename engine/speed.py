"""`xmodal bench speed`: indexing throughput next to the image tower's forward-pass rate, and text-query
latency / ANN recall / speedup over exact search at a chosen scale, in one run on this machine.

Beyond the photos actually indexed, the collection is simulated: `scale` vectors drawn to resemble the
real embedding distribution (real image embeddings plus Gaussian noise, renormalised). Medians of
repeated measurements; the machine's core count is reported with them.
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


def forward_rate(encoder: Encoder, batch: int = 16, repeats: int = 5) -> float:
    """Images/s of the image tower alone (preprocessed random pixels, batch `batch`), median of repeats."""
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "image_patches"):
        return float("nan")
    x = torch.randn(batch, 3, 224, 224)
    rates = []
    with torch.inference_mode():
        model.encode_image(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.encode_image(x)
            rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def simulated_collection(real: np.ndarray, n: int, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """(n, d) unit vectors: real embeddings plus Gaussian noise (per dimension, relative to unit norm)."""
    rng = np.random.default_rng(seed)
    base = real[rng.integers(0, len(real), n)]
    x = base + rng.normal(scale=noise / np.sqrt(real.shape[1]), size=base.shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_speed(encoder: Encoder, photos: Path, scale: int = 10_000, repeats: int = 30) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        with Library(Path(tmp) / "lib", create=True) as lib:
            report = index_images(lib, [str(photos)], encoder)
            index_img_s = report.indexed / report.seconds if report.seconds else float("nan")
            real = lib.vector_index("images").reconstruct(lib.vector_index("images").ids())
    forward_img_s = forward_rate(encoder)
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
        "photos": report.indexed, "scale": scale, "factory": factory, "search_params": tuning["params"],
        "query_ms_p50": round(statistics.median(query_ms), 2), "query_ms_p95": round(_percentile(query_ms, 95), 2),
        "encode_ms_p50": round(statistics.median(encode_ms), 2), "ann_ms_p50": round(statistics.median(ann_ms), 3),
        "exact_ms_p50": round(statistics.median(exact_ms), 3), "rerank_ms_p50": None,
        "ann_recall_at_10": round(recall_at_k(np.array(found), np.array(truth)), 3),
        "speedup_vs_exact": round(statistics.median(exact_ms) / max(statistics.median(ann_ms), 1e-6), 1),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cores": os.cpu_count(), "simulated": "real image embeddings + Gaussian noise, renormalised",
    }
