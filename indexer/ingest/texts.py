"""Read a text corpus (captions, queries, any short texts) from a file, one text at a time.

Supported formats, chosen by extension (case-insensitive):

* ``.txt``   one text per line; lines are stripped and blank lines skipped.
* ``.csv``   a header row, then one text per row from the ``caption`` column, or the ``text`` column if
  there is no ``caption`` (header names matched ignoring case and surrounding spaces). Rows whose cell
  is blank or missing are skipped. An ``image`` column (else ``file``, ``path`` or ``photo``) names the
  photo each text describes (Flickr8k's ``image,caption`` layout).
* ``.jsonl`` one JSON object per line with a string ``text`` field, and optionally a string ``image``
  field naming the photo it describes. A line that is not valid JSON, not an object, or has no string
  ``text`` (or a non-string ``image``) is *logged as a warning naming file:line and skipped*: one bad
  line in a large scraped corpus should not cost the rest of it. Blank lines are ignored.

Plain ``.txt`` texts describe no photo. `read_texts` yields the texts as strings; `read_corpus` yields
`CorpusText` records (the text and the photo it names, or None).

Files must be UTF-8 (a leading byte-order mark is tolerated). Anything else raises `TextCorpusError`
with the file name, the reason and what to do about it.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from typing import TextIO

from xmodal.indexer.records import CorpusText

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".csv", ".jsonl")

_CSV_COLUMNS = ("caption", "text")  # in order of preference
IMAGE_COLUMNS = ("image", "file", "path", "photo")  # the photo a text describes, in order of preference
_MAX_LINE_WARNINGS = 20  # per file; after that only a summary is logged


class TextCorpusError(Exception):
    """A text corpus file that cannot be read; the message names the file, the reason and the fix."""


def read_texts(path: str) -> Iterator[str]:
    """Yield the texts in the corpus file `path`, streaming (see the module docstring for formats).

    The extension and the file's existence are checked when this is called; format problems (a CSV
    without a usable column, bytes that are not UTF-8) raise `TextCorpusError` during iteration, when
    they are reached. Texts already yielded before such an error stay valid.
    """
    return (item.text for item in read_corpus(path))


def read_corpus(path: str) -> Iterator[CorpusText]:
    """Like `read_texts`, yielding `CorpusText` records: each text with the photo it names (None in a
    ``.txt`` file, a CSV without an image column, a JSONL line without ``image``, or a blank cell)."""
    path = os.fsdecode(os.fspath(path))
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise TextCorpusError(
            f"{path}: unsupported text file type {ext or '(no extension)'!r}; use .txt (one text per line), "
            ".csv (with a 'caption' or 'text' column) or .jsonl (one JSON object with a 'text' field per line)")
    if not os.path.exists(path):
        raise TextCorpusError(f"{path}: file not found; check the path")
    if os.path.isdir(path):
        raise TextCorpusError(f"{path}: is a folder; pass a .txt, .csv or .jsonl file")
    reader = {".txt": _read_txt, ".csv": _read_csv, ".jsonl": _read_jsonl}[ext]
    return _guarded(path, reader)


def _guarded(path: str, reader) -> Iterator[CorpusText]:
    """Run `reader` on the opened file, turning I/O and encoding errors into `TextCorpusError`."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from reader(path, f)
    except UnicodeDecodeError as exc:
        raise TextCorpusError(
            f"{path}: not valid UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} cannot be decoded); "
            "re-save the file as UTF-8") from None
    except FileNotFoundError:
        raise TextCorpusError(f"{path}: file not found (was it moved or deleted?); check the path") from None
    except PermissionError:
        raise TextCorpusError(f"{path}: permission denied; check the file's permissions") from None
    except IsADirectoryError:
        raise TextCorpusError(f"{path}: is a folder; pass a .txt, .csv or .jsonl file") from None


def _read_txt(path: str, f: TextIO) -> Iterator[CorpusText]:
    for line in f:
        text = line.strip()
        if text:
            yield CorpusText(text)


def _read_csv(path: str, f: TextIO) -> Iterator[CorpusText]:
    reader = csv.reader(f)
    try:
        header = next(reader, None)
        if header is None:
            raise TextCorpusError(f"{path}: empty CSV file; expected a header row with a 'caption' or 'text' column")
        names = [h.strip().lower() for h in header]
        column = next((c for c in _CSV_COLUMNS if c in names), None)
        if column is None:
            found = ", ".join(repr(h) for h in header) or "(none)"
            raise TextCorpusError(
                f"{path}: no 'caption' or 'text' column in the CSV header (found columns: {found}); "
                "rename the column holding the texts to 'caption' or 'text'")
        index = names.index(column)
        image = next((names.index(c) for c in IMAGE_COLUMNS if c in names), None)
        for row in reader:
            if index < len(row):
                text = row[index].strip()
                if text:
                    ref = row[image].strip() if image is not None and image < len(row) else ""
                    yield CorpusText(text, ref or None)
    except csv.Error as exc:
        raise TextCorpusError(f"{path}:{reader.line_num}: malformed CSV ({exc}); fix or re-export the file") from None


def _read_jsonl(path: str, f: TextIO) -> Iterator[CorpusText]:
    bad = 0
    for lineno, line in enumerate(f, start=1):
        line = line.strip()
        if not line:
            continue
        problem = None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg})"
        else:
            if not isinstance(obj, dict):
                problem = f"expected a JSON object, got {type(obj).__name__}"
            elif not isinstance(obj.get("text"), str):
                problem = "no 'text' field" if "text" not in obj else "the 'text' field is not a string"
            elif obj.get("image") is not None and not isinstance(obj["image"], str):
                problem = "the 'image' field is not a string (a path or file name of the photo)"
        if problem is not None:
            bad += 1
            if bad <= _MAX_LINE_WARNINGS:
                logger.warning("%s:%d: %s; line skipped", path, lineno, problem)
            continue
        text = obj["text"].strip()
        if text:
            yield CorpusText(text, (obj.get("image") or "").strip() or None)
    if bad > _MAX_LINE_WARNINGS:
        logger.warning("%s: %d malformed lines skipped in all (only the first %d were listed)",
                       path, bad, _MAX_LINE_WARNINGS)
