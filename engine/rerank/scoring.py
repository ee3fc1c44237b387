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
import torch


def hub_prior(vectors, bank, tau: float, chunk: int = 1024) -> np.ndarray:
    """(N, D) unit vectors, (M, D) bank of unit vectors of the other modality -> (N,) float64
    tau * log sum_j exp(v . bank_j / tau).

    A candidate that is close to many of the bank's queries (a "hub") gets a large prior; subtracting it from
    the dual similarity turns the score into tau * log softmax over the bank and the query, the inverted
    softmax of Smith et al. (2017) / querybank normalisation of Bogolin et al. (2022), at the dual encoder's
    own temperature. Hubs otherwise win top ranks for queries they do not match."""
    v = torch.as_tensor(np.asarray(vectors, np.float32))
    b = torch.as_tensor(np.asarray(bank, np.float32))
    if v.ndim != 2 or b.ndim != 2 or v.shape[1] != b.shape[1]:
        raise ValueError(f"vectors {tuple(v.shape)} and bank {tuple(b.shape)} must be 2-D with equal widths")
    out = [torch.logsumexp(v[s:s + chunk] @ b.T / tau, dim=1).double() * tau for s in range(0, len(v), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def exemplar_expansion(queries, keys, values, value_of=None, m: int = 5, tau: float = 0.01,
                       chunk: int = 1024) -> np.ndarray:
    """(Q, E) unit query sentence vectors, a bank of (M, E) unit keys, (N, D) values and value_of (M,): the
    value row of each key (None: row j for key j) -> (Q, D) unit vectors, the softmax(key similarity / tau)-
    weighted mean of the values of each query's m nearest keys.

    With train captions as keys and their photos' dual vectors as values, this turns a text query into the
    photos of the captions most like it (exemplar query expansion); a candidate photo close to those gains
    in the fused score (engine.reranking). A small tau makes it nearly the nearest caption's photo."""
    q = torch.as_tensor(np.asarray(queries, np.float32))
    k = torch.as_tensor(np.asarray(keys, np.float32))
    val = torch.as_tensor(np.asarray(values, np.float32))
    of = torch.arange(len(k)) if value_of is None else torch.as_tensor(np.asarray(value_of, np.int64))
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1] or val.ndim != 2 or of.shape != (len(k),):
        raise ValueError(f"queries {tuple(q.shape)}, keys {tuple(k.shape)}, values {tuple(val.shape)} and "
                         f"value_of {tuple(of.shape)}: need (Q, E), (M, E), (N, D) and (M,)")
    if len(k) and (int(of.min()) < 0 or int(of.max()) >= len(val)):
        raise ValueError(f"value_of points outside the {len(val)} values")
    m = max(1, min(int(m), len(k)))
    out = []
    for s in range(0, len(q), chunk):
        top, idx = (q[s:s + chunk] @ k.T).topk(m, dim=1)  # (q, m) similarities and key ids
        w = torch.softmax(top / tau, dim=1)  # (q, m)
        out.append(torch.nn.functional.normalize(torch.einsum("qm,qmd->qd", w, val[of[idx]]), dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, val.shape[1]), np.float32)


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


def pack_keys(keys) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, E) float unit vectors -> int8 (M, E) and float32 (M,) per-row scales (a quarter of float32; the
    cosines move by about 1e-3)."""
    k = torch.as_tensor(np.asarray(keys, np.float32))
    scale = k.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(k / scale[:, None]).to(torch.int8), scale


def unpack_keys(q: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """pack_keys' output -> (M, E) float32 unit vectors."""
    k = q.float() * scale.float()[:, None]
    return torch.nn.functional.normalize(k, dim=1).numpy()
