"""Calibrated match probabilities for text -> image hits, and how good they are. Pure functions over numbers.

A hit's `prob` is P(this photo is one the query describes), from a logistic model over what a search knows
about the hit anyway:

* reranked hits (the bundled lite reranker): the dual cosine, the hubness prior, the reranker's match score,
  optionally how far the hit's cosine and match fall behind the best candidate's (`sim_gap`, `match_gap`), or
  how far they lead the best *other* candidate's (`lead`, `match_lead`: for the top hit, its margin over the
  second; a photo the query singles out stands out, an out-of-domain query's best hit rarely does);
* other hits (no reranker, beyond the reranked K, or another reranker such as BLIP): the cosine (and its gap
  or lead).

Each model names its features; the shipped one uses absolute scores only (ABSOLUTE): with the gaps or leads,
every query's best candidate looks alike, so out-of-domain queries cannot be told apart (benchmarks/RESULTS.md).

The exemplar term is left out on purpose: it draws on the Flickr8k train captions (and `--no-exemplar`
changes it). The coefficients are fitted by `benchmarks/calibration.py` on held-out captions (one half of
Flickr8k dev: fitted on train, where the models were trained, they were over-confident on new captions;
measured on the other half) and ship as `data/lite-calibration.json`, keyed to the SHA-256
of the checkpoints they were fitted with: a library built with another model (or other weights) gets no
`prob` rather than a wrong one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from xmodal.indexer.records import SearchHit
from xmodal.indexer.resources import data_file

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "lite-calibration.json"
FEATURES = {"reranked": ("similarity", "hubness", "match", "sim_gap", "match_gap"), "dual": ("similarity", "sim_gap")}
#: the same without the gaps to the best candidate: absolute scores only (benchmarks/calibration.py compares all)
ABSOLUTE = {"reranked": ("similarity", "hubness", "match"), "dual": ("similarity",)}
#: absolute scores and each hit's lead over the best other candidate
LEAD = {"reranked": ("similarity", "hubness", "match", "lead", "match_lead"), "dual": ("similarity", "lead")}


@dataclass(frozen=True)
class Logistic:
    """p = sigmoid(intercept + coef . (x - mean) / scale), over the named features."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return sigmoid(z @ np.asarray(self.coef) + self.intercept)

    def to_json(self) -> dict:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept,
                "mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_json(cls, d: dict) -> "Logistic":
        return cls(tuple(d["features"]), tuple(map(float, d["coef"])), float(d["intercept"]),
                   tuple(map(float, d["mean"])), tuple(map(float, d["scale"])))


@dataclass(frozen=True)
class Calibration:
    """The two models and the default `--cutoff` threshold chosen on dev."""

    reranked: Logistic
    dual: Logistic
    default_cutoff: float


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def fit_logistic(x: np.ndarray, y: np.ndarray, features: Sequence[str], l2: float = 1e-3,
                 iterations: int = 50) -> Logistic:
    """Maximum-likelihood logistic regression (Newton's method, a small L2 penalty on the coefficients) on
    standardised features. x: (n, f); y: (n,) 0/1."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if len(x) == 0 or y.min() == y.max():
        raise ValueError("fitting a calibration needs both matching and non-matching examples")
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2 * len(x))
    penalty[-1] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = sigmoid(z @ w)
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Logistic(tuple(features), tuple(float(v) for v in w[:-1]), float(w[-1]),
                    tuple(float(v) for v in mean), tuple(float(v) for v in scale))


def reliability_bins(prob: np.ndarray, label: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted probability: count, mean predicted probability and observed frequency of
    matches in each (empty bins included, with None for their means)."""
    prob, label = np.asarray(prob, np.float64), np.asarray(label, np.float64)
    which = np.minimum((prob * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                    "mean_prob": float(prob[sel].mean()) if n else None,
                    "frequency": float(label[sel].mean()) if n else None})
    return out


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted probability and observed frequency over the bins."""
    total = len(prob)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["mean_prob"] - b["frequency"])
                     for b in reliability_bins(prob, label, bins) if b["count"]))


def hit_features(hits: Sequence[SearchHit]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({feature name: (n,) values}, reranked mask (n,)) of one query's candidate hits, all of them (the gaps
    are to the best candidate: compute them before cutting the list to k)."""
    sims = np.array([h.similarity if h.similarity is not None else h.score for h in hits], np.float64)
    reranked = np.array([h.match is not None for h in hits], bool)
    match = np.array([h.match if h.match is not None else np.nan for h in hits], np.float64)
    hub = np.array([h.hubness or 0.0 for h in hits], np.float64)
    sim_gap = sims.max() - sims if len(hits) else sims
    match_gap = (np.nanmax(match) - match) if reranked.any() else np.zeros(len(hits))
    return {"similarity": sims, "hubness": hub, "match": np.nan_to_num(match), "sim_gap": sim_gap,
            "match_gap": np.nan_to_num(match_gap), "lead": lead_over_others(sims),
            "match_lead": np.where(reranked, lead_over_others(np.where(reranked, match, np.nan)), 0.0)}, reranked


def lead_over_others(values: np.ndarray) -> np.ndarray:
    """(n,) -> (n,): each value minus the largest of the others (NaN: not counted, and 0 out); 0 where there is
    no other."""
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    if finite.sum() < 2:
        return np.zeros(len(v))
    order = np.argsort(np.where(finite, v, -np.inf))[::-1]
    first, second = v[order[0]], v[order[1]]
    others_best = np.where(np.arange(len(v)) == order[0], second, first)
    return np.where(finite, v - others_best, 0.0)


def feature_matrix(table: dict[str, np.ndarray], features: Sequence[str]) -> np.ndarray:
    """The (n, len(features)) matrix of these features, in this order."""
    return np.column_stack([table[f] for f in features])


def with_probs(hits: Sequence[SearchHit], calibration: Calibration, reranked_ok: bool = True) -> list[SearchHit]:
    """The hits with `prob` set: the reranked model where a hit has the lite reranker's match score (and
    `reranked_ok`), the cosine model otherwise."""
    if not hits:
        return []
    table, reranked = hit_features(hits)
    p = calibration.dual.prob(feature_matrix(table, calibration.dual.features))
    if reranked_ok and reranked.any():
        p = np.where(reranked, calibration.reranked.prob(feature_matrix(table, calibration.reranked.features)), p)
    return [replace(h, prob=float(v)) for h, v in zip(hits, p)]


def file_sha256(path: str | os.PathLike) -> str:
    return _sha256(os.fspath(path), os.stat(path).st_size, os.stat(path).st_mtime_ns)


@lru_cache(maxsize=8)
def _sha256(path: str, _size: int, _mtime: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_calibration(model: str, checkpoints: dict[str, Path], path: Path | None = None) -> Calibration | None:
    """The shipped calibration for `model` when it was fitted with these very checkpoints ({name: path},
    compared by SHA-256), else None (logged): another model or other weights get no probability."""
    path = path or data_file(CALIBRATION_FILE)
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("model") != model:
            return None
        for name, want in doc["checkpoints"].items():
            have = checkpoints.get(name)
            if have is None or not Path(have).exists() or file_sha256(have) != want:
                logger.info("%s was fitted with another %s: hits get no probability", path, name)
                return None
        return Calibration(Logistic.from_json(doc["reranked"]), Logistic.from_json(doc["dual"]),
                           float(doc["default_cutoff"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("cannot read the calibration %s (%s): hits get no probability", path, e)
        return None
