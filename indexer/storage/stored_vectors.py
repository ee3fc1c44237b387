"""The vectors a library's store holds, read page by page: what an index rebuild trains on, adds and tunes
against without ever holding the whole collection in memory (10M x 512 float32 would be 20 GB).

`StoredVectors` looks enough like an (n, dim) array for index_tuning.tune_search_params (len, shape, rows by
position) and adds `pages()` and `exact_search()`, a FAISS Flat streamed over the pages.
"""
from __future__ import annotations

from typing import Iterator

import faiss
import numpy as np

PAGE = 100_000  # rows per page: 200 MB of float32 at 512 dimensions


class StoredVectors:
    """The vectors of rows `ids` (ascending store ids that hold one) of `modality`, position i = ids[i]."""

    def __init__(self, store, modality: str, ids: np.ndarray, dim: int, page: int = PAGE):
        self.store, self.modality, self.ids, self.dim, self.page = store, modality, np.asarray(ids, np.int64), dim, page

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ids), self.dim)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 in the order of `ids`; a row that lost its vector meanwhile is an error."""
        got = self.store.get_vectors(self.modality, [int(i) for i in ids], self.dim)
        missing = [int(i) for i in ids if int(i) not in got]
        if missing:
            raise KeyError(f"{self.modality} rows {missing[:5]} have no vector any more")
        return np.stack([got[int(i)] for i in ids]).astype(np.float32) if len(ids) else np.zeros((0, self.dim), np.float32)

    def __getitem__(self, positions) -> np.ndarray:
        return self.rows(self.ids[np.asarray(positions)])

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to `n` rows chosen at random (without replacement): an index's training set."""
        if n >= len(self.ids):
            return self.rows(self.ids)
        pick = np.sort(np.random.default_rng(seed).choice(len(self.ids), size=n, replace=False))
        return self[pick]

    def pages(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, (len, dim) float32 vectors) page by page, in position order."""
        for s in range(0, len(self.ids), self.page):
            part = self.ids[s:s + self.page]
            yield part, self.rows(part)

    def exact_search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(nq, k) positions of the true top-k by inner product: a Flat index per page, results merged."""
        queries = np.ascontiguousarray(queries, np.float32)
        best_d = np.full((len(queries), k), -np.inf, np.float32)
        best_i = np.full((len(queries), k), -1, np.int64)
        start = 0
        for part, vectors in self.pages():
            flat = faiss.IndexFlatIP(self.dim)
            flat.add(vectors)
            d, i = flat.search(queries, min(k, len(part)))
            best_d, best_i = merge_top_k(best_d, best_i, d, np.where(i >= 0, i + start, -1))
            start += len(part)
        return best_i


def merge_top_k(best_d: np.ndarray, best_i: np.ndarray, d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (nq, *) top lists by score -> the (nq, k) best of both, k = best_d's width (a pure function)."""
    dd, ii = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
    order = np.argsort(-dd, axis=1, kind="stable")[:, :best_d.shape[1]]
    return np.take_along_axis(dd, order, 1), np.take_along_axis(ii, order, 1)
