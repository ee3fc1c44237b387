"""The OCR pass of `xmodal index --ocr`: every photo of the library not yet read by this OCR model (new
photos, photos indexed before OCR was on, photos read by another model) is read at OCR size and its text,
boxes and confidences stored with their keyword index rows, one transaction per batch. A photo that cannot
be read is reported and tried again next run; it never stops the pass."""
from __future__ import annotations

import logging
import os
from contextlib import closing
from typing import Callable

from xmodal.indexer.ingest.decode import DecodeError, read_image
from xmodal.indexer.ingest.ocr import READ_SIDE, TextReader, joined_text
from xmodal.indexer.ingest.stages import ordered_map
from xmodal.indexer.records import Skipped
from xmodal.indexer.storage.library import Library

logger = logging.getLogger(__name__)
BATCH = 16


def _read_one(reader: TextReader, row: tuple[int, str, str]) -> tuple[int, str, list, str] | Skipped | None:
    image_id, path, sha256 = row
    try:
        decoded = read_image(path, target_size=READ_SIDE)
    except DecodeError as e:
        return Skipped(path, f"OCR: {e.reason}")
    if decoded.sha256 != sha256:  # changed since it was indexed: the next index run embeds it, then reads it
        return None
    try:
        boxes = reader.read(decoded.image)
    except Exception as e:  # noqa: BLE001 - one photo's OCR failure must not stop the pass
        logger.warning("OCR failed on %s: %s", path, e, exc_info=logger.isEnabledFor(logging.DEBUG))
        return Skipped(path, f"OCR failed ({type(e).__name__}: {e}); it is tried again next run")
    return image_id, joined_text(boxes), [b.to_json() for b in boxes], reader.name


def read_library_text(library: Library, reader: TextReader, workers: int = 2,
                      should_stop: Callable[[], bool] | None = None,
                      skipped: list[Skipped] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> int:
    """Read the text of every photo not yet read by `reader` (files not there are left for later). Returns
    how many photos were read (with or without text found)."""
    todo = [row for row in library.store.images_without_ocr(reader.name, getattr(reader, "family", None))
            if os.path.exists(row[1])]
    if not todo:
        return 0
    logger.info("%s: reading the text in %d photos (OCR: %s)", library.root, len(todo), reader.name)
    done = read = 0
    pending: list[tuple[int, str, list, str]] = []
    stream = ordered_map(lambda row: _read_one(reader, row), todo, workers=workers, prefetch=2 * workers,
                         name="xmodal-ocr")
    with closing(stream):
        for result in stream:
            done += 1
            if isinstance(result, Skipped):
                if skipped is not None:
                    skipped.append(result)
            elif result is not None:
                pending.append(result)
            if len(pending) >= BATCH or done == len(todo):
                library.store.set_ocr(pending)
                read += len(pending)
                pending = []
            if progress:
                progress(done, len(todo))
            if should_stop is not None and should_stop():
                break
    if pending:
        library.store.set_ocr(pending)
        read += len(pending)
    return read
