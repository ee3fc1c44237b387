"""The reranker's scoring arithmetic, pure (arrays in, arrays out; no model, no I/O):

* `fuse` combines the dual similarity with the match score, `rerank_topk` reorders one top-k list and
  `reranked_matrix` applies per-row reranks to a similarity matrix for Recall@K (ranks beyond K keep the
  dual order);
* `hub_prior` is the hubness correction of a candidate's similarity, `exemplar_expansion` the text -> image
  exemplar query;
* `pack_keys` / `unpack_keys` store a bank of unit vectors as int8 with per-row scales.
"""
from __future__ import annotations

import numpy as np


def hub_prior(vectors, bank, tau: float, chunk: int = 1024, bank_chunk: int = 4096) -> np.ndarray:
    """(N, D) unit vectors, (M, D) bank of unit vectors of the other modality (float32, or float16 as
    stored: converted a slice at a time) -> (N,) float64 tau * log sum_j exp(v . bank_j / tau).

    A candidate that is close to many of the bank's queries (a "hub") gets a large prior; subtracting it from
    the dual similarity turns the score into tau * log softmax over the bank and the query, the inverted
    softmax of Smith et al. (2017) / querybank normalisation of Bogolin et al. (2022), at the dual encoder's
    own temperature. Hubs otherwise win top ranks for queries they do not match."""
    v = np.asarray(vectors, np.float32)
    b = np.asarray(bank)
    if v.ndim != 2 or b.ndim != 2 or v.shape[1] != b.shape[1]:
        raise ValueError(f"vectors {tuple(v.shape)} and bank {tuple(b.shape)} must be 2-D with equal widths")
    out = []
    for s in range(0, len(v), chunk):
        lse = np.full(len(v[s:s + chunk]), -np.inf)
        for t in range(0, len(b), bank_chunk):  # a running log-sum-exp over slices of the bank
            part = v[s:s + chunk] @ np.asarray(b[t:t + bank_chunk], np.float32).T / np.float32(tau)
            lse = np.logaddexp(lse, _logsumexp(part))
        out.append(lse * tau)
    return np.concatenate(out) if out else np.zeros(0)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """(N, M) -> (N,) float64 log sum_j exp(x_ij), stable."""
    top = x.max(axis=1, keepdims=True)
    return (np.log(np.exp(x - top).sum(axis=1, dtype=np.float64)) + top[:, 0]).astype(np.float64)


def exemplar_expansion(queries, keys, values, value_of=None, m: int = 5, tau: float = 0.01,
                       chunk: int = 1024, key_scale=None, key_chunk: int | None = None) -> np.ndarray:
    """(Q, E) unit query sentence vectors, a bank of (M, E) unit keys, (N, D) values and value_of (M,): the
    value row of each key (None: row j for key j) -> (Q, D) unit vectors, the softmax(key similarity / tau)-
    weighted mean of the values of each query's m nearest keys.

    `key_scale` (M,): the keys are int8 rows (as stored) whose unit vectors are keys[j] * key_scale[j]; they
    are converted a slice at a time (a 30k-caption bank: 12 MB resident instead of 46). Values may be float16.
    `key_chunk`: keys per slice; by default a slice is about 1 MB as float32, small enough to stay in cache
    (one query against 30,000 768-wide keys took about 5 ms instead of 9-12 with 8,192-key slices).

    With train captions as keys and their photos' dual vectors as values, this turns a text query into the
    photos of the captions most like it (exemplar query expansion); a candidate photo close to those gains
    in the fused score (engine.reranking). A small tau makes it nearly the nearest caption's photo."""
    q = np.asarray(queries, np.float32)
    k = np.asarray(keys)
    val = np.asarray(values)
    of = np.arange(len(k)) if value_of is None else np.asarray(value_of, np.int64)
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1] or val.ndim != 2 or of.shape != (len(k),):
        raise ValueError(f"queries {tuple(q.shape)}, keys {tuple(k.shape)}, values {tuple(val.shape)} and "
                         f"value_of {tuple(of.shape)}: need (Q, E), (M, E), (N, D) and (M,)")
    if len(k) and (int(of.min()) < 0 or int(of.max()) >= len(val)):
        raise ValueError(f"value_of points outside the {len(val)} values")
    scale = None if key_scale is None else np.asarray(key_scale, np.float32)
    key_chunk = key_chunk or max(64, (1 << 20) // (4 * max(1, k.shape[1])))
    m = max(1, min(int(m), len(k)))
    out = []
    for s in range(0, len(q), chunk):
        parts = []
        for t in range(0, len(k), key_chunk):
            part = q[s:s + chunk] @ np.asarray(k[t:t + key_chunk], np.float32).T  # (q, slice)
            parts.append(part if scale is None else part * scale[t:t + key_chunk])
        sim = np.concatenate(parts, axis=1)  # (q, M)
        idx = np.argpartition(-sim, m - 1, axis=1)[:, :m] if m < len(k) else np.broadcast_to(np.arange(m), sim.shape)
        top = np.take_along_axis(sim, idx, axis=1)  # (q, m) similarities of the m nearest keys
        w = np.exp((top - top.max(axis=1, keepdims=True)) / np.float32(tau))
        w /= w.sum(axis=1, keepdims=True)  # (q, m) softmax(top / tau)
        e = np.einsum("qm,qmd->qd", w, val[of[idx]].astype(np.float32))  # (q, D)
        out.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, val.shape[1]), np.float32)


def fuse(dual_scores, itm_logits, alpha: float) -> np.ndarray:
    """dual + alpha * itm, elementwise (alpha = 0: the dual order)."""
    return np.asarray(dual_scores, np.float64) + float(alpha) * np.asarray(itm_logits, np.float64)


def rerank_topk(ids, dual_scores, itm_scores, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One top-k list -> (ids, fused scores), best first; ties keep the input (dual) order."""
    ids = np.asarray(ids)
    fused = fuse(dual_scores, itm_scores, alpha)
    if ids.shape != fused.shape:
        raise ValueError(f"ids {ids.shape} and scores {fused.shape} differ in shape")
    order = np.argsort(-fused, kind="stable")
    return ids[order], fused[order]


def reranked_matrix(sim: np.ndarray, top: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """sim (R, C); top (R, K) column ids of each row's top K; fused (R, K) their new scores.
    -> float64 copy of sim where each row's top K rank above all other columns, ordered by fused."""
    out = np.array(sim, dtype=np.float64)
    if top.shape[1] == 0:
        return out
    rows = np.arange(len(out))[:, None]
    fused = np.asarray(fused, np.float64)
    # shift so the smallest fused score sits 1 above the row maximum: order within top K = fused order
    shifted = fused - fused.min(1, keepdims=True) + out.max(1, keepdims=True) + 1.0
    out[rows, top] = shifted
    return out


def pack_keys(keys) -> tuple[np.ndarray, np.ndarray]:
    """(M, E) float unit vectors -> int8 (M, E) and float32 (M,) per-row scales (a quarter of float32; the
    cosines move by about 1e-3)."""
    k = np.asarray(keys, np.float32)
    scale = np.maximum(np.abs(k).max(axis=1), 1e-12) / np.float32(127.0)
    return np.round(k / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def key_norms(q) -> np.ndarray:
    """(M,) float32 1 / |row| of pack_keys' int8 rows: q[j] * key_norms(q)[j] is unpack_keys' row j (the
    per-row scales cancel), for exemplar_expansion's key_scale."""
    q = np.asarray(q)
    parts = [np.sqrt(np.square(np.asarray(q[s:s + 8192], np.float32)).sum(1)) for s in range(0, len(q), 8192)]
    n = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return (1.0 / np.maximum(n, 1e-12)).astype(np.float32)


def unpack_keys(q, scale) -> np.ndarray:
    """pack_keys' output (arrays, or the tensors a checkpoint holds) -> (M, E) float32 unit vectors."""
    k = np.asarray(q, np.float32) * np.asarray(scale, np.float32)[:, None]
    return k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
