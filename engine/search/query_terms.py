"""Query algebra, pure: a query string -> weighted terms, and weighted term vectors -> one query vector.

Syntax (parse_query):

* words with no operator are one term: `a dog running`;
* ` -words` pushes a term away, ` +words` adds one; an operator takes the words after it up to the next
  operator (`a dog - a cat`), or one "quoted phrase" (`-"green grass" running`: running is positive again);
  a lone `-` or `+` binds to what follows it;
* `N:` weights a term (`2:sunset`, `-0.5:night`, `+3:"red car"`); N is a number in (0, 100];
* a hyphen inside a word is not an operator (`t-shirt`, `x-ray`), nor is a colon in `10:30`.

`beach + 2:sunset - people` -> beach (1), sunset (2), people (-1). Excluded terms weigh -1 unless weighted.

combine(): the weighted sum of unit vectors, renormalised. What a search does with the terms is in
engine/search/engine.py (search_text): retrieval uses the combined vector; the reranker scores the
positive terms only (negative terms act through the first-stage retrieval and the fused score's cosine).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MAX_WEIGHT = 100.0
_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(?=[^\d\s:])")  # `2:` before a word or quote, not `10:30`


class QueryParseError(ValueError):
    """A query string the algebra cannot use; the message names the offending part and what to write."""


@dataclass(frozen=True)
class QueryTerm:
    """One term of a query: its words and weight (negative: pushed away)."""

    text: str
    weight: float = 1.0

    def to_json(self) -> dict:
        return {"text": self.text, "weight": self.weight}


@dataclass(frozen=True)
class ParsedQuery:
    """A query as weighted terms, in the order written."""

    terms: tuple[QueryTerm, ...]

    @property
    def positive(self) -> tuple[QueryTerm, ...]:
        return tuple(t for t in self.terms if t.weight > 0)

    @property
    def negative(self) -> tuple[QueryTerm, ...]:
        return tuple(t for t in self.terms if t.weight < 0)

    @property
    def simple(self) -> bool:
        """One positive term of weight 1: search it as plain text."""
        return len(self.terms) == 1 and self.terms[0].weight == 1.0

    @property
    def positive_text(self) -> str:
        """The positive terms' words joined: what the reranker reads."""
        return " ".join(t.text for t in self.positive)

    def describe(self) -> str:
        """For people: `dog, without grass`; `beach, sunset (x2), without people`."""
        def one(t: QueryTerm) -> str:
            w = abs(t.weight)
            return t.text if w == 1.0 else f"{t.text} (x{w:g})"

        pos = ", ".join(one(t) for t in self.positive)
        neg = ", ".join(one(t) for t in self.negative)
        return ", ".join(part for part in (pos, f"without {neg}" if neg else "") if part)

    def to_json(self) -> dict:
        return {"terms": [t.to_json() for t in self.terms], "text": self.describe()}


def _tokens(query: str) -> list[str]:
    """Whitespace-separated tokens; a quoted phrase (with any operator and weight before it) is one token;
    an unclosed quote runs to the end."""
    out, i, n = [], 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        j = i
        while j < n and not query[j].isspace() and query[j] != '"':
            j += 1
        if j < n and query[j] == '"':
            end = query.find('"', j + 1)
            j = n if end < 0 else end + 1
            while j < n and not query[j].isspace():  # `"red car"s` stays one token
                j += 1
        out.append(query[i:j])
        i = j
    return out


def _weight(text: str, token: str) -> float:
    try:
        w = float(text)
    except ValueError:  # pragma: no cover - the pattern only lets numbers through
        raise QueryParseError(f"bad weight in {token!r}") from None
    if not 0 < w <= MAX_WEIGHT:
        raise QueryParseError(f"the weight in {token!r} must be above 0 and at most {MAX_WEIGHT:g} "
                              f"(use -term to push a term away)")
    return w


def parse_query(query: str, need_positive: bool = True) -> ParsedQuery:
    """The query's weighted terms (see the module docstring). Raises QueryParseError when there are no
    words, or (need_positive) when nothing positive is left to search for: only exclusions. Words added to
    a query photo need no positive term (the photo is one)."""
    terms: list[QueryTerm] = []
    words: list[str] = []
    weight = 1.0
    closed = True  # the last term ended with a quoted phrase: the next plain word starts a new term

    def flush():
        nonlocal words
        if words:
            terms.append(QueryTerm(" ".join(words), weight))
        words = []

    pending = None  # a lone + or - waiting for its words
    for token in _tokens(query):
        if token in ("+", "-"):
            pending = token
            continue
        sign, body = pending, token
        pending = None
        if body[0] in "+-" and len(body) > 1:
            sign, body = body[0], body[1:]
        m = _WEIGHT.match(body)
        factor = None
        if m:
            factor, body = _weight(m.group(1), token), body[m.end():]
        quoted = body.startswith('"')
        text = " ".join(body.strip('"').split()) if quoted else body
        if sign is not None or factor is not None or (closed and terms and not words):
            flush()  # an operator or a weight starts a new term
            weight = (factor or 1.0) * (-1.0 if sign == "-" else 1.0)
        if text:
            words.append(text)
        closed = quoted and (sign is not None or factor is not None)
        if closed:
            flush()
    flush()
    parsed = ParsedQuery(tuple(terms))
    if not parsed.positive:
        if parsed.negative and not need_positive:
            return parsed
        if parsed.negative:
            excluded = ", ".join(t.text for t in parsed.negative)
            raise QueryParseError(f"the query {query!r} only excludes ({excluded}); add something to look for, "
                                  f"e.g. `a photo -{parsed.negative[0].text}`")
        raise QueryParseError("empty query: give some words to search for")
    return parsed


def combine(vectors: np.ndarray, weights) -> np.ndarray:
    """The weighted sum of the rows of `vectors`, each first made unit length, renormalised -> (dim,) float32.
    Raises ValueError when the terms cancel out (a zero sum)."""
    v = np.asarray(vectors, np.float64)
    w = np.asarray(weights, np.float64)
    if v.ndim != 2 or len(v) != len(w) or len(v) == 0:
        raise ValueError(f"need one weight per vector, got {v.shape} vectors and {w.shape} weights")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    total = (w[:, None] * v / np.where(norms > 0, norms, 1.0)).sum(0)
    length = np.linalg.norm(total)
    if not np.isfinite(length) or length < 1e-6:
        raise ValueError("the query's terms cancel out; weight the terms differently")
    return (total / length).astype(np.float32)
