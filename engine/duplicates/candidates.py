"""Candidate duplicate pairs from a k-nearest-neighbour graph over stored vectors, pure: no files, no store.

Every vector is a query in fixed-size batches against the library's own FAISS index (any type, searched with
its tuned parameters), so memory holds one batch of vectors and its neighbours, never the collection. Pairs
(a < b) whose cosine reaches `min_similarity` are kept, each once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

DEFAULT_K = 10  # neighbours per photo: a photo with more near copies than this still joins them through the chain
DEFAULT_MIN_SIMILARITY = 0.60  # lite image-image cosine: a copy resized to 60% can score 0.68 (benchmarks/duplicates.json)


@dataclass(frozen=True)
class CandidatePairs:
    """Pairs of store ids, a[i] < b[i], and their cosine."""

    a: np.ndarray
    b: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def candidate_pairs(pages: Iterable[tuple[np.ndarray, np.ndarray]],
                    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                    k: int = DEFAULT_K, min_similarity: float = DEFAULT_MIN_SIMILARITY) -> CandidatePairs:
    """pages: (ids, (n, dim) vectors) batches covering the collection; search(queries, k) -> (scores, ids)
    of an index over the same ids (-1: no neighbour). Returns each pair with cosine >= min_similarity once."""
    keys, sims = [], []
    for ids, vectors in pages:
        if not len(ids):
            continue
        scores, found = search(np.ascontiguousarray(vectors, np.float32), k + 1)  # +1: a photo finds itself
        q = np.repeat(np.asarray(ids, np.int64), found.shape[1])
        f = found.reshape(-1).astype(np.int64)
        s = scores.reshape(-1)
        ok = (f >= 0) & (f != q) & (s >= min_similarity) & np.isfinite(s)
        lo, hi = np.minimum(q[ok], f[ok]), np.maximum(q[ok], f[ok])
        keys.append(np.stack([lo, hi], 1))
        sims.append(s[ok].astype(np.float32))
    if not keys:
        empty = np.zeros(0, np.int64)
        return CandidatePairs(empty, empty, np.zeros(0, np.float32))
    pairs, sim = np.concatenate(keys), np.concatenate(sims)
    pairs, first = np.unique(pairs, axis=0, return_index=True)  # (a, b) found from both ends: keep one
    return CandidatePairs(pairs[:, 0], pairs[:, 1], sim[first])
