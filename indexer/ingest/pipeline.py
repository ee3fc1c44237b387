"""The write path as a pipeline of generators in fixed-size batches:

    walk -> (skip unchanged) -> decode + resize (thread pool) -> encode (one thread per inference lane) -> write

Decoding, inference and the main thread's store writes overlap (indexer.stages): with the lite model on
ONNX Runtime each core runs its own single-threaded session on alternate batches.

Only paths and file states are held for the whole run; pixels and vectors live one batch at a time.
Every batch commits its store rows together with their vectors (one transaction), then adds the vectors to
the in-memory FAISS index; the FAISS file is saved at checkpoints and at the end. A run killed at any moment
loses at most the batch in flight: the next open patches the FAISS index from the store (indexer.library).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from xmodal.indexer.ingest.decode import iter_decoded
from xmodal.indexer.ingest.reembed import (rebuild_after_reembed, reembed_texts, sync_weights,
                                             weights_verdict)
from xmodal.indexer.models.base import Encoder, decode_size, input_fit
from xmodal.indexer.storage.index_tuning import TUNING_QUERIES, needs_rebuild
from xmodal.indexer.storage.library import Library, LibraryError, _under, write_failure
from xmodal.indexer.storage.revision import (STALE_BELOW, encoder_revision, finish_reembed, record_revision,
                                              stale_ids)
from xmodal.indexer.models.patch_projector import PatchProjector
from xmodal.indexer.records import DecodedImage, Skipped
from xmodal.indexer.ingest.stages import LaneIds, ordered_map
from xmodal.indexer.storage.store import FileState, StoreError
from xmodal.indexer.storage.text_tokens import TextTokenStore
from xmodal.indexer.ingest.caption_links import PhotoFinder, warn_unlinked
from xmodal.indexer.ingest.texts import read_corpus
from xmodal.indexer.storage.vector_index import VectorIndexError
from xmodal.indexer.ingest.walk import iter_image_files

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: OSErrors that mean "the library cannot be written" (others, e.g. a vanished root, propagate as they are)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
BATCH_SIZE = 16  # the image tower's sweet spot on a 2-core CPU
CHECKPOINT_SECONDS = 60.0


@dataclass
class IndexReport:
    added: int = 0  # new files embedded
    reembedded: int = 0  # files edited in place (or rows that had lost their vector), embedded again
    moved: int = 0  # renamed or moved files recognised by content: path updated, vector kept
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False  # stopped early on request (SIGINT); the same command resumes
    processed: int = 0  # files of the work list handled (embedded, moved or skipped) this run
    roots: list[str] = field(default_factory=list)
    rebuilt: dict | None = None  # the library outgrew its index type: what it was rebuilt into
    patched: int = 0  # photos indexed earlier that got their reranker patch tokens this run
    ocr_read: int = 0  # photos whose text was read by OCR this run
    texts_reembedded: int = 0  # texts embedded again because the model's weights changed (indexer.ingest.reembed)

    @property
    def indexed(self) -> int:
        """Files embedded this run (added + re-embedded)."""
        return self.added + self.reembedded

    def to_json(self) -> dict:
        return {"indexed": self.indexed, "added": self.added, "reembedded": self.reembedded, "moved": self.moved,
                "unchanged": self.unchanged, "removed": self.removed,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
                "interrupted": self.interrupted, "roots": self.roots, "rebuilt": self.rebuilt, "patched": self.patched,
                "ocr_read": self.ocr_read, "texts_reembedded": self.texts_reembedded,
                "seconds": round(self.seconds, 3)}


Progress = Callable[[int, int], None]  # (done, total)


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def file_verdict(old: FileState, st: os.stat_result, verify: bool = False) -> str:
    """Whether a known file changed: "changed" (size or mtime differ), "same", or "hash" (size and mtime are
    the stored ones but the change time or inode is not, or `verify`: only its content hash can tell; a
    content write restoring the mtime, `touch -r`, still moves the ctime). A row from before schema 3 has no
    ctime/inode (None): size and mtime decide, as they did then."""
    if st.st_size != old.size or st.st_mtime != old.mtime:
        return "changed"
    if verify:
        return "hash"
    if old.ctime is not None and old.inode is not None and (st.st_ctime != old.ctime or st.st_ino != old.inode):
        return "hash"
    return "same"


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def plan(library: Library, roots: Sequence[str], report: IndexReport, force: Iterable[int] = (),
         verify: bool = False) -> tuple[list[str], dict[str, int], list[int]]:
    """Walk `roots` against the store: (paths to read, {path: old id} of changed files, ids of vanished files).

    A file is unchanged when its size, mtime, ctime and inode equal the stored ones (`file_verdict`) and its
    row is not in `force` (rows that lost their vector); when only the ctime or inode differ (or with
    `verify`, for every file) its content is hashed, and an unchanged hash only refreshes the stored state.
    A root that does not exist (an unplugged drive) is reported and its photos are kept."""
    force = set(int(i) for i in force)
    roots = [os.path.abspath(r) for r in roots]
    present = []
    for root in roots:
        if os.path.exists(root):
            present.append(root)
        else:
            report.skipped.append(Skipped(root, "root not found (moved, or a drive not mounted?); its photos are "
                                                "kept: `xmodal remove` it to drop them"))
    known: dict[str, FileState] = {
        state.path: state for state in library.store.image_states() if any(_under(state.path, r) for r in present)
    }
    todo, changed, seen, refresh = [], {}, set(), []
    for root in present:
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
                    verdict = "changed" if old.id in force else file_verdict(old, st, verify)
                    if verdict == "hash" and file_sha256(item) == old.sha256:
                        refresh.append((old.id, st.st_size, st.st_mtime, st.st_ctime, st.st_ino))
                        verdict = "same"
                except OSError as e:
                    report.skipped.append(Skipped(item, f"cannot stat or read: {e.strerror or e}"))
                    continue
                if verdict == "same":
                    report.unchanged += 1
                    continue
                changed[item] = old.id
            todo.append(item)
    library.store.set_file_states(refresh)
    vanished = [state.id for path, state in known.items() if path not in seen and not os.path.exists(path)]
    return todo, changed, vanished


@dataclass
class _Job:
    """One batch on its way through the stages: what to move, what to embed, and (after encoding) its vectors."""

    size: int  # files of the work list in the batch, skipped ones included
    moves: list[tuple[int, DecodedImage]]
    embed: list[DecodedImage]
    vectors: np.ndarray | None = None
    raw: np.ndarray | None = None  # (n, P, 1280) patch tokens (P = 49 lite, 81 base), when asked for


def _sorted_batches(library: Library, batches: Iterable[list], changed: dict[str, int], unembedded: set[int],
                    claimed: set[int], report: IndexReport) -> Iterator[_Job]:
    """Decoded batches -> jobs: files that fail are reported, files whose content is a vanished file's are
    moves (keep the vector; a row without a usable one is moved, then embedded again), the rest are embedded. Runs on the main thread (it reads the store)."""
    for batch in batches:
        images: list[DecodedImage] = []
        for item in batch:
            if isinstance(item, Skipped):
                report.skipped.append(item)  # a changed file that no longer decodes keeps its old entry
            else:
                images.append(item)
        fresh = [im for im in images if im.path not in changed]
        candidates = library.store.images_by_sha256([im.sha256 for im in fresh]) if fresh else {}
        moves: list[tuple[int, DecodedImage]] = []
        embed: list[DecodedImage] = []
        for im in images:
            if im.path not in changed:
                old = next((i for i, p in candidates.get(im.sha256, ())
                            if i not in claimed and not os.path.lexists(p)), None)
                if old is not None:
                    claimed.add(old)
                    moves.append((old, im))
                    if old not in unembedded:
                        continue
                    changed[im.path] = old  # no usable vector (lost, or the model's earlier weights'): moved first,
                    # keeping its captions and OCR text, then embedded in its place
            embed.append(im)
        yield _Job(len(batch), moves, embed)


def encode_ahead(encoder: Encoder, jobs: Iterable[_Job], with_patches: bool = False) -> Iterator[_Job]:
    """Encode each job's photos on worker threads, one per inference lane (`encoder.lanes`, else 1), while
    the caller writes the jobs before them; jobs come back in order."""
    lanes = max(1, int(getattr(encoder, "lanes", 1)))
    lane_of = LaneIds()

    def encode(job: _Job) -> _Job:
        if job.embed:
            pixels = [im.image for im in job.embed]
            kw = {"lane": lane_of()} if lanes > 1 else {}
            if with_patches:
                job.vectors, job.raw = encoder.encode_images_with_patches(pixels, **kw)
            else:
                job.vectors = encoder.encode_images(pixels, **kw)
        return job

    return ordered_map(encode, jobs, workers=lanes, prefetch=lanes + 1, name="xmodal-encode")


def index_images(library: Library, roots: Sequence[str] | None, encoder: Encoder, batch_size: int = BATCH_SIZE,
                 progress: Progress | None = None, workers: int = 2,
                 should_stop: Callable[[], bool] | None = None,
                 patches: PatchProjector | None = None, verify: bool = False, ocr=None,
                 ocr_setting: bool | None = None) -> IndexReport:
    """Index every photo under `roots` (None or empty: every root the library knows) into `library`.

    New files are embedded, files edited in place re-embedded, renamed or moved files (same content, old
    path gone) keep their vector, vanished files are removed. Holds the library's writer lock. Every batch
    is committed (rows and vectors, one transaction) before the next starts, so an interrupted run loses at
    most one batch; `should_stop` is asked after each batch and ends the run early (``interrupted``).

    With `patches` (the reranker's projection) every embedded photo also gets its patch tokens, from the same
    forward pass, and photos indexed before without them get them at the end (``patched``).

    With `verify` every known file's content is hashed again (not only those whose ctime or inode moved), and
    the ones whose hash changed are embedded again.

    With `ocr` (a `TextReader`, indexer.ocr) every photo not yet read by it is read at the end (``ocr_read``);
    `ocr_setting` (True/False) is kept in the library as its OCR setting (`Library` meta "ocr")."""
    t0 = time.perf_counter()
    report = IndexReport()
    with library.writing():
        try:
            if ocr_setting is not None:
                library.store.set_meta("ocr", bool(ocr_setting))
            _index_images(library, roots, encoder, batch_size, progress, workers, should_stop, report, patches,
                          verify)
            if ocr is not None and not report.interrupted:
                from xmodal.indexer.ingest.ocr_pass import read_library_text

                report.ocr_read = read_library_text(library, ocr, workers, should_stop, report.skipped)
        except (OSError, StoreError, VectorIndexError) as e:
            if isinstance(e, OSError) and e.errno not in WRITE_ERRNOS:
                raise
            raise write_failure(library, e) from e
    report.seconds = time.perf_counter() - t0
    logger.info("added %d, re-embedded %d, moved %d, unchanged %d, removed %d, skipped %d in %.1fs%s",
                report.added, report.reembedded, report.moved, report.unchanged, report.removed,
                len(report.skipped), report.seconds, " (interrupted)" if report.interrupted else "")
    return report


def _index_images(library: Library, roots: Sequence[str] | None, encoder: Encoder, batch_size: int,
                  progress: Progress | None, workers: int, should_stop: Callable[[], bool] | None,
                  report: IndexReport, patches: PatchProjector | None = None, verify: bool = False) -> None:
    library.bind_model(encoder.name, encoder.dim)
    if patches is not None and not hasattr(encoder, "encode_images_with_patches"):
        logger.warning("model %s gives no patch tokens; photos are indexed without them", encoder.name)
        patches = None
    patch_store = library.patch_store(patches.spec) if patches is not None else None
    if roots:
        library.add_roots(roots)
        report.roots = [os.path.realpath(r) for r in roots]  # as add_roots records them
    else:
        report.roots = library.roots
        if not report.roots:
            raise LibraryError(f"library {library.root} has no folders yet; give one: `xmodal index PATH`")
    library.reconcile()
    sync_weights(library, encoder)  # other weights made its vectors: the stale rows are embedded again below
    stale = stale_ids(library, "images")
    unembedded = set(library.unembedded.get("images", np.empty(0)).tolist()) | set(stale.tolist())
    todo, changed, vanished = plan(library, walked_roots(library, report.roots, stale), report, force=unembedded,
                                   verify=verify)
    gone = set(vanished)
    claimed: set[int] = set()
    if progress:
        progress(0, len(todo))
    decoded = iter_decoded(todo, target_size=decode_size(encoder), workers=workers, prepare=input_fit(encoder))
    jobs = _sorted_batches(library, batched(decoded, batch_size), changed, unembedded, claimed, report)
    # the stages are closed here, in order, also on KeyboardInterrupt: not later by the garbage collector, where
    # a second Ctrl-C during their wait for a running batch would print "Exception ignored in: <generator ...>"
    with closing(decoded), closing(encode_ahead(encoder, jobs, with_patches=patch_store is not None)) as stream:
        _write_jobs(library, stream, encoder, patch_store, patches, changed, todo, progress, should_stop, report)
    if not report.interrupted:
        doomed = sorted(gone - claimed)
        if doomed:
            library.delete_images(doomed)
            report.removed = len(doomed)
        index = library.vector_index("images")
        grown = needs_rebuild(index.factory, index.ntotal, index.dim)
        if grown:  # the library outgrew its index type: rebuild from the stored vectors, no re-embedding
            report.rebuilt = library.rebuild_index("images", grown, queries=encoder.encode_texts(TUNING_QUERIES))
    library.save("images")
    if not report.interrupted:
        catch_up_texts(library, encoder, report)
    if patch_store is not None and not report.interrupted:
        report.patched = backfill_patches(library, encoder, patches, batch_size, workers, should_stop, report,
                                          verify=verify)


def walked_roots(library: Library, roots: Sequence[str], stale: np.ndarray) -> list[str]:
    """The roots a run walks: those asked for, and while photos still carry vectors from the model's earlier
    weights every root the library knows (an `xmodal index NEW_FOLDER` then finishes the re-embedding too)."""
    return sorted(set(roots) | set(library.roots)) if len(stale) else list(roots)


def catch_up_texts(library: Library, encoder: Encoder, report: IndexReport | None = None) -> None:
    """Embed again the texts whose vectors came from the model's earlier weights; once nothing stale is left,
    drop the re-embedding's watermark and give the indexes the type their size calls for (retrained on the new
    vectors). Photos whose files were not found (an unplugged drive) keep it."""
    marks = library.store.get_meta(STALE_BELOW)
    underway = marks is not None
    stale = stale_ids(library, "texts")
    if len(stale):
        done = reembed_texts(library, encoder, stale.tolist())
        library.save("texts")
        if report is not None:
            report.texts_reembedded += done
    if not finish_reembed(library):
        logger.warning("%s: %d photos still carry vectors from the model's earlier weights: their files were not "
                       "found in this run (an unplugged drive?); `xmodal index` embeds them when they are",
                       library.root, len(stale_ids(library, "images")))
    elif underway:
        rebuilt = rebuild_after_reembed(library, queries=encoder.encode_texts(TUNING_QUERIES), marks=marks)
        if report is not None and rebuilt and report.rebuilt is None:
            report.rebuilt = rebuilt[0]


def _write_jobs(library: Library, stream: Iterable[_Job], encoder: Encoder, patch_store, patches,
                changed: dict[str, int], todo: list[str], progress: Progress | None,
                should_stop: Callable[[], bool] | None, report: IndexReport) -> None:
    """The main thread's stage: commit each encoded job (moves, rows and vectors, patch tokens), report
    progress, stop when asked, and save the index at checkpoints."""
    done, last_save = 0, time.monotonic()
    for job in stream:
        if job.moves:
            library.move_images(job.moves)
            report.moved += len(job.moves)
        if job.embed:
            ids, _ = library.add_images(job.embed, job.vectors, encoder.name)
            if patch_store is not None:  # after the commit: a crash in between leaves slots that read as missing
                patch_store.write(ids, [im.sha256 for im in job.embed], patches(job.raw))
            n_changed = sum(1 for im in job.embed if im.path in changed)
            report.reembedded += n_changed
            report.added += len(job.embed) - n_changed
        done += job.size
        report.processed = done
        if progress:
            progress(done, len(todo))
        if should_stop is not None and should_stop():
            report.interrupted = True
            break
        if time.monotonic() - last_save > CHECKPOINT_SECONDS:
            library.save("images")
            library.store.checkpoint()  # committed batches reach library.db: a lost -wal loses at most a minute
            last_save = time.monotonic()


def missing_patches(library: Library, spec, verify: bool = False) -> list[tuple[int, str, str]]:
    """(id, path, sha256) of the stored photos whose patch tokens are missing or stale, from the slots' tags
    alone; with `verify` also those whose tokens are damaged (failing their CRC: every slot is read, ~12.5 KB
    per photo, so only `check --repair` and `index --verify` ask for it; a search reads damaged tokens as
    missing anyway)."""
    store = library.patch_store(spec)
    missing = []
    for page in batched(library.store.image_digests(), 1024):
        found = store.has([i for i, _, _ in page], [sha for _, _, sha in page], verify=verify)
        missing.extend(row for row, ok in zip(page, found) if not ok)
    return missing


def backfill_patches(library: Library, encoder: Encoder, patches: PatchProjector, batch_size: int = BATCH_SIZE,
                     workers: int = 2, should_stop: Callable[[], bool] | None = None,
                     report: IndexReport | None = None, verify: bool = False) -> int:
    """Give photos indexed without patch tokens (an older library, a crash, another projection; with `verify`,
    damaged tokens too) their tokens. Vectors are left as they are; a photo whose file changed or vanished is
    skipped. Returns how many got them."""
    todo = [row for row in missing_patches(library, patches.spec, verify) if os.path.exists(row[1])]  # not unplugged
    if not todo:
        return 0
    logger.info("%s: making reranker patch tokens for %d photos indexed without them", library.root, len(todo))
    store = library.patch_store(patches.spec)
    expected = {path: (i, sha) for i, path, sha in todo}
    decoded = iter_decoded([p for _, p, _ in todo], target_size=decode_size(encoder), workers=workers,
                           prepare=input_fit(encoder))
    with closing(decoded):  # closed here, at once, also on KeyboardInterrupt (not by the garbage collector)
        return _backfill(store, decoded, expected, encoder, patches, batch_size, should_stop, report)


def _backfill(store, decoded: Iterable, expected: dict[str, tuple[int, str]], encoder: Encoder,
              patches: PatchProjector, batch_size: int, should_stop: Callable[[], bool] | None,
              report: IndexReport | None) -> int:
    done = 0
    for batch in batched(decoded, batch_size):
        good = [im for im in batch if not isinstance(im, Skipped) and expected[im.path][1] == im.sha256]
        if report is not None:
            report.skipped.extend(im for im in batch if isinstance(im, Skipped))
        if good:
            _, raw = encoder.encode_images_with_patches([im.image for im in good])
            store.write([expected[im.path][0] for im in good], [im.sha256 for im in good], patches(raw))
            done += len(good)
        if should_stop is not None and should_stop():
            if report is not None:
                report.interrupted = True
            break
    return done


@dataclass
class TextReport:
    indexed: int = 0
    replaced: int = 0
    source: str = ""
    seconds: float = 0.0
    linked: int = 0  # texts linked to the library photo they name (their captions)
    unresolved: int = 0  # texts naming a photo not in the library: unlinked
    ambiguous: int = 0  # texts naming a file name several photos share: unlinked

    def to_json(self) -> dict:
        return {"indexed": self.indexed, "replaced": self.replaced, "source": self.source,
                "linked": self.linked, "unresolved": self.unresolved, "ambiguous": self.ambiguous,
                "seconds": round(self.seconds, 3)}


def index_texts(library: Library, path: str, encoder: Encoder, batch_size: int = 256,
                progress: Progress | None = None, tokens: bool = False) -> TextReport:
    """Index a text corpus file; indexing the same file again replaces its earlier texts. With `tokens` (and
    an encoder that has them) each text's token states are stored too, from the same text-tower pass, for
    reranking image -> text searches without a text-tower pass at query time (indexer.text_tokens).

    Texts that name a photo (indexer.ingest.texts) are linked to it when the library has it
    (indexer.ingest.caption_links), and become its captions, keywords of the photo, in the same transaction
    as the texts; replacing the corpus's texts recomputes the captions of the photos they described."""
    t0 = time.perf_counter()
    source = os.path.abspath(path)
    report = TextReport(source=source)
    with library.writing():
        try:
            library.bind_model(encoder.name, encoder.dim)
            library.reconcile()
            verdict = weights_verdict(library, encoder)
            if verdict == "changed":  # the photos' vectors must be redone first, and a text run walks no photos
                raise LibraryError(f"library {library.root} was indexed with other weights of model "
                                   f"{library.model!r}: run `xmodal index --library {library.root}` first to embed "
                                   "it again with this xmodal's, then index the texts")
            if verdict == "same":
                record_revision(library, encoder_revision(encoder))
            if source in library.store.text_sources():
                report.replaced = len(library.delete_texts_from_source(source))
            stale = stale_ids(library, "texts")
            if len(stale):  # an unfinished re-embedding's other texts; `xmodal index` finishes it
                reembed_texts(library, encoder, stale.tolist())
            store = TextTokenStore(library.root) if tokens and hasattr(encoder, "encode_text_states") else None
            finder: PhotoFinder | None = None
            for items in batched(read_corpus(path), batch_size):
                batch = [item.text for item in items]
                if finder is None and any(item.image for item in items):  # the library's paths, read once
                    finder = PhotoFinder(((i, p) for i, p, _ in library.store.image_paths()), library.roots)
                links = [finder.resolve(item.image) for item in items] if finder is not None else None
                if store is not None:
                    vectors, states, mask, _ = encoder.encode_text_states(batch)
                    ids = library.add_texts(batch, vectors, source, encoder.name, image_ids=links)
                    lengths = mask.sum(1).tolist()
                    store.width = int(states.shape[-1])  # the text tower's: 384 MiniLM, 768 MPNet
                    store.write(ids, batch, [np.asarray(st[:n]) for st, n in zip(states, lengths)])
                else:
                    vectors = encoder.encode_texts(batch)
                    library.add_texts(batch, vectors, source, encoder.name, image_ids=links)
                report.indexed += len(batch)
                if progress:
                    progress(report.indexed, 0)
            library.save("texts")
            if finder is not None:
                report.linked, report.unresolved, report.ambiguous = finder.linked, finder.unresolved, finder.ambiguous
                warn_unlinked(source, finder)
        except (OSError, StoreError, VectorIndexError) as e:
            if isinstance(e, OSError) and e.errno not in WRITE_ERRNOS:
                raise
            raise write_failure(library, e) from e
    report.seconds = time.perf_counter() - t0
    return report
