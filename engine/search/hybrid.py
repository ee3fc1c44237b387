"""One ranking from the dual encoder (+ reranker) and the keyword index, pure functions.

A photo's keyword strength is the share of the query's information its words hold: each query term
weighs its inverse document frequency (a word on every photo says nothing), and counts 1 when the photo
holds it as a word, 0.9 as the start of one ("zordre" in "zordrevik"), 0.8 when only inside a word, 0.7 when found only with a letter
or two misread (OCR; ``Store.keyword_matches``). The
fused score is the semantic rank scaled to (0, 1] over the n semantic candidates (1 - rank0 / n; ranks,
not scores, because a reranked head and its dual-encoder tail score on different scales; photos found by
their words alone count 0) plus ``weight * strength ** power``: with the defaults a photo holding every word of the query comes
first, while one holding a minor word of a long description moves up a little (calibrated on Flickr8k
dev: ``benchmarks/ocr.py``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

MODES = ("semantic", "keyword", "hybrid")
WEIGHT = 2.5
POWER = 2.0


@dataclass(frozen=True)
class Fused:
    id: int
    score: float
    semantic: float | None  # the semantic score, None for a photo found by its words alone
    keyword: float  # the keyword strength in [0, 1]


def term_weights(total: int, matches: Sequence[dict[int, float]], counts: Sequence[int] | None = None) -> list[float]:
    """Each term's weight: its smoothed inverse document frequency over `total` photos with words (`counts`:
    how many photos hold each term, when more than `matches` lists)."""
    counts = [len(m) for m in matches] if counts is None else counts
    return [math.log(1.0 + (total + 1) / (max(c, len(m)) + 0.5)) for m, c in zip(matches, counts)]


def keyword_strength(total: int, matches: Sequence[dict[int, float]],
                     counts: Sequence[int] | None = None) -> dict[int, float]:
    """{photo id: strength in [0, 1]} for every photo holding at least one term."""
    weights = term_weights(total, matches, counts)
    whole = sum(weights)
    if not whole:
        return {}
    strength: dict[int, float] = {}
    for w, found in zip(weights, matches):
        for image_id, how in found.items():
            strength[image_id] = strength.get(image_id, 0.0) + w * how
    return {i: min(1.0, s / whole) for i, s in strength.items()}


def fuse(semantic: Sequence[tuple[int, float]], strength: dict[int, float], mode: str = "hybrid",
         weight: float = WEIGHT, power: float = POWER) -> list[Fused]:
    """`semantic`: (id, score) best first; `strength`: {id: keyword strength}. Returns every candidate, best
    first. "semantic" keeps the semantic order; "keyword" orders by strength (semantic order breaking
    ties) and keeps only photos with words matched; "hybrid" adds the two as the module says."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    scores = {i: s for i, s in semantic}
    if mode == "semantic":
        return [Fused(i, s, s, strength.get(i, 0.0)) for i, s in semantic]
    order = {i: n for n, (i, _) in enumerate(semantic)}
    if mode == "keyword":
        found = sorted(strength, key=lambda i: (-strength[i], order.get(i, len(order)), i))
        return [Fused(i, strength[i], scores.get(i), strength[i]) for i in found]
    n = len(semantic)
    fused = []
    for i in set(scores) | set(strength):
        scaled = 1.0 - order[i] / n if i in order else 0.0
        kw = strength.get(i, 0.0)
        fused.append(Fused(i, scaled + weight * kw ** power, scores.get(i), kw))
    fused.sort(key=lambda f: (-f.score, order.get(f.id, len(order)), f.id))
    return fused
