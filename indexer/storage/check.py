"""Verify a library (`check_library`) and fix it (`repair`), for `xmodal check [--repair]`.

`check_library` only reads: the store, and the FAISS files exactly as they are on disk (not the copy a
search would patch in memory). It reports, per modality, rows without a vector in the index, vectors
without a row, duplicate vectors, an unreadable index file, an index file behind the store (generation),
rows whose vector is not stored (libraries from before schema 2), rows embedded with another model; the
indexed photos whose files vanished under a root that is there; and the roots that are not there at all (an
unplugged drive, an unmounted share), whose photos are kept and never called vanished; and the photos whose
reranker patch tokens fail their checksum (bit rot in patches.f16).

`repair` takes the writer lock and fixes what can be fixed without embedding (patching or rebuilding the
index from the vectors in the store, back-filling stored vectors from the index, dropping rows of vanished
files) and embeds again only rows that have no usable vector anywhere or come from another model; damaged
patch tokens are made again from the photos (vectors untouched). Photos
under a missing root are never dropped: not as vanished, and not when their row needs embedding again.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from xmodal.indexer.ingest.decode import DecodeError, read_image
from xmodal.indexer.ingest.pipeline import backfill_patches
from xmodal.indexer.ingest.reembed import rebuild_after_reembed, reembed_texts, sync_weights
from xmodal.indexer.models.patch_projector import PatchProjector, default_projector
from xmodal.indexer.models.base import Encoder
from xmodal.indexer.storage.library import MODALITIES, Library, LibraryError, _under, dim_problem
from xmodal.indexer.records import Skipped
from xmodal.indexer.storage.recovery import DatabaseDamaged, restore_backup
from xmodal.indexer.storage.revision import STALE_BELOW, finish_reembed, stale_ids
from xmodal.indexer.storage.store import Store
from xmodal.indexer.storage.vector_index import VectorIndex, VectorIndexError


@dataclass
class ModalityCheck:
    rows: int = 0
    vectors: int = 0
    store_generation: int = 0
    index_generation: int | None = None
    index_error: str | None = None
    rows_without_vector: list[int] = field(default_factory=list)
    vectors_without_row: list[int] = field(default_factory=list)
    duplicate_vectors: list[int] = field(default_factory=list)
    rows_without_stored_vector: list[int] = field(default_factory=list)
    wrong_model: list[int] = field(default_factory=list)
    earlier_weights: list[int] = field(default_factory=list)  # rows an unfinished re-embedding has still to redo


@dataclass
class CheckReport:
    library: str
    model: str | None = None
    dim: int | None = None
    schema_version: int = 0
    modalities: dict[str, ModalityCheck] = field(default_factory=dict)
    vanished: list[str] = field(default_factory=list)
    unreachable: dict[str, int] = field(default_factory=dict)  # missing root -> photos kept under it
    writer: str | None = None  # pid of a process indexing the library while it was checked
    corrupt_patches: list[int] = field(default_factory=list)  # photos whose reranker tokens fail their CRC

    @property
    def problems(self) -> list[str]:
        out = []
        for name, m in self.modalities.items():
            if m.index_error:
                out.append(f"{name}: index file unusable: {m.index_error}")
            if m.rows_without_vector:
                out.append(f"{name}: {len(m.rows_without_vector)} rows have no vector in the index file")
            if m.vectors_without_row:
                out.append(f"{name}: {len(m.vectors_without_row)} vectors in the index file have no row")
            if m.duplicate_vectors:
                out.append(f"{name}: {len(m.duplicate_vectors)} ids have more than one vector")
            if not m.index_error and m.rows != m.vectors:
                out.append(f"{name}: {m.rows} rows but {m.vectors} vectors")
            if not m.index_error and m.index_generation != m.store_generation and m.rows:
                out.append(f"{name}: index file is at generation {m.index_generation}, the store at "
                           f"{m.store_generation} (an interrupted run)")
            if m.rows_without_stored_vector:
                out.append(f"{name}: {len(m.rows_without_stored_vector)} rows have no vector in the store")
            if m.wrong_model:
                out.append(f"{name}: {len(m.wrong_model)} rows were embedded with another model than {self.model!r}")
            if m.earlier_weights:
                out.append(f"{name}: {len(m.earlier_weights)} rows carry vectors from {self.model!r}'s earlier "
                           "weights (an unfinished re-embedding: `xmodal index` or `check --repair` embeds them)")
        if self.vanished:
            out.append(f"images: {len(self.vanished)} indexed files no longer exist")
        if self.corrupt_patches:
            out.append(f"images: {len(self.corrupt_patches)} photos have damaged reranker patch tokens "
                       "(failing their checksum)")
        return out

    @property
    def notes(self) -> list[str]:
        """What is worth knowing but is not damage: roots that are not there now (their photos are kept)."""
        running = ([f"library is being indexed by another process (pid {self.writer}): what it has not "
                    "committed yet shows as problems; check again when it has finished"] if self.writer else [])
        return running + [f"images: root {root} not found (moved, or a drive not mounted?): its {n} photos are kept; "
                f"`xmodal remove {root}` drops them" for root, n in self.unreachable.items()]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"library": self.library, "ok": self.ok, "problems": self.problems, "model": self.model,
                "dim": self.dim, "schema_version": self.schema_version,
                "modalities": {k: asdict(v) for k, v in self.modalities.items()}, "vanished": self.vanished,
                "unreachable_roots": self.unreachable, "notes": self.notes, "writer_pid": self.writer,
                "corrupt_patches": self.corrupt_patches}


def missing_files(paths: Iterable[str], roots: Sequence[str], exists: Callable[[str], bool] = os.path.exists
                  ) -> tuple[list[str], dict[str, int]]:
    """Indexed photo paths -> (vanished: files missing under a root that exists, or under no known root;
    {root that does not exist: photos under it}). A missing root is an unplugged drive until the user says
    otherwise (`xmodal remove`): nothing under it counts as vanished. `exists` is injectable for tests."""
    roots = sorted(roots, key=len, reverse=True)  # the deepest root a path is under is its own
    root_there: dict[str, bool] = {}
    vanished, unreachable = [], {}
    for path in paths:
        root = next((r for r in roots if _under(path, r)), None)
        if root is not None:
            if root not in root_there:
                root_there[root] = exists(root)
            if not root_there[root]:
                unreachable[root] = unreachable.get(root, 0) + 1
                continue
        if not exists(path):
            vanished.append(path)
    return vanished, unreachable


def check_library(library: Library) -> CheckReport:
    """Verify `library` without changing anything (see module doc). A damaged library.db raises
    DatabaseDamaged (SQLite's quick_check reads every page, the tables this check reads no rows of too)."""
    store = library.store
    verdict = store.quick_check()  # a page SQLite cannot read raises DatabaseDamaged itself
    if verdict != "ok":
        raise DatabaseDamaged(f"{store.db_path} is damaged (SQLite's quick_check: {verdict}); run `xmodal check "
                              "--repair` to put back its backup, then `xmodal index` to catch up")
    report = CheckReport(library=str(library.root), model=library.model, dim=library.dim,
                         schema_version=store.schema_version, writer=library.writer_pid())
    for modality in MODALITIES:
        m = ModalityCheck()
        m.store_generation, ids, has = store.vector_state(modality)
        m.rows = len(ids)
        m.rows_without_stored_vector = ids[~has].tolist()
        if report.model is not None:
            m.wrong_model = store.ids_with_other_model(modality, report.model)
        m.earlier_weights = stale_ids(library, modality).tolist()
        path = library.index_path(modality)
        held = np.empty(0, np.int64)
        if path.exists():
            try:
                damaged = VectorIndex.verify(path)
                if damaged:
                    raise VectorIndexError(damaged)
                index = VectorIndex.load(path)
                held = index.ids()
                m.vectors, m.index_generation = index.ntotal, index.generation
                if report.dim is not None and index.dim != report.dim:
                    m.index_error = f"{path} has dim {index.dim}, the library's model {report.dim}"
            except VectorIndexError as e:
                m.index_error = str(e).splitlines()[0]
        elif m.rows:
            m.index_error = f"{path} is missing"
        uniq, counts = np.unique(held, return_counts=True)
        m.duplicate_vectors = uniq[counts > 1].tolist()
        if not m.index_error:
            m.rows_without_vector = np.setdiff1d(ids, held).tolist()
            m.vectors_without_row = np.setdiff1d(held, ids).tolist()
        report.modalities[modality] = m
    report.vanished, report.unreachable = missing_files((p for _, p, _ in store.image_paths()), library.roots)
    report.corrupt_patches = corrupt_patches(library)
    return report


def corrupt_patches(library: Library) -> list[int]:
    """Ids of the photos whose stored reranker patch tokens fail their CRC (reads every slot)."""
    patches = library.patch_store()
    if not patches.available:
        return []
    out: list[int] = []
    rows = list(library.store.image_digests())
    for start in range(0, len(rows), 1024):
        page = rows[start:start + 1024]
        bad = patches.corrupt([i for i, _, _ in page], [sha for _, _, sha in page])
        out.extend(i for (i, _, _), b in zip(page, bad) if b)
    return out


@dataclass
class RepairReport:
    patched: dict[str, dict[str, int]] = field(default_factory=dict)  # per modality: added/dropped/backfilled/rebuilt
    removed_vanished: int = 0
    rebuilt: list[dict] = field(default_factory=list)  # damaged index files rebuilt from the store
    kept_unreachable: int = 0  # rows needing a new vector whose root is missing: kept for when it is back
    reembedded: int = 0
    patch_tokens: int = 0  # photos whose damaged reranker patch tokens were made again
    failed: list[Skipped] = field(default_factory=list)  # rows dropped: no usable vector and file unusable

    def to_json(self) -> dict:
        return {"patched": self.patched, "removed_vanished": self.removed_vanished,
                "kept_unreachable": self.kept_unreachable, "rebuilt": self.rebuilt, "reembedded": self.reembedded,
                "patch_tokens": self.patch_tokens,
                "failed": [{"path": s.path, "reason": s.reason} for s in self.failed]}


def restore_if_damaged(library_dir: str | os.PathLike) -> Path | None:
    """For `check --repair`, before the library is opened: when library.db is damaged (it will not open, fails
    SQLite's quick_check, or its schema version or model dim is nonsense: hand-edited), put its backup in
    place (store.restore_backup). Returns where the damaged file was kept, or None when it was sound. Raises
    StoreError when it is damaged and has no backup."""
    try:
        with Store(library_dir) as store:
            verdict = store.quick_check()
            dim = store.get_meta("dim")
            if verdict == "ok" and dim is not None and dim_problem(dim, store.vector_dims()):
                verdict = "a wrong model dim"  # hand-edited or damaged meta: the backup's is right
    except DatabaseDamaged:
        return restore_backup(library_dir)
    return None if verdict == "ok" else restore_backup(library_dir)


def repair(library: Library, load_encoder: Callable[[], Encoder],
           projector: Callable[[str], PatchProjector | None] = default_projector) -> RepairReport:
    """Fix `library` (see module doc). `load_encoder` is called only if something must be embedded again
    (rows, or damaged patch tokens: made again with `projector(model)`, the reranker's projection)."""
    out = RepairReport()
    with library.writing():
        if library.dim is None:
            return out
        damaged = [m for m in MODALITIES
                   if library.index_path(m).exists() and VectorIndex.verify(library.index_path(m))]
        for modality in damaged:  # bit rot: the store's vectors are the truth; rebuild the file from them
            library.index_path(modality).unlink()
        library.reconcile()  # patches/rebuilds the index files from the store, back-fills stored vectors
        for modality in damaged:
            if library.store.vector_state(modality)[2].any():
                out.rebuilt.append(library.rebuild_index(modality))
        out.patched = {k: v for k, v in library.repaired.items() if any(v.values())}
        model = library.model
        store = library.store
        paths = {p: i for i, p, _ in store.image_paths()}
        gone, unreachable = missing_files(paths, library.roots)
        vanished = [paths[p] for p in gone]
        if vanished:
            library.delete_images(vanished)
            out.removed_vanished = len(vanished)
        marks = store.get_meta(STALE_BELOW)
        underway = marks is not None  # a re-embedding for new weights, unfinished

        def todo(modality: str) -> list[int]:
            return sorted(set(library.unembedded.get(modality, np.empty(0)).tolist())
                          | set(store.ids_with_other_model(modality, model))
                          | set(stale_ids(library, modality).tolist()))

        redo, redo_texts = todo("images"), todo("texts")
        if redo or redo_texts:
            encoder = load_encoder()
            if encoder.name != model:
                raise LibraryError(f"library {library.root} is built with {model!r}; repair needs that model, "
                                   f"not {encoder.name!r}")
            if sync_weights(library, encoder):  # other weights than the stale rows were marked for: all rows now
                underway, redo, redo_texts = True, todo("images"), todo("texts")
                marks = store.get_meta(STALE_BELOW)
            size = getattr(encoder, "preprocess", None)
            for record in store.get_images(redo):
                if any(_under(record.path, root) for root in unreachable):
                    out.kept_unreachable += 1  # its file is on a drive that is not there now: never dropped
                    continue
                try:
                    image = read_image(record.path, target_size=size.size if size is not None else 224)
                except DecodeError as e:
                    library.delete_images([record.id])
                    out.failed.append(Skipped(record.path, e.reason))
                    continue
                library.add_images([image], encoder.encode_images([image.image]), model)
                out.reembedded += 1
            out.reembedded += reembed_texts(library, encoder, redo_texts)  # they keep the photos they describe
        for modality in MODALITIES:
            library.save(modality)
        if underway and finish_reembed(library):
            rebuild_after_reembed(library, marks=marks)
        if corrupt_patches(library):
            encoder = load_encoder()
            proj = projector(encoder.name)
            if proj is not None and hasattr(encoder, "encode_images_with_patches"):
                out.patch_tokens = backfill_patches(library, encoder, proj, verify=True)
    return out
