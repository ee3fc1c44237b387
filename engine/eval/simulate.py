"""Simulated photo collections: unit vectors drawn to resemble real embeddings, for benchmarks at scales
no real collection on hand reaches.

* `mixture_like` (the default, "mixture"): a Gaussian mixture fitted to the real embeddings (k-means centres,
  one per 5 real photos, weighted by cluster size, and the pooled within-cluster covariance): the clustering
  of a real collection (groups of similar scenes), without near-duplicates;
* `gaussian_like` ("gaussian"): one Gaussian with the real mean and covariance, no cluster structure: a
  harder, worst-case set for every ANN method.

`simulate` writes a whole collection chunk by chunk into a memory-mapped .npy file, so that the benchmark's
own copy of the vectors is page cache the system can reclaim, not resident memory it must hold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: Collections above this many vectors are kept as float16 (10M x 512 float32 would be 20.5 GB); every
#: consumer converts them back to float32, so all see the same values.
FLOAT16_ABOVE = 2_000_000

DESCRIPTIONS = {
    "mixture": "Gaussian mixture fitted to the real image embeddings (k-means centres, one per 5 photos, "
               "pooled within-cluster covariance), renormalised",
    "gaussian": "Gaussian with the real image embeddings' mean and (shrunk) covariance, renormalised",
}


def _shrunk_root(cov: np.ndarray, m: int) -> np.ndarray:
    """Cholesky root of `cov` shrunk towards its average variance (Ledoit-Wolf style, weight d / (m + d)), so
    that it stays full rank with fewer real vectors than dimensions."""
    d = cov.shape[0]
    shrink = d / (m + d)
    cov = (1 - shrink) * cov + shrink * (np.trace(cov) / d + 1e-6) * np.eye(d)
    return np.linalg.cholesky(cov).astype(np.float32)


def gaussian_like(real: np.ndarray, n: int, seed: int = 0, chunk: int = 100_000):
    """Yield float32 chunks (at most `chunk` rows) of `n` unit vectors drawn from N(mean, cov) of the `real`
    embeddings, renormalised: the anisotropy of the real space without near-duplicate clusters."""
    real = np.asarray(real, np.float64)
    m, d = real.shape
    root = _shrunk_root(np.cov(real, rowvar=False) if m > 1 else np.zeros((d, d)), m)
    mean = real.mean(0).astype(np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        x = mean + rng.standard_normal((min(chunk, n - s), d), dtype=np.float32) @ root.T
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def mixture_like(real: np.ndarray, n: int, seed: int = 0, per_cluster: int = 5, chunk: int = 100_000):
    """Yield float32 chunks of `n` unit vectors from a Gaussian mixture fitted to the `real` embeddings:
    k-means centres (one per `per_cluster` real vectors, weighted by their cluster sizes) and the pooled
    within-cluster covariance, renormalised."""
    import faiss

    real = np.ascontiguousarray(real, np.float32)
    m, d = real.shape
    k = max(1, m // per_cluster)
    km = faiss.Kmeans(d, k, niter=20, seed=seed, verbose=False, min_points_per_centroid=1)  # few points per centre, on purpose
    km.train(real)
    _, assign = km.index.search(real, 1)
    assign = assign[:, 0]
    residual = (real - km.centroids[assign]).astype(np.float64)
    root = _shrunk_root(residual.T @ residual / max(1, m - k), m)
    weights = np.bincount(assign, minlength=k) / m
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        c = rng.choice(k, size=min(chunk, n - s), p=weights)
        x = km.centroids[c] + rng.standard_normal((len(c), d), dtype=np.float32) @ root.T
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


DISTRIBUTIONS = {"mixture": mixture_like, "gaussian": gaussian_like}


def simulated_collection(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n, d) unit vectors resembling `real` (see gaussian_like), in memory: for small tests."""
    return np.concatenate(list(gaussian_like(real, n, seed))) if n else np.zeros((0, real.shape[1]), np.float32)


def simulate(real: np.ndarray, n: int, path: Path, distribution: str = "mixture", seed: int | None = None) -> np.ndarray:
    """`n` vectors drawn like `real` (`distribution`: "mixture" or "gaussian"), written into a memory-mapped
    .npy at `path` (float32, or float16 above FLOAT16_ABOVE vectors) and returned as that (read-only) map."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    dtype = np.float16 if n > FLOAT16_ABOVE else np.float32
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, real.shape[1]))
    s = 0
    for chunk in DISTRIBUTIONS[distribution](real, n, seed=n if seed is None else seed):
        out[s:s + len(chunk)] = chunk
        s += len(chunk)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")
