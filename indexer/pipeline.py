"""The write path as a pipeline of generators in fixed-size batches:

    walk -> (skip unchanged) -> decode (thread pool, overlapping inference) -> encode -> write

Only paths and file states are held for the whole run; pixels and vectors live one batch at a time.
Every batch commits store rows and adds vectors; the FAISS file is saved at checkpoints and at the end
(see indexer.library for how an interrupted run is reconciled).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .decode import iter_decoded
from .encoders import Encoder
from .library import Library
from .records import DecodedImage, Skipped
from .texts import read_texts
from .walk import iter_image_files

logger = logging.getLogger(__name__)
T = TypeVar("T")

BATCH_SIZE = 16  # the image tower's sweet spot on a 2-core CPU
CHECKPOINT_SECONDS = 60.0


@dataclass
class IndexReport:
    indexed: int = 0  # new or changed files embedded
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"indexed": self.indexed, "unchanged": self.unchanged, "removed": self.removed,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
                "seconds": round(self.seconds, 3)}


Progress = Callable[[int, int], None]  # (done, total)


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def plan(library: Library, roots: Sequence[str], report: IndexReport) -> tuple[list[str], dict[str, int], list[int]]:
    """Walk `roots` against the store: (paths to embed, {path: old id} of changed files, ids of vanished files).

    A file is unchanged when its size and mtime equal the stored ones."""
    roots = [os.path.abspath(r) for r in roots]
    known: dict[str, tuple[int, int, float]] = {
        path: (i, size, mtime) for path, i, size, mtime in library.store.image_states()
        if any(_under(path, r) for r in roots)
    }
    todo, changed, seen = [], {}, set()
    for root in roots:
        for item in iter_image_files(root):
            if isinstance(item, Skipped):
                report.skipped.append(item)
                continue
            if item in seen:
                continue
            seen.add(item)
            old = known.get(item)
            if old is not None:
                try:
                    st = os.stat(item)
                except OSError as e:
                    report.skipped.append(Skipped(item, f"cannot stat: {e.strerror or e}"))
                    continue
                if st.st_size == old[1] and st.st_mtime == old[2]:
                    report.unchanged += 1
                    continue
                changed[item] = old[0]
            todo.append(item)
    vanished = [i for path, (i, _, _) in known.items() if path not in seen and not os.path.exists(path)]
    return todo, changed, vanished


def index_images(library: Library, roots: Sequence[str], encoder: Encoder, batch_size: int = BATCH_SIZE,
                 progress: Progress | None = None, workers: int = 2) -> IndexReport:
    """Index every photo under `roots` into `library`; only new or changed files are embedded."""
    t0 = time.perf_counter()
    report = IndexReport()
    library.bind_model(encoder.name, encoder.dim)
    library.reconcile()
    index = library.vector_index("images")
    todo, changed, vanished = plan(library, roots, report)
    if vanished:
        library.store.delete_images(vanished)
        index.remove(np.asarray(vanished, np.int64))
        report.removed = len(vanished)
    done, last_save = 0, time.monotonic()
    if progress:
        progress(0, len(todo))
    size = getattr(encoder, "preprocess", None)
    target = size.size if size is not None else 224
    for batch in batched(iter_decoded(todo, target_size=target, workers=workers), batch_size):
        images: list[DecodedImage] = []
        for item in batch:
            if isinstance(item, Skipped):
                report.skipped.append(item)  # a changed file that no longer decodes keeps its old entry
            else:
                images.append(item)
        if images:
            vectors = encoder.encode_images([im.image for im in images])
            ids, replaced = library.store.replace_images(images, encoder.name)
            if replaced:
                index.remove(np.asarray(replaced, np.int64))
            index.add(np.asarray(ids, np.int64), vectors)
            report.indexed += len(images)
        done += len(batch)
        if progress:
            progress(done, len(todo))
        if time.monotonic() - last_save > CHECKPOINT_SECONDS:
            library.save("images")
            last_save = time.monotonic()
    library.save("images")
    report.seconds = time.perf_counter() - t0
    logger.info("indexed %d, unchanged %d, removed %d, skipped %d in %.1fs", report.indexed, report.unchanged,
                report.removed, len(report.skipped), report.seconds)
    return report


@dataclass
class TextReport:
    indexed: int = 0
    replaced: int = 0
    source: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"indexed": self.indexed, "replaced": self.replaced, "source": self.source,
                "seconds": round(self.seconds, 3)}


def index_texts(library: Library, path: str, encoder: Encoder, batch_size: int = 256,
                progress: Progress | None = None) -> TextReport:
    """Index a text corpus file; indexing the same file again replaces its earlier texts."""
    t0 = time.perf_counter()
    source = os.path.abspath(path)
    report = TextReport(source=source)
    library.bind_model(encoder.name, encoder.dim)
    library.reconcile()
    index = library.vector_index("texts")
    previous = library.store.delete_texts_from_source(source) if source in library.store.text_sources() else []
    if previous:
        index.remove(np.asarray(previous, np.int64))
        report.replaced = len(previous)
    for batch in batched(read_texts(path), batch_size):
        vectors = encoder.encode_texts(batch)
        ids = library.store.add_texts(batch, source, encoder.name)
        index.add(np.asarray(ids, np.int64), vectors)
        report.indexed += len(batch)
        if progress:
            progress(report.indexed, 0)
    library.save("texts")
    report.seconds = time.perf_counter() - t0
    return report
