"""When a library outgrows its index type, and how to tune the new one (autofaiss-style).

`needs_rebuild` is a pure decision on (current factory, vector count, dim); `tune_search_params` raises
`nprobe` (IVF) or `efSearch` (HNSW) until recall@k against exact search, on held-out queries drawn from
the collection's own vectors, reaches the target.
"""
from __future__ import annotations

import logging
import re
from typing import Callable

import faiss
import numpy as np

from xmodal.indexer.storage.index_choice import choose_index

logger = logging.getLogger(__name__)

TIERS = ("Flat", "HNSW", "IVF", "OPQ")

#: Generic descriptions: text queries sit farther from image vectors than images from each other, so an
#: index tuned on image self-queries alone under-searches for text queries. Tuning uses both.
TUNING_QUERIES = [
    f"{a} {b}" for a in ("a photo of", "a close-up of", "a group of", "a blurry picture of")
    for b in ("a dog running on the grass", "children playing in the water", "a man riding a bike",
              "people in the snow", "a city street at night", "a birthday party", "a plate of food",
              "a cat sleeping on a sofa", "mountains and a lake", "a beach at sunset", "a car on the road",
              "a woman smiling", "an old building", "flowers in a garden", "a football match", "a baby")
]
#: nprobe / efSearch candidates, in steps of about 1.5x so the cheapest sufficient value is not overshot 2x
STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: the tuning queries are a sample: aim this much above the target so that other queries still reach it
#: (at 1M clustered vectors, nprobe tuned to exactly 0.95 gave 0.936 on held-out text queries)
REFINE_STEPS = (2, 4, 8, 16)  # shortlist sizes (x k) tried when compressed codes alone fall short
PLATEAU = 0.005  # recall gained over three more grid steps below which probing further is not worth it
MARGIN = 0.01
#: An IVF index whose coarse quantizer is an HNSW graph (IVF..._HNSW32) finds its nprobe lists with that
#: graph; searched with a candidate list of only nprobe it misses some of the nearest lists, which caps recall
#: (1M clustered vectors, IVF2048_HNSW32 + PQ: 0.994 at any nprobe, 0.999 with a list of 2 x nprobe).
QUANTIZER_EF_FACTOR = 2
QUANTIZER_EF_MIN = 64
REBUILD_GROWTH = 4  # an IVF index is rebuilt when the right nlist has grown this many times


def tier(factory: str) -> int:
    """0 Flat, 1 HNSW, 2 IVF, 3 OPQ/PQ: how far along the exact -> compressed scale a factory string is."""
    if factory.startswith("OPQ") or ",PQ" in factory:
        return 3
    if factory.startswith("IVF"):
        return 2
    if factory.startswith("HNSW"):
        return 1
    return 0


def _nlist(factory: str) -> int | None:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def needs_rebuild(current: str, n_vectors: int, dim: int, memory_budget_bytes: int | None = None) -> str | None:
    """The factory to rebuild into, or None when `current` still suits `n_vectors` vectors. Never moves
    down a tier (a library that shrinks keeps its index until `xmodal reindex --index-type`)."""
    best = choose_index(n_vectors, dim, memory_budget_bytes)
    if tier(best) > tier(current):
        return best
    if tier(best) == tier(current) and _nlist(current) and _nlist(best):
        if _nlist(best) >= REBUILD_GROWTH * _nlist(current):
            return best
    return None


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k ids found, per query ((q, k) id arrays)."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def tune_search_params(index, vectors: np.ndarray, k: int = 10, target: float = 0.95, n_queries: int = 200,
                       seed: int = 0, queries: np.ndarray | None = None,
                       exact_search: Callable[[np.ndarray, int], np.ndarray] | None = None) -> dict:
    """Set the cheapest nprobe / efSearch reaching `target` + MARGIN recall@k on queries sampled from `vectors` (the
    collection itself, in the index's insertion order) plus `queries` (e.g. text embeddings of
    TUNING_QUERIES); returns {"params": {...}, "recall_at_k": r}. A Flat index needs nothing.

    `exact_search(queries, k)` -> (nq, k) positions in `vectors` of the true neighbours; by default a FAISS
    Flat over `vectors` (a caller whose vectors do not fit in memory as float32 streams them instead)."""
    kind = tier(index.factory)
    n = len(vectors)
    if kind == 0 or n == 0:
        return {"params": {}, "recall_at_k": 1.0, "reached": True}
    rng = np.random.default_rng(seed)
    sample = np.asarray(vectors[np.sort(rng.choice(n, size=min(n_queries, n), replace=False))], np.float32)
    queries = sample if queries is None or not len(queries) else np.concatenate([sample, queries]).astype(np.float32)
    kk = min(k, n)
    if exact_search is None:
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(vectors)
        _, truth_pos = exact.search(queries, kk)
    else:
        truth_pos = exact_search(queries, kk)
    all_ids = index.ids()  # positions -> the ids the index holds, in insertion order
    truth = all_ids[truth_pos]
    if kind == 1:
        name, values = "efSearch", list(STEPS[STEPS.index(16):])
    else:
        nlist = _nlist(index.factory) or 1
        name, values = "nprobe", [v for v in STEPS if v <= nlist] or [nlist]
    if kind == 3:
        index.set_search_params(refine=1)  # codes alone first

    def probe(value: int) -> dict:
        """The search parameters for one grid value: nprobe with its quantizer's list size where it has one."""
        if name == "nprobe" and "_HNSW" in index.factory:
            return {name: value, "quantizer_efSearch": max(QUANTIZER_EF_MIN, QUANTIZER_EF_FACTOR * value)}
        return {name: value}

    def grid() -> list[tuple[int, float]]:
        tried: list[tuple[int, float]] = []
        for value in values:
            index.set_search_params(**probe(value))
            _, found = index.search(queries, kk)
            recall = min(recall_at_k(found[:len(sample)], truth[:len(sample)]),  # each query family must reach it
                         recall_at_k(found[len(sample):], truth[len(sample):]) if len(queries) > len(sample) else 1.0)
            tried.append((value, recall))
            if recall >= target + MARGIN:
                break
            if len(tried) >= 4 and recall - tried[-4][1] < PLATEAU:  # compressed codes: more probes stop helping
                break
        return tried

    params: dict = {}
    tried = grid()
    if tried[-1][1] < target + MARGIN and kind == 3 and getattr(index, "rescore", None) is not None:
        # Compressed codes cap recall: shortlist k * refine candidates and rank them by their exact vectors
        for refine in REFINE_STEPS:
            index.set_search_params(refine=refine)
            tried = grid()
            if tried[-1][1] >= target + MARGIN:
                break
        params["refine"] = refine
    value, recall = tried[-1]
    reached = recall >= target + MARGIN
    if not reached:  # the cheapest setting within PLATEAU of the best this index can do
        best = max(r for _, r in tried)
        value, recall = next((v, r) for v, r in tried if r >= best - PLATEAU)
        logger.warning("%s cannot reach recall@%d %.2f on this collection (best %.3f); using %s=%d",
                       index.factory, kk, target, best, name, value)
        index.set_search_params(**probe(value))
    params.update(probe(value))
    logger.info("%s: %s gives recall@%d %.3f", index.factory, params, kk, recall)
    return {"params": params, "recall_at_k": round(recall, 4), "reached": reached}
