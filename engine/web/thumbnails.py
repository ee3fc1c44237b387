"""Thumbnails of indexed photos, generated once and cached in the library: ``<library>/thumbnails/``.

A thumbnail's file name carries the image id, the start of the photo's sha256 and the size, so a photo
that was re-indexed after a change (new id, new hash) never gets a stale thumbnail. Writes are atomic
(temporary file in the same folder, then ``os.replace``): a reader sees a whole JPEG or nothing.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from xmodal.indexer.ingest.decode import DecodeError, read_image
from xmodal.indexer.records import ImageRecord

THUMBNAIL_DIR = "thumbnails"
DEFAULT_SIZE = 320


class ThumbnailCache:
    """``get(record)`` returns the path of the record's JPEG thumbnail, making it on first use."""

    def __init__(self, library_root: str | os.PathLike, size: int = DEFAULT_SIZE, quality: int = 82):
        self.dir = Path(library_root) / THUMBNAIL_DIR
        self.size = size
        self.quality = quality
        self.generated = 0  # how many thumbnails this cache has made (tests check "once")
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, record: ImageRecord) -> Path:
        return self.dir / f"{record.id}-{record.sha256[:16]}-{self.size}.jpg"

    def get(self, record: ImageRecord) -> Path:
        """The cached thumbnail; raises ``DecodeError`` when the photo can no longer be read."""
        path = self.path_for(record)
        if path.exists():
            return path
        with self._guard:
            lock = self._locks.setdefault(path.name, threading.Lock())
        with lock:  # two requests for the same new thumbnail: one makes it, the other waits and reuses it
            if not path.exists():
                self._make(record, path)
        with self._guard:
            self._locks.pop(path.name, None)
        return path

    def _make(self, record: ImageRecord, path: Path) -> None:
        decoded = read_image(record.path, target_size=self.size)  # EXIF orientation, draft mode, pixel limit
        image = decoded.image
        image.thumbnail((self.size, self.size))
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jpg", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                image.convert("RGB").save(f, format="JPEG", quality=self.quality, optimize=True)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self.generated += 1


__all__ = ["ThumbnailCache", "DecodeError", "THUMBNAIL_DIR", "DEFAULT_SIZE"]
