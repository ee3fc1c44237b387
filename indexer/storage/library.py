"""A library folder: the SQLite store (library.db) plus one FAISS index per modality (images.faiss,
texts.faiss), all written with the model recorded in the store.

Consistency and crash safety:

* The store is the source of truth, vectors included: a batch's rows and their vectors are committed in one
  SQLite transaction (WAL), which also bumps the modality's generation (``meta["generation.images"]``).
  Whatever was committed survives a SIGKILL at any moment; at most the batch in flight is redone.
* A FAISS file is a cache of the store's vectors. It is replaced atomically (temp file, fsync, rename) at
  checkpoints and at the end of a run, and its sidecar records the generation it reflects.
* Opening an index compares that generation with the store's. On a mismatch (a run killed between two
  saves, a save interrupted between the file and its sidecar, an unreadable file) the index is patched
  from the store: vectors of committed rows it lacks are added from their stored blobs, vectors without a
  row are dropped. Readers (searches) patch only their copy in memory, so they always see the last
  committed state and never write; the writer also saves the patched file.
* One writer at a time: indexing, removing and repairing hold ``flock`` on ``<library>/index.lock`` for the
  whole run (``writing()``); a second writer fails fast naming the holder's pid. Searches take no lock.

Rows written before schema 2 have no vector blob: the writer back-fills them from the FAISS file. A row
with no vector anywhere is reported in ``unembedded`` (the indexer re-embeds it; ``xmodal check --repair``
too).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from xmodal.indexer.storage.index_choice import choose_index
from xmodal.indexer.storage.patch_tokens import PatchSpec, PatchStore
from xmodal.indexer.records import DecodedImage
from xmodal.indexer.storage.recovery import BACKUP_FILENAME
from xmodal.indexer.storage.store import Store, StoreError
from xmodal.indexer.storage.vector_index import VectorIndex, VectorIndexError

logger = logging.getLogger(__name__)

MODALITIES = ("images", "texts")
LOCK_FILENAME = "index.lock"
#: a reader (a search process) memory-maps index files at least this large, where FAISS can map the type:
#: it starts without reading the file and shares the pages with other search processes
MMAP_MIN_BYTES = 64 * 2**20


class LibraryError(Exception):
    """The library cannot be used as asked (wrong model, not a library, locked, not writable...)."""


def default_library_dir() -> Path:
    """$XMODAL_LIBRARY, else $XDG_DATA_HOME/xmodal/library (~/.local/share/xmodal/library)."""
    if os.environ.get("XMODAL_LIBRARY"):
        return Path(os.environ["XMODAL_LIBRARY"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "xmodal" / "library"


def dim_problem(dim: Any, vector_dims: set[int]) -> str | None:
    """What is wrong with the model dim recorded in a library's meta, given its stored vectors' dims: None
    when it is a whole number >= 8 that the vectors agree with."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 8:
        return f"its model dim {dim!r} is not a whole number of at least 8"
    if vector_dims - {dim}:
        return f"its model dim is {dim} but its stored vectors have {', '.join(map(str, sorted(vector_dims)))}"
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def store_rescorer(store: Store, modality: str, dim: int):
    """ids -> their exact vectors from `store` (NaN rows for ids that have none): what a compressed index
    re-ranks its shortlist with (VectorIndex ``refine``)."""
    def rescore(ids: np.ndarray) -> np.ndarray:
        got = store.get_vectors(modality, [int(i) for i in ids], dim)
        out = np.full((len(ids), dim), np.nan, np.float32)
        for row, i in enumerate(ids):
            v = got.get(int(i))
            if v is not None:
                out[row] = v
        return out
    return rescore


class Library:
    """Open (or with create=True, make) the library at `root`."""

    def __init__(self, root: str | os.PathLike, create: bool = False):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(f"{self.root} is a file, not a library folder; choose another --library")
        if create:
            if self.root.is_dir() and any(self.root.iterdir()) and not (self.root / "library.db").exists():
                raise LibraryError(f"{self.root} is a non-empty folder that is not an xmodal library; "
                                   "choose an empty or new folder for --library")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LibraryError(f"cannot create library {self.root}: {e.strerror or e}") from e
        self.store = Store(self.root, create=create)
        self._indexes: dict[str, VectorIndex] = {}
        self._patch_store: PatchStore | None = None
        self._dim_checked: Any = None
        self._lock_fd: int | None = None
        self._lock_depth = 0
        #: per modality, ids of rows that have no vector anywhere (must be re-embedded)
        self.unembedded: dict[str, np.ndarray] = {}
        #: per modality, what the last sync found and fixed: {"added", "dropped", "backfilled", "rebuilt"}
        self.repaired: dict[str, dict[str, int]] = {}

    def close(self) -> None:
        self._release_lock()
        self.store.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the writer lock
    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILENAME

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the library's writer lock for the block (re-entrant within this object)."""
        if self._lock_depth == 0:
            self._acquire_lock()
            self.store.written = False
        self._lock_depth += 1
        try:
            yield
            if self._lock_depth == 1 and self.store.written:
                self.make_durable()
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._release_lock()

    @property
    def backup_path(self) -> Path:
        return self.root / BACKUP_FILENAME

    def make_durable(self) -> None:
        """After a writer's successful session: checkpoint the write-ahead log into library.db and keep a
        consistent copy of it (library.db.bak), so neither a lost ``-wal`` file nor a damaged database
        loses what was committed. A failure here is logged, never raised: the run itself succeeded."""
        try:
            self.store.checkpoint()
            self.store.backup(self.backup_path)
        except StoreError as e:
            logger.warning("%s; the library is fine, but its backup is older than this run", e)

    @property
    def is_writer(self) -> bool:
        return self._lock_depth > 0

    def writer_pid(self) -> str | None:
        """The pid of another process holding the writer lock now ("unknown" if it wrote none), or None when
        nobody does. Probes without taking the lock, so a command can refuse before loading a model."""
        if self.is_writer:
            return None
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return None  # no lock file (never written to) or unreadable: nobody can be holding it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                return None
            try:
                return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                return "unknown"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def ensure_no_writer(self) -> None:
        """Raise the writer lock's LibraryError now if another process is writing (see writer_pid)."""
        pid = self.writer_pid()
        if pid is not None:
            raise LibraryError(f"library {self.root} is being indexed by another process (pid {pid}); wait for "
                               "it to finish (or stop it), then run the command again")

    def _acquire_lock(self) -> None:
        if self.store.read_only:
            raise LibraryError(f"library {self.root} is on read-only media (or not writable by this user): it can "
                               "be searched, not changed; nothing was changed")
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LibraryError(f"cannot write to library {self.root}: {e.strerror or e} "
                               f"({'read-only' if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else 'I/O error'}); "
                               "nothing was changed") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise LibraryError(f"cannot lock library {self.root}: {e.strerror or e}") from e
            try:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                pid = "unknown"
            os.close(fd)
            raise LibraryError(f"library {self.root} is being indexed by another process (pid {pid}); wait for "
                               "it to finish (or stop it), then run the command again") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only informative
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None
                self._lock_depth = 0

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> str | None:
        return self.store.get_meta("model")

    @property
    def dim(self) -> int | None:
        dim = self.store.get_meta("dim")
        if dim is None:
            return None
        if dim != self._dim_checked:  # checked once per value: the stored vectors' length is one query
            problem = dim_problem(dim, self.store.vector_dims())
            if problem:
                raise LibraryError(f"{self.store.db_path}: {problem} (hand-edited or damaged); run "
                                   "`xmodal check --repair` to put back library.db.bak")
            self._dim_checked = dim
        return int(dim)

    def bind_model(self, name: str, dim: int) -> None:
        """Record the model on first use; refuse a different one later (vectors would be incomparable)."""
        current = self.model
        if current is None:
            self.store.set_meta("model", name)
            self.store.set_meta("dim", dim)
        elif current != name:
            raise LibraryError(f"library {self.root} was built with model {current!r}, not {name!r}; "
                               f"use --model {current} or a new --library")

    # ------------------------------------------------------------------ roots
    @property
    def roots(self) -> list[str]:
        """The folders (or files) this library indexes; `xmodal index` with no path refreshes them all."""
        return list(self.store.get_meta("roots", []))

    def add_roots(self, paths: Sequence[str]) -> list[str]:
        """Record `paths` as roots, by their real path (a root given through a symbolic link is the folder it
        points at, so it is never walked twice); a root inside another is not recorded twice. Returns the
        roots."""
        roots = self.roots
        for p in paths:
            p = os.path.realpath(p)
            if any(_under(p, r) for r in roots):
                continue
            roots = [r for r in roots if not _under(r, p)] + [p]
        roots.sort()
        if roots != self.roots:
            self.store.set_meta("roots", roots)
            self.store.checkpoint()  # the roots reach library.db now: a lost -wal must not lose them
        return roots

    def remove_root(self, path: str) -> int:
        """Forget root `path` and drop its photos (rows and vectors). Returns how many photos went."""
        roots = self.roots
        path = os.path.abspath(path)
        if path not in roots:
            path = os.path.realpath(path)  # roots are recorded by their real path
        if path not in roots:
            known = ", ".join(roots) or "none"
            raise LibraryError(f"{path} is not a root of library {self.root} (roots: {known}); "
                               "give one of them exactly")
        with self.writing():
            others = [r for r in roots if r != path]
            doomed = [i for i, p, _ in self.store.image_paths()
                      if _under(p, path) and not any(_under(p, r) for r in others)]
            if doomed and self.dim is not None:
                self.delete_images(doomed)
                self.save("images")
            self.store.set_meta("roots", others)
        return len(doomed)

    # ------------------------------------------------------------------ vector indexes
    def index_path(self, modality: str) -> Path:
        return self.root / f"{modality}.faiss"

    def vector_index(self, modality: str) -> VectorIndex:
        """The modality's FAISS index, brought up to the store's committed state (see module doc)."""
        if modality not in self._indexes:
            dim = self.dim
            if dim is None:
                raise LibraryError(f"library {self.root} holds no vectors yet; run `xmodal index PATH` first")
            path = self.index_path(modality)
            index = None
            if path.exists():
                try:
                    mmap = not self.is_writer and path.stat().st_size >= MMAP_MIN_BYTES
                    index = VectorIndex.load(path, mmap=mmap)
                except VectorIndexError as e:
                    logger.warning("%s; rebuilding it from the store", e)
            if index is None or index.dim != dim:
                index = VectorIndex.create(dim, choose_index(0, dim))
            self._indexes[modality] = index
            self.sync(modality)
            self._indexes[modality].rescore = self._rescorer(modality)
        return self._indexes[modality]

    def _rescorer(self, modality: str):
        return store_rescorer(self.store, modality, self.dim)

    def forget_index(self, modality: str) -> None:
        """Drop the loaded index; the next `vector_index` call loads the saved file and patches it."""
        self._indexes.pop(modality, None)

    def sync(self, modality: str) -> dict[str, int]:
        """Make the loaded index hold exactly the vectors of the store's committed rows (see module doc).

        A reader skips the work when the generations agree; the writer always compares the id sets, fixes
        its copy, back-fills legacy rows' blobs, and saves the index if anything changed."""
        index = self._indexes[modality]
        generation, ids, has = self.store.vector_state(modality)
        fixed = {"added": 0, "dropped": 0, "backfilled": 0, "rebuilt": 0}
        self.repaired[modality] = fixed
        if index.generation == generation and not self.is_writer:
            self.unembedded[modality] = np.empty(0, np.int64)
            return fixed
        if index.read_only:  # memory-mapped, and behind the store: patch a private in-memory copy instead
            index = VectorIndex.load(self.index_path(modality))
            self._indexes[modality] = index
        held = index.ids()
        if len(np.unique(held)) != len(held):  # duplicate ids: cannot patch in place, rebuild from scratch
            index = VectorIndex.create(index.dim, choose_index(0, index.dim))
            self._indexes[modality] = index
            held = index.ids()
            fixed["rebuilt"] = 1
        extra = np.setdiff1d(held, ids)
        if len(extra):
            index.remove(extra)
            fixed["dropped"] = int(len(extra))
        in_index = np.isin(ids, held)
        if self.is_writer:
            legacy = ids[~has & in_index]  # schema-1 rows: their only vector is in the FAISS file
            if len(legacy):
                self.store.set_vectors(modality, dict(zip(legacy.tolist(), index.reconstruct(legacy))))
                fixed["backfilled"] = int(len(legacy))
                generation += 1
        missing = ids[~in_index]
        vectors = self.store.get_vectors(modality, missing.tolist(), index.dim) if len(missing) else {}
        if vectors:
            add_ids = np.fromiter(vectors, dtype=np.int64, count=len(vectors))
            stacked = np.stack([vectors[int(i)] for i in add_ids]).astype(np.float32)
            if not index.is_trained:
                index.train(stacked)
            index.add(add_ids, stacked)
            fixed["added"] = len(vectors)
        self.unembedded[modality] = np.setdiff1d(missing, np.fromiter(vectors, dtype=np.int64, count=len(vectors)))
        if len(self.unembedded[modality]):
            logger.warning("%s: %d %s rows have no vector at all; they must be re-embedded",
                           self.root, len(self.unembedded[modality]), modality)
        changed = any(fixed.values())
        if changed:
            logger.info("%s: %s index patched from the store (%s)", self.root, modality, fixed)
        index.generation = generation
        if self.is_writer and (changed or not self.index_path(modality).exists()):
            self.save(modality)
        return fixed

    def reconcile(self) -> dict[str, int]:
        """Writer-side: sync every modality's index with the store. Returns how many vectors each patch
        added or dropped (modalities with nothing to do are left out)."""
        out = {}
        if self.dim is None:
            return out
        for modality in MODALITIES:
            self._indexes.pop(modality, None)
            self.vector_index(modality)
            fixed = self.repaired[modality]
            if fixed["added"] or fixed["dropped"]:
                out[modality] = fixed["added"] + fixed["dropped"]
        return out

    def save(self, modality: str) -> None:
        """Atomically save the modality's index with the store generation it reflects."""
        if modality in self._indexes:
            index = self._indexes[modality]
            index.save(self.index_path(modality), generation=index.generation)

    def rebuild_index(self, modality: str, factory: str | None = None, memory_budget_bytes: int | None = None,
                      queries: np.ndarray | None = None) -> dict:
        """Rebuild the modality's FAISS index from the vectors in the store -- nothing is re-embedded -- as
        `factory` (default: `choose_index` for its size), train it on a sample of the stored vectors (read page
        by page: the collection is never in memory at once), tune nprobe /
        efSearch to recall@10 >= 0.95 against exact search (for self-queries and for `queries`, typically text
        embeddings of index_tuning.TUNING_QUERIES), and save it. The caller holds the writer lock."""
        from xmodal.indexer.storage.index_choice import train_size
        from xmodal.indexer.storage.index_tuning import tune_search_params
        from xmodal.indexer.storage.stored_vectors import StoredVectors

        dim = self.dim
        if dim is None:
            raise LibraryError(f"library {self.root} holds no vectors yet; nothing to rebuild")
        generation, ids, has = self.store.vector_state(modality)
        vectors = StoredVectors(self.store, modality, ids[has], dim)  # read page by page, never all at once
        factory = factory or choose_index(len(vectors), dim, memory_budget_bytes)
        index = VectorIndex.create(dim, factory)
        index.rescore = self._rescorer(modality)
        if not index.is_trained:
            index.train(vectors.sample(train_size(factory, len(vectors))))
        for part, page in vectors.pages():
            index.add(part, page)
        tuning = tune_search_params(index, vectors, queries=queries, exact_search=vectors.exact_search)
        index.generation = generation
        self._indexes[modality] = index
        self.save(modality)
        logger.info("%s: %s index rebuilt as %s over %d vectors (%s)", self.root, modality, factory, len(vectors),
                    tuning)
        return {"modality": modality, "factory": factory, "vectors": int(len(vectors)), **tuning}

    # ------------------------------------------------------------------ writes (store first, then FAISS)
    def _advance(self, modality: str) -> None:
        self._indexes[modality].generation = self.store.generation(modality)

    def add_images(self, images: Sequence[DecodedImage], vectors: np.ndarray, model: str) -> tuple[list[int], list[int]]:
        """Commit `images` with their vectors (replacing rows with the same path), then update the index.
        Returns (new ids, replaced ids)."""
        index = self.vector_index("images")
        ids, replaced = self.store.replace_images(images, model, vectors)
        if replaced:
            index.remove(np.asarray(replaced, np.int64))
        index.add(np.asarray(ids, np.int64), np.asarray(vectors, np.float32))
        self._advance("images")
        return ids, replaced

    def move_images(self, moves: Sequence[tuple[int, DecodedImage]]) -> None:
        """Point existing rows at their photos' new paths; ids and vectors are kept."""
        if moves:
            index = self.vector_index("images")
            self.store.move_images(moves)
            index.generation = self.store.generation("images")

    def delete_images(self, ids: Sequence[int]) -> None:
        index = self.vector_index("images")
        self.store.delete_images(ids)
        index.remove(np.asarray(ids, np.int64))
        self._advance("images")

    def add_texts(self, texts: Sequence[str], vectors: np.ndarray, source: str, model: str,
                  image_ids: Sequence[int | None] | None = None) -> list[int]:
        """Add texts with their vectors (store, then index), each linked to the photo ``image_ids[i]`` if given."""
        index = self.vector_index("texts")
        ids = self.store.add_texts(texts, source, model, vectors, image_ids=image_ids)
        index.add(np.asarray(ids, np.int64), np.asarray(vectors, np.float32))
        self._advance("texts")
        return ids

    def replace_texts(self, old_ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray, source: str,
                      model: str, image_ids: Sequence[int | None] | None = None) -> list[int]:
        """Put `texts` (with their vectors, source and photo links) in place of the rows `old_ids` in one store
        transaction (a crash keeps either the old rows or the new), then in the index; returns the new ids."""
        index = self.vector_index("texts")
        with self.store.transaction():
            self.store.delete_texts(old_ids)
            ids = self.store.add_texts(texts, source, model, vectors, image_ids=image_ids)
        index.remove(np.asarray(old_ids, np.int64))
        index.add(np.asarray(ids, np.int64), np.asarray(vectors, np.float32))
        self._advance("texts")
        return ids

    def delete_texts_from_source(self, source: str) -> list[int]:
        index = self.vector_index("texts")
        ids = self.store.delete_texts_from_source(source)
        index.remove(np.asarray(ids, np.int64))
        self._advance("texts")
        return ids

    def patch_store(self, spec: PatchSpec | None = None) -> PatchStore:
        """The library's reranker patch tokens; with `spec`, made for that projection (others are dropped)."""
        if self._patch_store is None or (spec is not None and self._patch_store.spec != spec):
            self._patch_store = PatchStore(self.root, spec)
        return self._patch_store

    def sizes(self) -> dict[str, int]:
        """Bytes on disk of each library file."""
        return {p.name: p.stat().st_size for p in sorted(self.root.iterdir()) if p.is_file()}


def write_failure(library: Library, exc: BaseException) -> LibraryError:
    """The one-line error for a library write that failed (disk full, read-only, I/O error)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    if isinstance(exc, VectorIndexError):  # it names the file and the cause already
        return LibraryError(f"{reason}; stopped, and everything committed before is kept: free space or fix "
                            "permissions, then run the same command again")
    return LibraryError(f"cannot write to library {library.root}: {reason}; stopped, and everything committed "
                        "before is kept: free space or fix permissions, then run the same command again")


__all__ = ["Library", "LibraryError", "MODALITIES", "default_library_dir", "write_failure", "StoreError"]
