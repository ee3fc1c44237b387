"""Text -> image search through the keyword index, alone or fused with the semantic ranking
(`SearchEngine.search_text(..., mode=...)`): the store's keyword matches, the fusion in `hybrid.py`, the
image filters, and each hit's `matched` (the fields whose words matched, as snippets, the words, and where
they are in each snippet)."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from xmodal.indexer.records import SearchHit
from xmodal.indexer.storage.words import find_words, query_terms, word_spans

from xmodal.engine.search.errors import SearchError
from xmodal.engine.search.filters import image_filter
from xmodal.engine.search.hybrid import MODES, fuse, keyword_strength

logger = logging.getLogger(__name__)
CANDIDATES = 50  # semantic candidates fused with the keyword matches (at least k)
FIELDS = ("ocr", "captions", "name", "meta")
SNIPPET = 80  # characters of a matched field shown around its first matched word


def check_mode(mode: str | None, target: str) -> str:
    """The mode to search in: None means hybrid (semantic alone for text targets, which have no keywords)."""
    if mode is not None and mode not in MODES:
        raise SearchError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if target != "images":
        if mode == "keyword":
            raise SearchError("keyword search finds photos only; drop --mode keyword for --target texts")
        return "semantic"
    return mode or "hybrid"


def snippet(text: str, word: str, width: int = SNIPPET) -> str:
    """`text` cut to about `width` characters around the first place `word` (folded) appears in it."""
    if len(text) <= width:
        return text
    at = max(0, text.casefold().find(word[: max(1, len(word))].casefold()))
    start = max(0, at - width // 3)
    end = min(len(text), start + width)
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def matched_fields(fields: dict[str, str], terms: list[str]) -> dict | None:
    """{"ocr": snippet, "captions": snippet, ..., "words": [terms found], "spans": {field: [[start, end],
    ...]}}, the fields that hold query words only; a photo's captions (one per line) show the caption holding
    the first word found. `spans` are where the words are in each snippet, in characters (code points), so
    that a page marks them without folding."""
    out: dict = {}
    spans: dict[str, list[list[int]]] = {}
    found_words: list[str] = []
    for field in FIELDS:
        text = fields.get(field) or ""
        found = find_words(text, terms) if text else []
        if found:
            if field == "captions":
                text = next((line for line in text.splitlines() if find_words(line, found[:1])), text)
            at = word_spans(text, found[:1])
            shown = snippet(text, text[at[0][0]:at[0][1]] if at else found[0])
            out[field] = shown
            spans[field] = [list(span) for span in word_spans(shown, found)]
            found_words.extend(w for w in found if w not in found_words)
    if not out:
        return None
    out["words"] = found_words
    out["spans"] = spans
    return out


def fused_search(store, query: str, k: int, mode: str, semantic: Callable[[int], list[SearchHit]],
                 filters: dict) -> list[SearchHit]:
    """The top `k` photos for `query` in `mode` ("keyword" or "hybrid"). `semantic(n)` gives the first n
    semantic hits (already filtered); keyword-only matches pass the same `filters`."""
    terms = query_terms(query)
    total, matches, counts = store.keyword_matches(terms) if terms else (0, [], [])
    strength = keyword_strength(total, matches, counts)
    hits = semantic(max(k, CANDIDATES)) if mode == "hybrid" else []
    by_id = {h.id: h for h in hits}
    ranked = fuse([(h.id, h.score) for h in hits], strength, mode)
    keep = image_filter(filters.get("folder"), filters.get("taken_after"), filters.get("taken_before"))
    records = {r.id: r for r in store.get_images([f.id for f in ranked if f.id not in by_id][: 4 * k + 100])}
    chosen = []
    for f in ranked:
        if f.id not in by_id:
            record = records.get(f.id)
            if record is None or (keep is not None and not keep(record)):
                continue
        chosen.append(f)
        if len(chosen) == k:
            break
    words = store.image_words([f.id for f in chosen if f.keyword > 0])
    out = []
    for n, f in enumerate(chosen):
        matched = matched_fields(words[f.id], terms) if f.id in words else None
        if f.id in by_id:
            out.append(replace(by_id[f.id], rank=n + 1, score=f.score, matched=matched))
        else:
            out.append(SearchHit(rank=n + 1, score=f.score, id=f.id, path=records[f.id].path, matched=matched))
    return out
