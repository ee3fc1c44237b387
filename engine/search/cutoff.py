"""What a search shows of its hits: a relevance cutoff on the calibrated probability, and the order (by score
or by date). Pure functions over hits and stored records.

    kept, best = apply_cutoff(hits, 0.3)        # the hits with prob >= 0.3, and the best prob seen
    by_date(kept, records)                      # newest first: EXIF date taken, else the file's mtime
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Mapping, Sequence

from xmodal.indexer.records import ImageRecord, SearchHit

SORTS = ("score", "date")


@dataclass(frozen=True)
class Cut:
    """The hits that passed, how many were dropped, and the best probability among all of them (None when no
    hit had one): what to tell a user when nothing passed."""

    hits: list[SearchHit]
    dropped: int
    best_prob: float | None


def apply_cutoff(hits: Sequence[SearchHit], min_prob: float | None) -> Cut:
    """Keep the hits whose `prob` is at least `min_prob` (None: keep all), in their order, ranks renumbered.
    A hit without a probability (a keyword-only hit of a hybrid search) never passes a cutoff."""
    probs = [h.prob for h in hits if h.prob is not None]
    best = max(probs) if probs else None
    if min_prob is None:
        return Cut(list(hits), 0, best)
    kept = [h for h in hits if h.prob is not None and h.prob >= min_prob]
    return Cut([replace(h, rank=n + 1) for n, h in enumerate(kept)], len(hits) - len(kept), best)


def date_of(record: ImageRecord) -> float:
    """A photo's date as a POSIX time: its EXIF date taken (naive times read as UTC), else its file's mtime."""
    taken = record.taken_at
    if taken is not None:
        if taken.tzinfo is None:
            taken = taken.replace(tzinfo=timezone.utc)
        return taken.timestamp()
    return float(record.mtime)


def by_date(hits: Sequence[SearchHit], records: Mapping[int, ImageRecord]) -> list[SearchHit]:
    """Image hits newest first (date_of), ties by score order; ranks renumbered. A hit whose record is gone
    goes last."""
    def key(pair):
        n, h = pair
        r = records.get(h.id)
        return (r is None, -(date_of(r) if r is not None else 0.0), n)

    ordered = [h for _, h in sorted(enumerate(hits), key=key)]
    return [replace(h, rank=n + 1) for n, h in enumerate(ordered)]


def taken_label(record: ImageRecord) -> str:
    """The date shown beside a hit sorted by date: the date taken, else the file time (marked)."""
    if record.taken_at is not None:
        return record.taken_at.isoformat(sep=" ", timespec="minutes")
    return datetime.fromtimestamp(record.mtime, timezone.utc).isoformat(sep=" ", timespec="minutes") + " (file)"
