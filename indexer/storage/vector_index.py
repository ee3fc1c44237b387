"""One modality's vectors in a FAISS index, keyed by the store's row ids.

Vectors are L2-normalised float32, so the inner product is the cosine similarity. The FAISS index built from
a factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ``"OPQ64_256,IVF16384_HNSW32,PQ64x8"``...) is
wrapped in ``faiss.IndexIDMap2``: search returns store ids and vectors can be reconstructed by id.

On disk an index is two files: ``<path>`` (``faiss.write_index``) and ``<path>.json``, a sidecar holding
``{factory, dim, ntotal, search_params, generation}`` (``generation``: the store generation the vectors
reflect, see ``indexer.library``; ``None`` when not given). Both are written atomically (temp file, fsync, rename, fsync of
the directory). A crash between the two renames leaves a pair whose counts disagree; ``load`` detects it and
raises ``IndexMismatchError``, and the cure is to rebuild the index.

Removal needs care, because ``IndexIDMap2`` assumes the wrapped index renumbers its internal positions on
removal, and not all do:

* Flat renumbers: removal is native.
* IVF-based indexes (``IVF…,Flat``, ``OPQ…,IVF…,PQ…``) remove entries but keep old positions, so after the
  native removal the inverted lists' positions are renumbered here (one pass over the list ids).
* HNSW cannot remove at all: the index is rebuilt from the kept vectors. That costs a full build, so batch
  removals.

An index loaded with ``mmap=True`` is read-only: search it, do not modify it. It is a plain
``faiss.IndexIDMap``: the file is saved with that type's tag (the layout of the two is the same), so FAISS does
not build ``IndexIDMap2``'s id -> position hash map, which a search never uses and which costs about 40 bytes
per vector (400 MB of a search process's memory at 10M photos). A writable load reads the same file as an
``IndexIDMap2``; files saved with the ``IndexIDMap2`` tag (before 2026-11-29) load either way.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
NORM_TOLERANCE = 1e-3
#: Search-time parameters that are valid names but simply do not apply to some index types (e.g. Flat).
KNOWN_SEARCH_PARAMS = frozenset({"nprobe", "efSearch", "ht", "max_codes", "quantizer_efSearch"})
#: Not a FAISS parameter: fetch k * refine candidates and re-score them with exact vectors (``rescore``).
REFINE = "refine"


FEW_QUERIES = 4  # searches of at most this many queries run single-threaded (see VectorIndex.search)


class VectorIndexError(Exception):
    """A vector index file is missing, unreadable, or cannot do what was asked."""


class IndexMismatchError(VectorIndexError):
    """A vector index file and its ``.json`` sidecar disagree (typically a crash between the two writes)."""


IDMAP_TAG, IDMAP2_TAG = b"IxMp", b"IxM2"  # FAISS's type tags (first 4 bytes) of IndexIDMap / IndexIDMap2 files


def _retag(path: Path, old: bytes, new: bytes) -> None:
    with open(path, "rb+") as f:
        if f.read(len(old)) == old:
            f.seek(0)
            f.write(new)


class _Retagged:
    """A FAISS read callback over an open file that presents a leading tag `old` as `new`."""

    def __init__(self, f, old: bytes, new: bytes) -> None:
        head = f.read(len(old))
        self.f, self.pending = f, new if head == old else head

    def __call__(self, n: int) -> bytes:
        served, self.pending = self.pending[:n], self.pending[n:]
        return served + self.f.read(n - len(served)) if len(served) < n else served


def file_digest(path: Path, chunk: int = 4 << 20) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def valid_search_params(params: Any, side: Path) -> dict[str, Any]:
    """The search parameters of a sidecar that are well-formed (a name and a finite number >= 0); the rest
    are dropped with a warning (a hand-edited sidecar: the index then searches with its defaults)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        log.warning("%s: search_params %r is not a mapping; dropped", side, params)
        return {}
    good = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            log.warning("%s: search parameter %s=%r is not a number; dropped", side, name, value)
        else:
            good[name] = value
    return good


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def write_error(path: Path, exc: BaseException, needed: int = 0) -> VectorIndexError:
    """A failed index write -> a one-line VectorIndexError without FAISS internals. FAISS reports a full disk
    as an assertion on fwrite's count (`'ret == (size * 4)' failed`), so the disk's free space (asked while
    the partial file still holds its share) tells a full disk from another failure."""
    errno_ = getattr(exc, "errno", None)
    if errno_ in FULL_ERRNOS or (errno_ is None and disk_full(path.parent, needed)):
        reason = "the disk is full"
    elif isinstance(exc, OSError):
        reason = f"{exc.strerror or exc}"
    else:
        reason = "the write failed (a disk quota or an I/O error?)"
    return VectorIndexError(f"cannot write {path}: {reason}")


def disk_full(folder: Path, needed: int = 0) -> bool:
    """Whether the file system of `folder` has less free space than `needed` bytes (at least 1 MiB)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows), or the folder went away
        return False
    return st.f_bavail * st.f_frsize < max(int(needed), 1 << 20)


def _sidecar(path: Path) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


class VectorIndex:
    """A FAISS ``IndexIDMap2`` over a factory-built index, plus the metadata needed to save and reload it."""

    def __init__(self, index: faiss.IndexIDMap2, factory: str, search_params: dict[str, Any] | None = None,
                 read_only: bool = False) -> None:
        """Wrap an existing ``IndexIDMap2``; use ``create`` or ``load`` rather than calling this directly."""
        self._index = index
        self._factory = factory
        self._search_params: dict[str, Any] = {}
        self._read_only = read_only
        self._id_bound: int | None = None  # >= every id held (stale-high after removals); None = not computed
        self.generation: int | None = None  # the store generation these vectors reflect (saved in the sidecar)
        #: ids -> (len(ids), dim) exact float32 vectors (a library reads them from its store). With the
        #: ``refine`` search parameter above 1, compressed codes only shortlist candidates and these rank them.
        self.rescore: Callable[[np.ndarray], np.ndarray] | None = None
        if search_params:
            self.set_search_params(**search_params)

    # -- construction

    @classmethod
    def create(cls, dim: int, factory: str = "Flat") -> VectorIndex:
        """An empty inner-product index of ``dim`` dimensions built with ``faiss.index_factory``."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        try:
            inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(
                f"FAISS cannot build index {factory!r} for dim {dim}: {str(exc).splitlines()[0]}; "
                "see indexer.index_choice.choose_index for valid strings"
            ) from exc
        return cls(faiss.IndexIDMap2(inner), factory)

    # -- properties

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def factory(self) -> str:
        return self._factory

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def read_only(self) -> bool:
        """True when loaded memory-mapped (``load(mmap=True)`` on a type FAISS can map)."""
        return self._read_only

    @property
    def lists_file(self) -> str | None:
        """The file holding this IVF index's inverted lists when they are on disk (memory-mapped), else None."""
        ivf = faiss.try_extract_index_ivf(self._index.index)
        if ivf is None:
            return None
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        return str(lists.filename) if isinstance(lists, faiss.OnDiskInvertedLists) else None

    @property
    def search_params(self) -> dict[str, Any]:
        return dict(self._search_params)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"VectorIndex(factory={self._factory!r}, dim={self.dim}, ntotal={self.ntotal})"

    # -- validation

    def _vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(
                f"{what} must have shape (n, {self.dim}) (expected dim {self.dim}), got {vectors.shape}"
            )
        if vectors.dtype != np.float32:
            raise ValueError(f"{what} must be float32, got {vectors.dtype}; convert with .astype(np.float32)")
        return np.ascontiguousarray(vectors)

    @staticmethod
    def _ids(ids: np.ndarray | Sequence[int]) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.size == 0:
            return np.empty(0, dtype=np.int64)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if (arr < 0).any():
            raise ValueError(f"ids must be >= 0 (-1 is FAISS padding), got {int(arr.min())}")
        return arr

    def _writable(self) -> None:
        if self._read_only:
            raise VectorIndexError(
                f"this {self._factory} index was loaded with mmap=True and is read-only; "
                "load it with mmap=False to modify it"
            )
        self._lists_to_memory()

    def _lists_to_memory(self) -> None:
        """An index whose inverted lists are on disk (built by indexer.distributed.ondisk) is never changed in
        place (FAISS's on-disk lists are not crash-safe, and crash when grown): before the first change its
        lists are copied into memory, and the next save writes an ordinary index file."""
        ivf = faiss.try_extract_index_ivf(self._index.index)
        if ivf is None:
            return
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if not isinstance(lists, faiss.OnDiskInvertedLists):
            return
        log.info("copying the on-disk inverted lists of a %s index into memory to change it", self._factory)
        memory = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if size:
                memory.add_entries(list_no, size, lists.get_ids(list_no), lists.get_codes(list_no))
        ivf.replace_invlists(memory, True)
        memory.this.disown()

    # -- write

    def train(self, vectors: np.ndarray) -> None:
        """Train the quantizers (IVF centroids, PQ codebooks, OPQ rotation) on ``vectors``; no-op if trained."""
        self._writable()
        if self.is_trained:
            log.debug("%s index needs no training", self._factory)
            return
        vectors = self._vectors(vectors, "training vectors")
        try:
            self._index.train(vectors)
        except RuntimeError as exc:
            raise ValueError(
                f"training {self._factory} on {len(vectors)} vectors failed: {str(exc).splitlines()[0]}; "
                "give more training vectors or choose a smaller index (indexer.index_choice.choose_index)"
            ) from exc

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (float32, L2-normalised, shape (n, dim)) under ``ids`` (int64, unique, not yet present)."""
        self._writable()
        ids = self._ids(ids)
        vectors = self._vectors(vectors, "vectors")
        if len(ids) != len(vectors):
            raise ValueError(f"got {len(ids)} ids for {len(vectors)} vectors; pass one id per vector")
        if len(ids) == 0:
            return
        if not self.is_trained:
            raise VectorIndexError(f"{self._factory} index is not trained; call train(vectors) before add()")
        norms = np.linalg.norm(vectors, axis=1)
        if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
            bad = int(np.argmax(np.abs(norms - 1.0)))
            raise ValueError(
                f"vectors must be L2-normalised (row {bad} has norm {norms[bad]:.4f}); normalise before adding"
            )
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids passed to add() contain duplicates; each vector needs its own id")
        if self._id_bound is None:
            self._id_bound = int(self.ids().max()) if self.ntotal else -1
        if int(ids.min()) <= self._id_bound:  # store ids only grow, so this full check is the rare path
            present = ids[np.isin(ids, self.ids())]
            if len(present):
                raise ValueError(
                    f"ids already in the index: {present[:5].tolist()}; remove() them first to replace their vectors"
                )
        self._index.add_with_ids(vectors, ids)
        self._id_bound = max(self._id_bound, int(ids.max()))

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove the vectors with these ids (absent ids are ignored); returns how many were removed."""
        self._writable()
        ids = self._ids(ids)
        if len(ids) == 0 or self.ntotal == 0:
            return 0
        held = self.ids()
        doomed = np.isin(held, ids)
        if not doomed.any():
            return 0
        if self._hnsw_inside():
            return self._rebuild_without(held, doomed)
        ivf = faiss.try_extract_index_ivf(self._index.index)
        if ivf is None:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        removed_positions = np.flatnonzero(doomed)  # sorted
        direct_map = ivf.direct_map.type
        if direct_map != faiss.DirectMap.NoMap:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        invlists = ivf.invlists
        for list_no in range(ivf.nlist):
            size = invlists.list_size(list_no)
            if size:  # IVF keeps the old positions; shift them down like IndexIDMap2's id_map was compacted
                positions = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
                positions -= np.searchsorted(removed_positions, positions)
        if direct_map != faiss.DirectMap.NoMap:
            ivf.set_direct_map_type(direct_map)
        return removed

    def _hnsw_inside(self) -> bool:
        return isinstance(faiss.downcast_index(self._index.index), faiss.IndexHNSW)

    def _rebuild_without(self, held: np.ndarray, doomed: np.ndarray) -> int:
        log.info("rebuilding %s index of %d vectors to remove %d (HNSW cannot delete)",
                 self._factory, self.ntotal, int(doomed.sum()))
        inner = self._index.index
        keep = ~doomed
        vectors = inner.reconstruct_n(0, inner.ntotal)[keep]
        fresh = VectorIndex.create(self.dim, self._factory)
        if len(vectors):
            fresh._index.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(held[keep]))
        self._index = fresh._index
        self.set_search_params(**self._search_params)
        return int(doomed.sum())

    def set_search_params(self, **params: Any) -> None:
        """Set search-time parameters such as ``nprobe`` (IVF) or ``efSearch`` (HNSW).

        Known parameters that do not apply to this index type (``nprobe`` on Flat) are ignored; unknown
        names raise ``ValueError``. Applied values are saved with the index and restored by ``load``.
        """
        space = faiss.ParameterSpace()
        for name, value in params.items():
            if name == REFINE:
                if not isinstance(value, (int, np.integer)) or value < 1:
                    raise ValueError(f"search parameter refine={value!r} must be a whole number >= 1")
                self._search_params[name] = int(value)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"search parameter {name}={value!r} must be a number")
            try:
                space.set_index_parameter(self._index, name, value)
            except RuntimeError as exc:
                if name in KNOWN_SEARCH_PARAMS:
                    log.debug("search parameter %s does not apply to a %s index; ignored", name, self._factory)
                    continue
                raise ValueError(
                    f"search parameter {name}={value!r} is not valid for a {self._factory} index "
                    f"({str(exc).splitlines()[0]}); known parameters: {sorted(KNOWN_SEARCH_PARAMS)}"
                ) from exc
            self._search_params[name] = value

    # -- read

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ids per query by inner product: ``(scores float32 (q, k'), ids int64 (q, k'))``.

        ``k' = min(k, ntotal)``, so there is no -1 padding for an exhaustive index; an empty index gives
        arrays shaped (q, 0). A 1-D query is treated as one row. Approximate indexes may still find fewer
        than ``k'`` neighbours for some query: those slots hold id -1 and score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None, :]
        queries = self._vectors(queries, "queries")
        k_eff = min(k, self.ntotal)
        if k_eff == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        refine = int(self._search_params.get(REFINE, 1))
        if refine > 1 and self.rescore is not None:
            return self._refined(queries, k_eff, min(self.ntotal, k_eff * refine))
        return self._search(queries, k_eff)

    def _refined(self, queries: np.ndarray, k: int, shortlist: int) -> tuple[np.ndarray, np.ndarray]:
        """The `shortlist` best by compressed codes, re-ranked by exact inner product with `rescore`'s vectors."""
        _, cand = self._search(queries, shortlist)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(cand):
            row = row[row >= 0]
            if not len(row):
                continue
            exact = self.rescore(row) @ queries[q]
            known = ~np.isnan(exact)  # a row deleted meanwhile has no vector: dropped
            row, exact = row[known], exact[known]
            top = np.argsort(-exact, kind="stable")[:k]
            scores[q, :len(top)], ids[q, :len(top)] = exact[top], row[top]
        return scores, ids

    def _search(self, queries: np.ndarray, k_eff: int) -> tuple[np.ndarray, np.ndarray]:
        if len(queries) <= FEW_QUERIES:
            # One query gains nothing from FAISS's OpenMP threads, and right after torch (the query encoder)
            # has used its own threads they cost milliseconds of contention on a small machine: run it on one.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, ids = self._index.search(queries, k_eff)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            scores, ids = self._index.search(queries, k_eff)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def ids(self) -> np.ndarray:
        """Every id held, in insertion order, as int64."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def reconstruct(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """The stored vectors for ``ids`` (approximate for PQ indexes), shape (len(ids), dim).

        Raises ``KeyError`` naming the ids that are not in the index.
        """
        ids = self._ids(ids)
        if len(ids) == 0:
            return np.empty((0, self.dim), np.float32)
        missing = ids[~np.isin(ids, self.ids())]
        if len(missing):
            raise KeyError(f"ids not in the index: {missing[:5].tolist()}")
        ivf = faiss.try_extract_index_ivf(self._index.index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            if self._read_only:
                raise VectorIndexError(
                    "reconstruct() on an mmap-loaded IVF index is not supported; load with mmap=False"
                )
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # IVF needs a position -> list map to reconstruct
        if not isinstance(self._index, faiss.IndexIDMap2):  # mapped read-only: no id -> position map held
            held = self.ids()
            order = np.argsort(held, kind="stable")
            return self._index.index.reconstruct_batch(order[np.searchsorted(held, ids, sorter=order)])
        return self._index.reconstruct_batch(ids)

    # -- persistence

    def save(self, path: str | Path, generation: int | None = None) -> None:
        """Write the index to ``path`` and its sidecar to ``path.json``, each atomically; ``generation`` (if
        given) is recorded in the sidecar and becomes ``self.generation``."""
        if generation is not None:
            self.generation = int(generation)
        path = Path(path)
        tmp = Path(str(path) + ".tmp")
        for stale in (tmp, Path(str(_sidecar(path)) + ".tmp")):  # left by a run killed mid-save
            stale.unlink(missing_ok=True)
        try:
            try:
                faiss.write_index(self._index, str(tmp))
                _retag(tmp, IDMAP2_TAG, IDMAP_TAG)  # read back as IndexIDMap2 only when loaded writable
                size, digest = file_digest(tmp)
                _replace_durably(tmp, path)
            except (RuntimeError, OSError) as exc:  # FAISS reports a failed write (a full disk) as RuntimeError
                if isinstance(exc, OSError) and exc.errno not in FULL_ERRNOS:
                    raise
                raise write_error(path, exc, needed=self.ntotal * self.dim * 4) from exc
        finally:
            tmp.unlink(missing_ok=True)
        meta = {
            "factory": self._factory, "dim": self.dim, "ntotal": self.ntotal, "search_params": self._search_params,
            "generation": self.generation,
            "bytes": size, "sha256": digest,  # this index file's: pairs the two files, finds bit rot (verify)
        }
        side = _sidecar(path)
        side_tmp = Path(str(side) + ".tmp")
        try:
            side_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            _replace_durably(side_tmp, side)
        except OSError as exc:
            if exc.errno not in FULL_ERRNOS:
                raise
            raise write_error(side, exc) from exc
        finally:
            side_tmp.unlink(missing_ok=True)
        log.debug("saved %r to %s", self, path)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> VectorIndex:
        """Read an index saved by ``save``. ``mmap=True`` maps it from disk instead of reading it into memory
        (falling back to a normal read where FAISS cannot map that index type); such an index is read-only."""
        path = Path(path)
        side = _sidecar(path)
        if not path.is_file():
            raise VectorIndexError(f"no vector index at {path}; build one with `xmodal index PATH --library DIR`")
        if not side.is_file():
            raise VectorIndexError(f"{side} (the sidecar of {path}) is missing; rebuild the index")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            factory, dim, ntotal = str(meta["factory"]), int(meta["dim"]), int(meta["ntotal"])
            search_params = valid_search_params(meta.get("search_params"), side)
            generation = None if meta.get("generation") is None else int(meta["generation"])
        except (ValueError, KeyError, TypeError) as exc:
            raise VectorIndexError(f"{side} is not a valid index sidecar ({exc}); rebuild the index") from exc
        expected = meta.get("bytes")
        if expected is not None and path.stat().st_size != expected:  # cheap: a full check is `verify`
            raise IndexMismatchError(f"{path} is {path.stat().st_size} bytes but {side} describes a file of "
                                     f"{expected} (an interrupted save, or a damaged file); rebuild the index")
        index, mapped = cls._read(path, mmap)
        if not isinstance(index, faiss.IndexIDMap2 if not mapped else (faiss.IndexIDMap, faiss.IndexIDMap2)):
            raise VectorIndexError(
                f"{path} holds a {type(index).__name__}, not an xmodal IndexIDMap2; rebuild the index"
            )
        if index.d != dim or index.ntotal != ntotal:
            raise IndexMismatchError(
                f"{path} holds {index.ntotal} vectors of dim {index.d} but {side} says {ntotal} of dim {dim} "
                "(probably an interrupted save); rebuild the index"
            )
        try:
            loaded = cls(index, factory, search_params, read_only=mapped)
        except ValueError as exc:  # a parameter this index type refuses: search with the defaults
            log.warning("%s: search parameters dropped (%s); `xmodal reindex` tunes them again", side, exc)
            loaded = cls(index, factory, None, read_only=mapped)
        loaded.generation = generation
        return loaded

    @staticmethod
    def verify(path: str | Path) -> str | None:
        """Read the whole index file and compare it with the checksum its sidecar recorded: None when they
        agree (or the sidecar predates checksums), else what is wrong. Catches bit rot that loads fine."""
        path = Path(path)
        try:
            meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
            if meta.get("sha256") is None:
                return None
            size, digest = file_digest(path)
        except (OSError, ValueError) as exc:
            return f"cannot verify {path}: {exc}"
        if size != meta.get("bytes") or digest != meta["sha256"]:
            return f"{path} does not match the checksum recorded when it was saved (damaged on disk)"
        return None

    @staticmethod
    def _read(path: Path, mmap: bool) -> tuple[Any, bool]:
        if mmap:
            # IO_FLAG_MMAP maps inverted lists; IO_FLAG_MMAP_IFC also maps flat code storage (HNSW's vectors):
            # a 100k-photo HNSW32 index then opens in ~7 ms instead of being read whole (0.2-0.4 s a search)
            # (not every index type takes the second flag: then the first alone)
            for flags in dict.fromkeys((faiss.IO_FLAG_MMAP | getattr(faiss, "IO_FLAG_MMAP_IFC", 0), faiss.IO_FLAG_MMAP)):
                try:
                    return faiss.read_index(str(path), flags), True
                except RuntimeError as exc:
                    problem = str(exc).splitlines()[0]
            log.warning("cannot mmap %s (%s); reading it into memory", path, problem)
        try:
            with open(path, "rb") as f:  # as an IndexIDMap2, whichever tag it was saved with
                return faiss.read_index(faiss.PyCallbackIOReader(_Retagged(f, IDMAP_TAG, IDMAP2_TAG))), False
        except RuntimeError as exc:
            raise VectorIndexError(
                f"cannot read vector index {path}: {str(exc).splitlines()[0]}; rebuild the index"
            ) from exc
