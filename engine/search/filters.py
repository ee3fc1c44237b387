"""Image filters of a query: a folder (recursively) and a range of EXIF dates taken, as a predicate on the
stored records. Pure: no library, no model."""
from __future__ import annotations

import os
from datetime import date

from xmodal.indexer.records import ImageRecord

from xmodal.engine.search.errors import SearchError


def language_notice(query: str, languages: tuple[str, ...] | None) -> str | None:
    """A warning when a text query is in a language the model does not read: an English-only model ranks a
    query with little English (Chinese, Arabic, emoji...) by accident, and its top hits say nothing."""
    if languages != ("en",):
        return None  # a multilingual or unknown model: no opinion
    letters = [c for c in query if c.isalpha() or ord(c) > 0x2000]  # emoji and symbols count as not English
    latin = sum(1 for c in letters if c.isascii())
    if letters and latin / len(letters) >= 0.5:
        return None
    return ("this model reads English only: a query with little English matches by accident, so these "
            "results may not mean anything; try the words in English")


def image_filter(folder: str | None, taken_after: date | None, taken_before: date | None):
    """A predicate on ImageRecord for the given filters, or None when there are none."""
    if folder is None and taken_after is None and taken_before is None:
        return None
    prefix = None
    if folder is not None:
        if not str(folder).strip():
            raise SearchError("empty folder filter: give a folder path or leave it out")
        prefix = os.path.normpath(os.path.abspath(os.fspath(folder)))
        prefix = prefix if prefix.endswith(os.sep) else prefix + os.sep
    if taken_after is not None and taken_before is not None and taken_after > taken_before:
        raise SearchError(f"taken_after {taken_after} is later than taken_before {taken_before}; nothing can match")

    def keep(record: ImageRecord) -> bool:
        if prefix is not None and not record.path.startswith(prefix):
            return False
        if taken_after is not None or taken_before is not None:
            if record.taken_at is None:
                return False
            day = record.taken_at.date()
            if (taken_after is not None and day < taken_after) or (taken_before is not None and day > taken_before):
                return False
        return True

    return keep
