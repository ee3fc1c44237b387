"""The driver's side of a distributed run: a worker's shard merged into the library through the same
transactions as the local pipeline (rows and vectors of a shard in one store commit, then the FAISS index,
then the patch tokens), with the local pipeline's move detection (a file whose content is a vanished file's
keeps that row and vector).

Merging is idempotent: a photo whose path already holds a row with the same content (a shard merged just
before the driver was killed, its file not yet deleted) is not added again."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from xmodal.indexer.distributed.shards import ShardResult
from xmodal.indexer.ingest.pipeline import IndexReport, _sorted_batches
from xmodal.indexer.records import DecodedImage
from xmodal.indexer.storage.library import Library

logger = logging.getLogger(__name__)


@dataclass
class MergeState:
    """What every merge of one run shares: the plan's changed files, rows to re-embed, rows already moved."""

    changed: dict[str, int]
    unembedded: set[int]
    claimed: set[int] = field(default_factory=set)
    patch_store: object | None = None  # PatchStore, when the run stores reranker patch tokens


def still_current(im: DecodedImage) -> bool:
    """Whether the file is still what the worker read (size and mtime): a staged shard from an earlier run
    may describe a file edited since, which must then be embedded again."""
    try:
        st = os.stat(im.path)
    except OSError:
        return False
    return st.st_size == im.size and st.st_mtime == im.mtime


def already_stored(library: Library, images: list[DecodedImage], redo: set[int] = frozenset()) -> set[str]:
    """Paths among `images` whose row already holds the same content (merged before). Rows in `redo` (no
    vector, or one from the model's earlier weights) are not: their new vectors must replace them."""
    if not images:
        return set()
    rows = library.store.images_by_sha256([im.sha256 for im in images])
    return {im.path for im in images if any(p == im.path and i not in redo for i, p in rows.get(im.sha256, ()))}


def merge_shard(library: Library, result: ShardResult, state: MergeState, report: IndexReport,
                model: str, check_current: bool = False, revision: str | None = None) -> list[str]:
    """Commit one shard into `library` (the caller holds the writer lock). With `check_current` (a shard
    staged by an earlier run) photos whose file changed since are left out. Returns the paths it handled
    (committed, moved, skipped or found already stored)."""
    if result.model and result.model != model:
        raise ValueError(f"shard {result.name} was embedded with {result.model!r}, not {model!r}")
    if revision is not None and result.revision != revision:  # weights of an older xmodal, or of none said
        raise ValueError(f"shard {result.name} was embedded with weights {result.revision} of {model!r}, not "
                         f"{revision}")
    report.skipped.extend(result.skipped)
    keep = [i for i, im in enumerate(result.images) if not check_current or still_current(im)]
    images = [result.images[i] for i in keep]
    done = already_stored(library, images, state.unembedded)
    rows = [i for i, im in zip(keep, images) if im.path not in done]
    handled = [s.path for s in result.skipped] + [im.path for im in images]
    if not rows:
        return handled
    by_path = {result.images[i].path: i for i in rows}
    for job in _sorted_batches(library, [[result.images[i] for i in rows]], state.changed, state.unembedded,
                               state.claimed, report):
        if job.moves:
            library.move_images(job.moves)
            report.moved += len(job.moves)
        if job.embed:
            index = np.array([by_path[im.path] for im in job.embed])
            ids, _ = library.add_images(job.embed, result.vectors[index], model)
            if state.patch_store is not None and result.tokens is not None:
                state.patch_store.write(ids, [im.sha256 for im in job.embed], result.tokens[index])
            n_changed = sum(1 for im in job.embed if im.path in state.changed)
            report.reembedded += n_changed
            report.added += len(job.embed) - n_changed
    return handled
