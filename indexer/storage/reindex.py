"""Re-embed a whole library with another model, without ever leaving it half-converted.

The new library is built beside the old one (`<library>.reindex`), from the same roots and text files,
while the old one stays locked for writers and keeps answering searches; then the two folders are swapped
by renames and the old one is deleted. An interrupted reindex leaves the old library untouched, and the
next reindex starts the new one again (resuming whatever it had committed).
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

from xmodal.indexer.models.base import Encoder
from xmodal.indexer.storage.library import Library
from xmodal.indexer.models.patch_projector import default_projector
from xmodal.indexer.ingest.pipeline import IndexReport, Progress, index_images, index_texts

logger = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    model_before: str | None
    model_after: str
    images: IndexReport
    texts: int = 0
    missing_text_sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"model_before": self.model_before, "model_after": self.model_after, "images": self.images.to_json(),
                "texts": self.texts, "missing_text_sources": self.missing_text_sources}


def reindex(root: str | os.PathLike, encoder: Encoder, progress: Progress | None = None) -> ReindexReport:
    """Rebuild the library at `root` with `encoder`; returns what the new library holds."""
    old = Library(root)
    staging = old.root.with_name(old.root.name + ".reindex")
    with old.writing():
        roots, sources, before = old.roots, sorted(old.store.text_sources()), old.model
        if (staging / "library.db").exists():  # left by an interrupted reindex: resume it, or drop it
            with Library(staging) as stale:
                stale_model = stale.model
            if stale_model not in (None, encoder.name):
                shutil.rmtree(staging)
        with Library(staging, create=True) as new:
            patches = default_projector(encoder.name)
            ocr = None
            if old.store.get_meta("ocr", False):  # the library reads the text in its photos: so does the new one
                from xmodal.indexer.ingest.ocr import get_reader

                ocr = get_reader()
            images = (index_images(new, roots, encoder, progress=progress, patches=patches, ocr=ocr,
                                   ocr_setting=True if ocr is not None else None) if roots else IndexReport())
            report = ReindexReport(before, encoder.name, images)
            for source in sources:
                if os.path.exists(source):
                    report.texts += index_texts(new, source, encoder, tokens=patches is not None).indexed
                else:
                    report.missing_text_sources.append(source)
        retired = old.root.with_name(old.root.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(old.root, retired)
        os.rename(staging, old.root)
    old.close()
    shutil.rmtree(retired, ignore_errors=True)
    logger.info("reindexed %s with %s (was %s)", old.root, encoder.name, before)
    return report
