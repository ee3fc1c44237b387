"""Records that cross module boundaries. Plain dataclasses: no SQLAlchemy rows leave the store."""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import datetime

from PIL import Image


def path_json(path: str, key: str = "path") -> dict[str, str]:
    """A file path as JSON can carry it, losslessly. `key`: the path for display, in UTF-8 (bytes of a name
    that are not UTF-8 show as U+FFFD); only where that loses anything, `key + "_b64"`: the exact bytes of
    the path, base64. (A str from os.fsdecode holds such bytes as lone surrogates, which JSON encoders
    refuse.)"""
    raw = os.fsencode(path)
    shown = raw.decode("utf-8", "replace")
    out = {key: shown}
    if shown.encode("utf-8") != raw:
        out[key + "_b64"] = base64.b64encode(raw).decode("ascii")
    return out


@dataclass(frozen=True)
class Skipped:
    """A file that could not be used, and why (shown to the user, listed by --json)."""

    path: str
    reason: str


@dataclass
class DecodedImage:
    """A photo read from disk, ready for the image tower.

    `image` is RGB, orientation applied, possibly reduced by JPEG draft mode (never below the size asked
    for); `width`/`height` are the original pixel size after EXIF rotation.
    """

    path: str
    size: int
    mtime: float
    sha256: str
    width: int
    height: int
    taken_at: datetime | None
    image: Image.Image = field(repr=False)
    ctime: float | None = None  # the file's change time and inode when read (None: not known)
    inode: int | None = None
    description: str = ""  # its embedded EXIF/XMP/IPTC titles, descriptions and keywords, for the keyword index


@dataclass(frozen=True)
class ImageRecord:
    """One indexed photo, as stored."""

    id: int
    path: str
    size: int
    mtime: float
    sha256: str
    width: int
    height: int
    taken_at: datetime | None
    model: str
    ctime: float | None = None  # None in rows from before schema 3, until the file changes or `index --verify`
    inode: int | None = None


@dataclass(frozen=True)
class TextRecord:
    """One indexed text (a caption, a line of a corpus)."""

    id: int
    text: str
    source: str
    model: str
    image_id: int | None = None  # the photo the text describes, when its corpus named one (schema 5)


@dataclass(frozen=True)
class CorpusText:
    """One text read from a corpus file, with the photo it describes as the file names it (the ``image``
    column or field: a path or a file name, resolved against the library when indexed), or None."""

    text: str
    image: str | None = None


@dataclass(frozen=True)
class SearchHit:
    """One search result. `path` is set for image hits, `text` for text hits.

    `score` orders the results: the dual-encoder cosine similarity, or after reranking the fused score
    (`similarity` - `hubness` + beta * `exemplar` + alpha * `match`, where `match` is the reranker's
    image-text matching score, `hubness` the candidate's hubness prior (0 when the reranker has none) and
    `exemplar` its cosine with the photos of the train captions nearest to a text query (None when unused))."""

    rank: int
    score: float
    id: int
    path: str | None = None
    text: str | None = None
    similarity: float | None = None  # set when reranked
    match: float | None = None  # set when reranked
    hubness: float | None = None  # set when reranked
    exemplar: float | None = None  # set when reranked with the exemplar term (text -> image)
    prob: float | None = None  # calibrated P(match), text -> image with a calibrated model (engine.search.calibration)
    matched: dict | None = None  # keyword search: the fields whose words matched ({"ocr"|"captions"|...: "...", "words": [...], "spans": {...}})

    def to_json(self) -> dict:
        d = {"rank": self.rank, "score": round(float(self.score), 6), "id": self.id}
        if self.match is not None:
            d["similarity"] = round(float(self.similarity), 6)
            d["match"] = round(float(self.match), 6)
            d["hubness"] = round(float(self.hubness or 0.0), 6)
            if self.exemplar is not None:
                d["exemplar"] = round(float(self.exemplar), 6)
        if self.prob is not None:
            d["prob"] = round(float(self.prob), 4)
        if self.path is not None:
            d.update(path_json(self.path))
        if self.text is not None:
            d["text"] = self.text
        if self.matched:
            d["matched"] = self.matched
        return d
