"""The library's metadata store: one SQLite file, ``<library_dir>/library.db``, through SQLAlchemy Core.

What lives here:

* ``images`` — one row per indexed photo. ``id`` is ``AUTOINCREMENT`` so an id is never reused: ids are the
  FAISS vector ids, and a stale vector must never point at a different photo. ``raw_path`` holds the exact
  bytes of the path (``os.fsencode``) so file names that are not valid UTF-8 round-trip; ``path`` is a
  display copy (UTF-8 with ``backslashreplace``). Records handed out carry ``os.fsdecode(raw_path)``, i.e.
  the very ``str`` the walker produced.
* ``texts`` — indexed texts (captions, corpus lines), the file they came from and (schema 5) the photo
  they describe, if any (``image_id``); a photo's linked texts are its ``captions`` keyword field.
* ``meta`` — key/value settings, values JSON-encoded; ``schema_version`` lives here.

Since schema 2 the store is the single source of truth for vectors too: each ``images``/``texts`` row holds
its vector (``vector``: little-endian float32 bytes) written in the same transaction as the row, and every
write that changes a modality's rows bumps ``meta["generation.<modality>"]`` in that transaction. The FAISS
files are a cache of these vectors, saved with the generation they reflect (see ``indexer.library``). Rows
from schema 1 have ``vector`` NULL until the library back-fills them from its FAISS file.

Schema changes are migrations (``schema.py``: plain functions taking a Connection, listed in order in
``MIGRATIONS``, with the Core tables and the row <-> record conversions). Opening a library applies
``MIGRATIONS[stored_version:SCHEMA_VERSION]`` in one write transaction (SQLite has transactional DDL, so a
failing migration leaves the file untouched).

SQLAlchemy objects never leave this module and schema.py: callers get ``ImageRecord``/``TextRecord``, ints and numpy arrays.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    Connection,
    Row,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DatabaseError, IntegrityError

from xmodal.indexer.records import DecodedImage, ImageRecord, TextRecord
from xmodal.indexer.storage.recovery import (BACKUP_FILENAME, DB_FILENAME, DatabaseDamaged, StoreError,
                                             database_problem)
from xmodal.indexer.storage import words
from xmodal.indexer.storage.schema import (IMAGE_COLUMNS, IMAGE_TEXT, IMAGES, META, META_DDL, MIGRATIONS, SCHEMA_VERSION, TABLES,
                                          TEXTS, display_path, from_blob, image_record, image_row, raw_path_of,
                                          to_blob)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
_CHUNK = 500  # ids per IN (...) clause; well under SQLite's bound-variable limit
_STREAM_BATCH = 2_000  # rows per keyset page in image_states()


class FileState(NamedTuple):
    """What the store knows of an indexed file, for deciding whether it changed (`Store.image_states`)."""

    path: str
    id: int
    size: int
    mtime: float
    ctime: float | None
    inode: int | None
    sha256: str


# ------------------------------------------------------------------------------------------------ helpers


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    as_ints = [int(i) for i in ids]
    for start in range(0, len(as_ints), _CHUNK):
        yield as_ints[start : start + _CHUNK]


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -------------------------------------------------------------------------------------------------- store


class Store:
    """The metadata store of one library directory.

    ``Store(library_dir)`` opens an existing library (``StoreError`` if there is none); ``create=True`` makes
    the directory and an empty database when needed. Opening migrates an older schema and refuses a newer
    one. Use as a context manager, or call ``close()``.

    Write methods each run in one transaction (``BEGIN IMMEDIATE``, so concurrent writers queue on the busy
    timeout instead of deadlocking); wrap several calls in ``with store.transaction():`` to make them one.
    """

    def __init__(self, library_dir: str | Path, create: bool = False, read_only: bool | None = None) -> None:
        """`read_only`: open the database read-only and immutable (no lock, no log), as a library on a DVD, a
        read-only share or a snapshot must be opened; None: so when the place cannot be written to."""
        self.library_dir = Path(library_dir)
        self.db_path = self.library_dir / DB_FILENAME
        if not self.db_path.exists():
            if not create:
                raise StoreError(
                    f"no xmodal library at {self.library_dir} ({DB_FILENAME} not found); "
                    f"create one with `xmodal index PATH --library {self.library_dir}`"
                )
            self.library_dir.mkdir(parents=True, exist_ok=True)
        if read_only is None:
            read_only = self.db_path.exists() and not writable(self.db_path)
        self.read_only = bool(read_only)
        if self.read_only:  # immutable: SQLite neither locks nor looks for a -wal (every run checkpoints it)
            self._engine = create_engine(f"sqlite:///file:{self.db_path}?mode=ro&immutable=1&uri=true")
        else:
            self._engine = create_engine(f"sqlite:///{self.db_path}")
        event.listen(self._engine, "connect", _on_connect_read_only if self.read_only else _on_connect)
        event.listen(self._engine, "begin", _on_begin)
        self._local = threading.local()  # .tx: this thread's open transaction() connection, if any
        self.written = False  # set by every write; the library backs up after a session that wrote
        is_new = not self.db_path.exists()
        try:
            self._migrate()
        except BaseException as exc:
            self._engine.dispose()
            if is_new:  # a library that could not be made (a full disk, say) leaves no empty library.db behind
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(str(self.db_path) + suffix).unlink(missing_ok=True)
            if isinstance(exc, DatabaseError):
                raise database_problem(self.db_path, exc, "opening the library") from exc
            raise

    # -- lifecycle

    def close(self) -> None:
        """Close all pooled connections. The store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.library_dir)!r})"

    # -- transactions

    @property
    def _tx(self) -> Connection | None:
        return getattr(self._local, "tx", None)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        if self._tx is not None:
            yield self._tx
            return
        try:
            with self._engine.connect() as conn:
                yield conn
        except DatabaseError as exc:
            raise database_problem(self.db_path, exc, "reading") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every store call inside the block one write transaction (committed at the end, rolled back
        on an exception). Nested blocks join the outer one."""
        if self._tx is not None:
            yield
            return
        try:
            with self._engine.connect() as conn:
                conn.execution_options(xmodal_begin="IMMEDIATE")
                with conn.begin():
                    self._local.tx = conn
                    try:
                        yield
                    finally:
                        self._local.tx = None
        except IntegrityError:
            raise  # a broken invariant, for the caller to explain
        except DatabaseError as exc:  # disk full, read-only file system, I/O error, damage: nothing was committed
            raise database_problem(self.db_path, exc, "writing (nothing from this write was committed)") from exc

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.transaction():
            assert self._tx is not None
            self.written = True
            yield self._tx

    # -- durability

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file and empty the log: committed rows then
        survive the loss of ``library.db-wal`` (a crash, then someone deleting it). Waits for readers on the
        busy timeout; a reader that stays leaves the rest for the next checkpoint."""
        raw = self._engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = cur.fetchone()[0]
            cur.close()
        except DatabaseError as exc:
            raise StoreError(f"cannot checkpoint {self.db_path}: {exc}") from exc
        finally:
            raw.close()
        if busy:
            log.debug("%s: checkpoint left part of the log to a later one (a reader was busy)", self.db_path)

    def vector_dims(self) -> set[int]:
        """The dims of the stored vectors (from their byte lengths; one row of each modality is read)."""
        dims = set()
        with self._read() as conn:
            for table in TABLES.values():
                n = conn.execute(select(func.length(table.c.vector)).where(table.c.vector.is_not(None)).limit(1)
                                 ).scalar()
                if n is not None:
                    dims.add(int(n) // 4)
        return dims

    def quick_check(self) -> str:
        """SQLite's quick_check of the whole file: "ok", or what is damaged (reads every page: seconds per GB)."""
        with self._read() as conn:
            rows = conn.exec_driver_sql("PRAGMA quick_check").fetchall()
        return "; ".join(str(r[0]) for r in rows[:3])

    def backup(self, dest: str | Path) -> Path:
        """A consistent copy of the database at `dest` (SQLite's online backup, written beside and renamed
        into place, so `dest` always holds a complete copy)."""
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.unlink(missing_ok=True)
        raw = self._engine.raw_connection()
        try:
            target = sqlite3.connect(tmp)
            try:
                raw.driver_connection.backup(target)
                verdict = target.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                target.close()
            if verdict != "ok":  # never replace the last good backup with a copy of a damaged database
                raise sqlite3.DatabaseError(f"the copy fails SQLite's quick_check ({verdict})")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except (sqlite3.Error, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot back up {self.db_path} to {dest}: {exc}") from exc
        finally:
            raw.close()
        return dest

    # -- schema

    def _stored_version(self, conn: Connection) -> int:
        value = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
        if value is None:
            return 0
        try:
            version = json.loads(value)
        except ValueError:
            version = value
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise DatabaseDamaged(f"{self.db_path}: its schema version {value!r} is not a whole number (hand-edited "
                                  f"or damaged); run `xmodal check --repair` to put back {BACKUP_FILENAME}")
        return version

    def _migrate(self) -> None:
        target = SCHEMA_VERSION
        if len(MIGRATIONS) != target:
            raise RuntimeError(f"store.MIGRATIONS has {len(MIGRATIONS)} entries but SCHEMA_VERSION is {target}")
        with self._engine.connect() as conn:
            has_meta = conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).scalar()
            version = self._stored_version(conn) if has_meta else 0
        self._check_not_newer(version, target)
        if version == target:
            return
        if self.read_only:
            raise StoreError(f"{self.db_path} was written by an older xmodal (schema {version} < {target}) and "
                             "cannot be upgraded where it is (read-only); open it once where it can be written")
        with self._write() as conn:
            conn.exec_driver_sql(META_DDL)
            version = self._stored_version(conn)  # re-read under the write lock: another process may have won
            self._check_not_newer(version, target)
            for step in range(version, target):
                log.info("migrating %s: schema %d -> %d (%s)", self.db_path, step, step + 1, MIGRATIONS[step].__name__)
                MIGRATIONS[step](conn)
            self._set_meta(conn, "schema_version", target)

    def _check_not_newer(self, version: int, target: int) -> None:
        if version > target:
            raise StoreError(
                f"{self.db_path} was written by a newer xmodal (schema {version} > {target}); upgrade xmodal"
            )

    @property
    def schema_version(self) -> int:
        """The schema version stored in the database."""
        with self._read() as conn:
            return self._stored_version(conn)

    # -- meta

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON-decoded value stored under ``key``, or ``default``."""
        with self._read() as conn:
            value = conn.execute(select(META.c.value).where(META.c.key == key)).scalar()
        if value is None:
            return default
        try:
            return json.loads(value)
        except ValueError:
            raise DatabaseDamaged(f"{self.db_path}: its {key!r} setting {value!r} is not valid JSON (hand-edited or "
                                  f"damaged); run `xmodal check --repair` to put back {BACKUP_FILENAME}") from None

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (anything ``json.dumps`` accepts) under ``key``, replacing any previous value."""
        with self._write() as conn:
            self._set_meta(conn, key, value)

    @staticmethod
    def _set_meta(conn: Connection, key: str, value: Any) -> None:
        try:
            encoded = json.dumps(value)
        except TypeError as exc:
            raise StoreError(f"meta value for {key!r} is not JSON-serialisable ({exc}); store plain data") from exc
        conn.exec_driver_sql("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, encoded))

    # -- generations

    def generation(self, modality: str) -> int:
        """How many committed writes changed ``modality``'s rows (0 for a new library)."""
        return int(self.get_meta(f"generation.{modality}", 0))

    def _bump(self, conn: Connection, modality: str) -> None:
        key = f"generation.{modality}"
        value = conn.execute(select(META.c.value).where(META.c.key == key)).scalar()
        self._set_meta(conn, key, (0 if value is None else int(json.loads(value))) + 1)

    # -- images

    def add_images(self, images: Sequence[DecodedImage], model: str, vectors: np.ndarray | None = None) -> list[int]:
        """Insert ``images`` in one transaction and return their new ids, in order.

        Raises ``StoreError`` (and writes nothing) if a path is already in the library or appears twice in
        ``images``; use ``replace_images`` for files that changed on disk.
        """
        with self._write() as conn:
            self._check_batch_paths(images)
            existing = self._ids_by_raw_path(conn, [raw_path_of(im.path) for im in images])
            if existing:
                raw, old_id = next(iter(existing.items()))
                raise StoreError(
                    f"{display_path(raw)} is already indexed (id {old_id}, {len(existing)} such path(s) in this batch); "
                    "use replace_images() or delete_images() first"
                )
            self._bump(conn, "images")
            return self._insert_images(conn, images, model, vectors)

    def replace_images(self, images: Sequence[DecodedImage], model: str,
                       vectors: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """Insert ``images`` (with their ``vectors``, one row each, if given), first deleting any row that has
        the same path, all in one transaction.

        Returns ``(new_ids, replaced_ids)``: ``new_ids`` in the order of ``images`` (always fresh ids, never
        the old ones), ``replaced_ids`` the ids of the deleted rows, whose vectors the caller must remove.
        """
        with self._write() as conn:
            self._check_batch_paths(images)
            existing = self._ids_by_raw_path(conn, [raw_path_of(im.path) for im in images])
            replaced = sorted(existing.values())
            linked = self._linked_texts(conn, replaced)  # the deletion unlinks them (trigger): kept for the new row
            read = self._ocr_of(conn, replaced)  # the deletion drops them too: kept where the content is the same
            self._delete(conn, IMAGES, replaced)
            self._bump(conn, "images")
            new_ids = self._insert_images(conn, images, model, vectors)
            new_by_old = {existing[raw_path_of(im.path)]: i for im, i in zip(images, new_ids)
                          if raw_path_of(im.path) in existing}
            sha_of = {i: im.sha256 for im, i in zip(images, new_ids)}
            for old, new in new_by_old.items():
                if old in read and read[old][0] == sha_of[new]:  # embedded again (new weights), not edited
                    _, ocr, boxes, ocr_model = read[old]
                    self._put_words(conn, new, ocr=ocr, ocr_boxes=boxes, ocr_model=ocr_model)
            relinked = {new_by_old[old]: texts for old, texts in linked.items()}
            for image_id, text_ids in relinked.items():
                for part in _chunks(text_ids):
                    conn.execute(TEXTS.update().where(TEXTS.c.id.in_(part)).values(image_id=image_id))
            self._set_captions(conn, relinked)
            return new_ids, replaced

    @staticmethod
    def _check_batch_paths(images: Sequence[DecodedImage]) -> None:
        seen: set[bytes] = set()
        for im in images:
            raw = raw_path_of(im.path)
            if raw in seen:
                raise StoreError(f"{im.path!r} appears twice in one batch of images; pass each file once")
            seen.add(raw)

    @staticmethod
    def _ids_by_raw_path(conn: Connection, raws: Sequence[bytes]) -> dict[bytes, int]:
        found: dict[bytes, int] = {}
        for start in range(0, len(raws), _CHUNK):
            part = list(raws[start : start + _CHUNK])
            for row in conn.execute(select(IMAGES.c.raw_path, IMAGES.c.id).where(IMAGES.c.raw_path.in_(part))):
                found[row.raw_path] = row.id
        return found

    @staticmethod
    def _insert_images(conn: Connection, images: Sequence[DecodedImage], model: str,
                       vectors: np.ndarray | None = None) -> list[int]:
        if not images:
            return []
        if vectors is not None and len(vectors) != len(images):
            raise StoreError(f"got {len(vectors)} vectors for {len(images)} images; pass one vector per image")
        now = _now()
        rows = [image_row(im, model, now) for im in images]
        for i, row in enumerate(rows):
            row["vector"] = None if vectors is None else to_blob(vectors[i])
        try:
            result = conn.execute(insert(IMAGES).returning(IMAGES.c.id, sort_by_parameter_order=True), rows)
        except IntegrityError as exc:
            raise StoreError(f"could not insert {len(rows)} image rows ({exc.orig}); this is a bug") from exc
        ids = [int(i) for i in result.scalars()]
        for image_id, im in zip(ids, images):  # their words, in the same transaction (schema 4)
            Store._put_words(conn, image_id, name=words.name_words(im.path), meta=im.description)
        return ids

    def get_images(self, ids: Sequence[int]) -> list[ImageRecord]:
        """Records for ``ids``, in the order given; ids not in the store are dropped."""
        by_id: dict[int, ImageRecord] = {}
        with self._read() as conn:
            for part in _chunks(ids):
                for row in conn.execute(select(*IMAGE_COLUMNS).where(IMAGES.c.id.in_(part))):
                    by_id[row.id] = image_record(row)
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    def _image_pages(self, *columns) -> Iterator[Row]:
        """Every image row (id plus `columns`) in id order, streamed in pages of a few thousand rows (keyset
        pagination on id), holding no read transaction between pages, so the caller may write to the store
        while iterating; rows added meanwhile with higher ids may or may not be seen."""
        last = 0
        while True:
            with self._read() as conn:
                query = (select(IMAGES.c.id, *columns).where(IMAGES.c.id > last)
                         .order_by(IMAGES.c.id).limit(_STREAM_BATCH))
                page = list(conn.execute(query))
            yield from page
            if len(page) < _STREAM_BATCH:
                return
            last = page[-1].id

    def image_states(self) -> Iterator[FileState]:
        """Yield a ``FileState`` (path, id, size, mtime, ctime, inode, sha256) for every image in id order, for
        the incremental re-index check; ctime and inode are None in rows from before schema 3."""
        for r in self._image_pages(IMAGES.c.raw_path, IMAGES.c.size, IMAGES.c.mtime, IMAGES.c.ctime,
                                   IMAGES.c.inode, IMAGES.c.sha256):
            yield FileState(os.fsdecode(r.raw_path), r.id, r.size, r.mtime, r.ctime, r.inode, r.sha256)

    def set_file_states(self, states: Sequence[tuple[int, int, float, float, int]]) -> None:
        """Record ``(id, size, mtime, ctime, inode)`` of files whose content was found unchanged (same hash):
        no generation bump, the vectors are untouched. One transaction."""
        if not states:
            return
        with self._write() as conn:
            for image_id, size, mtime, ctime, inode in states:
                conn.execute(IMAGES.update().where(IMAGES.c.id == int(image_id))
                             .values(size=int(size), mtime=float(mtime), ctime=float(ctime), inode=int(inode)))

    def delete_images(self, ids: Sequence[int]) -> int:
        """Delete the images with these ids (unknown ids are ignored); returns how many rows went."""
        with self._write() as conn:
            self._bump(conn, "images")
            return self._delete(conn, IMAGES, ids)

    def move_images(self, moves: Sequence[tuple[int, DecodedImage]]) -> None:
        """Give existing rows a new file (path, size, mtime...), keeping their ids and vectors: a photo that
        was renamed or moved. One transaction."""
        if not moves:
            return
        with self._write() as conn:
            for image_id, image in moves:
                row = image_row(image, "", _now())
                del row["model"], row["indexed_at"]
                conn.execute(IMAGES.update().where(IMAGES.c.id == int(image_id)).values(**row))
                self._put_words(conn, int(image_id), name=words.name_words(image.path), meta=image.description)
            self._bump(conn, "images")

    def images_by_sha256(self, digests: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        """``{sha256: [(id, path), ...]}`` of the stored images with these content hashes (ids ascending)."""
        found: dict[str, list[tuple[int, str]]] = {}
        digests = list(dict.fromkeys(digests))
        with self._read() as conn:
            for start in range(0, len(digests), _CHUNK):
                query = (select(IMAGES.c.sha256, IMAGES.c.id, IMAGES.c.raw_path)
                         .where(IMAGES.c.sha256.in_(digests[start : start + _CHUNK])).order_by(IMAGES.c.id))
                for row in conn.execute(query):
                    found.setdefault(row.sha256, []).append((int(row.id), os.fsdecode(row.raw_path)))
        return found

    def image_paths(self) -> Iterator[tuple[int, str, str]]:
        """Yield ``(id, path, model)`` for every image in id order (paged like ``image_states``)."""
        for r in self._image_pages(IMAGES.c.raw_path, IMAGES.c.model):
            yield int(r.id), os.fsdecode(r.raw_path), r.model

    def image_digests(self) -> Iterator[tuple[int, str, str]]:
        """Yield ``(id, path, sha256)`` for every image in id order (paged like ``image_states``)."""
        for r in self._image_pages(IMAGES.c.raw_path, IMAGES.c.sha256):
            yield int(r.id), os.fsdecode(r.raw_path), r.sha256

    # -- vectors (both modalities)

    def vector_state(self, modality: str) -> tuple[int, np.ndarray, np.ndarray]:
        """``(generation, ids, has_vector)`` of ``modality`` read in one snapshot: every row id ascending
        (int64) and whether that row holds a vector."""
        table = TABLES[modality]
        with self._snapshot() as conn:
            value = conn.execute(select(META.c.value).where(META.c.key == f"generation.{modality}")).scalar()
            rows = conn.execute(select(table.c.id, table.c.vector.is_not(None)).order_by(table.c.id)).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        has = np.fromiter((bool(r[1]) for r in rows), dtype=bool, count=len(rows))
        return (0 if value is None else int(json.loads(value))), ids, has

    def get_vectors(self, modality: str, ids: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        """``{id: vector}`` for the rows among ``ids`` that hold a vector of ``dim`` floats."""
        table = TABLES[modality]
        out: dict[int, np.ndarray] = {}
        with self._read() as conn:
            for part in _chunks(ids):
                for row in conn.execute(select(table.c.id, table.c.vector).where(table.c.id.in_(part))):
                    vector = from_blob(row.vector, dim)
                    if vector is not None:
                        out[int(row.id)] = vector
        return out

    def set_vectors(self, modality: str, vectors: dict[int, np.ndarray]) -> None:
        """Store vectors for existing rows (back-filling rows from schema 1); one transaction."""
        if not vectors:
            return
        table = TABLES[modality]
        with self._write() as conn:
            for i, v in vectors.items():
                conn.execute(table.update().where(table.c.id == int(i)).values(vector=to_blob(v)))
            self._bump(conn, modality)

    def ids_with_other_model(self, modality: str, model: str) -> list[int]:
        """Ids of ``modality`` rows embedded with a model other than ``model``."""
        table = TABLES[modality]
        with self._read() as conn:
            return [int(i) for i in conn.execute(select(table.c.id).where(table.c.model != model)
                                                 .order_by(table.c.id)).scalars()]

    def bump_generation(self, modality: str) -> None:
        with self._write() as conn:
            self._bump(conn, modality)

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """One read transaction (a consistent WAL snapshot) across several statements."""
        if self._tx is not None:
            yield self._tx
            return
        with self._engine.connect() as conn:
            with conn.begin():
                yield conn

    def count_images(self) -> int:
        """Number of indexed images."""
        return self._count(IMAGES)

    def all_image_ids(self) -> np.ndarray:
        """All image ids, ascending, as an int64 array."""
        return self._all_ids(IMAGES)

    # -- texts

    def add_texts(self, texts: Sequence[str], source: str, model: str,
                  vectors: np.ndarray | None = None, image_ids: Sequence[int | None] | None = None) -> list[int]:
        """Insert ``texts`` (all from file ``source``, with their ``vectors`` if given, each linked to the
        photo of ``image_ids[i]`` if given and not None) in one transaction, with the ``captions`` of the
        photos they link to; returns their new ids in order. A link to an id not in the store is dropped."""
        if not texts:
            return []
        if image_ids is not None and len(image_ids) != len(texts):
            raise StoreError(f"got {len(image_ids)} photo links for {len(texts)} texts; pass one (or None) per text")
        now = _now()
        with self._write() as conn:
            links = list(image_ids) if image_ids is not None else [None] * len(texts)
            known = self._known_images(conn, [i for i in links if i is not None])
            links = [int(i) if i is not None and int(i) in known else None for i in links]
            rows = [{"text": t, "source": source, "model": model, "indexed_at": now, "image_id": links[i],
                     "vector": None if vectors is None else to_blob(vectors[i])} for i, t in enumerate(texts)]
            self._bump(conn, "texts")
            result = conn.execute(insert(TEXTS).returning(TEXTS.c.id, sort_by_parameter_order=True), rows)
            self._set_captions(conn, known)
            return [int(i) for i in result.scalars()]

    def get_texts(self, ids: Sequence[int]) -> list[TextRecord]:
        """Records for ``ids``, in the order given; ids not in the store are dropped."""
        by_id: dict[int, TextRecord] = {}
        with self._read() as conn:
            for part in _chunks(ids):
                for row in conn.execute(select(TEXTS.c.id, TEXTS.c.text, TEXTS.c.source, TEXTS.c.model,
                                               TEXTS.c.image_id).where(TEXTS.c.id.in_(part))):
                    by_id[row.id] = TextRecord(id=row.id, text=row.text, source=row.source, model=row.model,
                                               image_id=row.image_id)
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    def delete_texts(self, ids: Sequence[int]) -> int:
        """Delete the texts with these ids (unknown ids are ignored); returns how many rows went."""
        with self._write() as conn:
            self._bump(conn, "texts")
            affected: set[int] = set()
            for part in _chunks(ids):
                affected.update(conn.execute(select(TEXTS.c.image_id).where(TEXTS.c.id.in_(part) &
                                                                           TEXTS.c.image_id.is_not(None))).scalars())
            deleted = self._delete(conn, TEXTS, ids)
            self._set_captions(conn, affected)
            return deleted

    def text_sources(self) -> dict[str, int]:
        """How many texts each source file contributed."""
        with self._read() as conn:
            query = select(TEXTS.c.source, func.count()).group_by(TEXTS.c.source).order_by(TEXTS.c.source)
            rows = conn.execute(query)
            return {source: int(n) for source, n in rows}

    def delete_texts_from_source(self, source: str) -> list[int]:
        """Delete every text that came from ``source``; returns the deleted ids (ascending) so the caller can
        remove their vectors."""
        with self._write() as conn:
            query = select(TEXTS.c.id).where(TEXTS.c.source == source).order_by(TEXTS.c.id)
            ids = list(conn.execute(query).scalars())
            affected = set(conn.execute(select(TEXTS.c.image_id).distinct().where(
                (TEXTS.c.source == source) & TEXTS.c.image_id.is_not(None))).scalars())
            conn.execute(delete(TEXTS).where(TEXTS.c.source == source))
            self._set_captions(conn, affected)  # the photos those texts described lose them as captions
            self._bump(conn, "texts")
            return [int(i) for i in ids]

    def count_texts(self) -> int:
        """Number of indexed texts."""
        return self._count(TEXTS)

    def all_text_ids(self) -> np.ndarray:
        """All text ids, ascending, as an int64 array."""
        return self._all_ids(TEXTS)

    def count_captioned(self) -> int:
        """How many photos have texts linked to them (captions from a corpus that names its photos)."""
        with self._read() as conn:
            return int(conn.exec_driver_sql("SELECT count(DISTINCT image_id) FROM texts WHERE image_id IS NOT NULL")
                       .scalar_one())

    @staticmethod
    def _known_images(conn: Connection, ids: Sequence[int]) -> set[int]:
        known: set[int] = set()
        for part in _chunks(sorted(set(ids))):
            known.update(int(i) for i in conn.execute(select(IMAGES.c.id).where(IMAGES.c.id.in_(part))).scalars())
        return known

    @staticmethod
    def _linked_texts(conn: Connection, image_ids: Sequence[int]) -> dict[int, list[int]]:
        """``{image id: [ids of the texts linked to it]}`` for those of ``image_ids`` that have any."""
        out: dict[int, list[int]] = {}
        for part in _chunks(image_ids):
            for text_id, image_id in conn.execute(select(TEXTS.c.id, TEXTS.c.image_id)
                                                  .where(TEXTS.c.image_id.in_(part)).order_by(TEXTS.c.id)):
                out.setdefault(int(image_id), []).append(int(text_id))
        return out

    @staticmethod
    def _set_captions(conn: Connection, image_ids: Any) -> None:
        """Recompute the ``captions`` field (the linked texts, one per line, in id order) of each photo of
        ``image_ids`` still in the store, in the caller's transaction."""
        known = Store._known_images(conn, list(image_ids))
        lines: dict[int, list[str]] = {i: [] for i in known}
        for part in _chunks(sorted(known)):
            for image_id, text in conn.execute(select(TEXTS.c.image_id, TEXTS.c.text)
                                               .where(TEXTS.c.image_id.in_(part)).order_by(TEXTS.c.id)):
                lines[int(image_id)].append(" ".join(text.split()))  # one line each, whatever the corpus held
        for image_id, texts in lines.items():
            Store._put_words(conn, image_id, captions="\n".join(texts))

    # -- words (schema 4): names, embedded descriptions and OCR text, and their FTS5 indexes; (schema 5)
    #    the captions of the texts linked to a photo

    @staticmethod
    def _ocr_of(conn: Connection, image_ids: Sequence[int]) -> dict[int, tuple]:
        """``{id: (sha256, ocr, ocr_boxes, ocr_model)}`` of the photos among `image_ids` that OCR has read."""
        out = {}
        for part in _chunks(image_ids):
            for r in conn.execute(select(IMAGES.c.id, IMAGES.c.sha256, IMAGE_TEXT.c.ocr, IMAGE_TEXT.c.ocr_boxes,
                                         IMAGE_TEXT.c.ocr_model)
                                  .join(IMAGE_TEXT, IMAGE_TEXT.c.image_id == IMAGES.c.id)
                                  .where(IMAGES.c.id.in_(part) & IMAGE_TEXT.c.ocr_model.is_not(None))):
                out[int(r.id)] = (r.sha256, r.ocr, r.ocr_boxes, r.ocr_model)
        return out

    @staticmethod
    def _put_words(conn: Connection, image_id: int, **fields: Any) -> None:
        """Set some of a photo's word fields (name, meta, ocr, ocr_boxes, ocr_model, captions) and rewrite its
        rows in both FTS5 tables from the result, in the caller's transaction."""
        conn.exec_driver_sql("INSERT OR IGNORE INTO image_text (image_id) VALUES (?)", (int(image_id),))
        if fields:
            conn.execute(IMAGE_TEXT.update().where(IMAGE_TEXT.c.image_id == int(image_id)).values(**fields))
        row = conn.execute(select(IMAGE_TEXT.c.name, IMAGE_TEXT.c.meta, IMAGE_TEXT.c.ocr, IMAGE_TEXT.c.captions)
                           .where(IMAGE_TEXT.c.image_id == int(image_id))).one()
        folded = tuple(words.fold(v or "") for v in (row.name, row.meta, row.ocr, row.captions))
        for table in ("keywords", "keywords_tri"):
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE rowid = ?", (int(image_id),))
            conn.exec_driver_sql(f"INSERT INTO {table} (rowid, name, meta, ocr, captions) VALUES (?, ?, ?, ?, ?)",
                                 (int(image_id), *folded))

    def set_ocr(self, results: Sequence[tuple[int, str, list, str]]) -> None:
        """Store ``(image_id, text, boxes, model)`` of photos read by OCR (boxes: JSON-able, e.g. ``[[x0, y0,
        x1, y1, confidence, text], ...]``) and index their words; one transaction. Unknown ids are ignored."""
        if not results:
            return
        with self._write() as conn:
            known = set(conn.execute(select(IMAGES.c.id).where(IMAGES.c.id.in_([int(r[0]) for r in results])))
                        .scalars())
            for image_id, text, boxes, model in results:
                if int(image_id) in known:
                    self._put_words(conn, int(image_id), ocr=text, ocr_boxes=json.dumps(boxes), ocr_model=model)

    def images_without_ocr(self, model: str, family: str | None = None) -> list[tuple[int, str, str]]:
        """``(id, path, sha256)`` of the photos not yet read by OCR model ``model``, in id order. With a
        `family` (a model name prefix: the same recognition models), photos a model of that family found text
        in count as read; those it found none in are read again."""
        stale = IMAGE_TEXT.c.ocr_model != model
        if family:
            same = (IMAGE_TEXT.c.ocr_model == family) | IMAGE_TEXT.c.ocr_model.startswith(family + "/",
                                                                                           autoescape=True)
            stale = stale & ~(same & (func.coalesce(IMAGE_TEXT.c.ocr, "") != ""))
        query = (select(IMAGES.c.id, IMAGES.c.raw_path, IMAGES.c.sha256)
                 .select_from(IMAGES.outerjoin(IMAGE_TEXT, IMAGE_TEXT.c.image_id == IMAGES.c.id))
                 .where((IMAGE_TEXT.c.ocr_model.is_(None)) | stale)
                 .order_by(IMAGES.c.id))
        with self._read() as conn:
            return [(int(r.id), os.fsdecode(r.raw_path), r.sha256) for r in conn.execute(query)]

    def keyword_matches(self, terms: Sequence[str], limit: int = 1000
                        ) -> tuple[int, list[dict[int, float]], list[int]]:
        """``(photos with words, [{id: weight} per term], [photos holding each term])``: for each folded term,
        the photos holding it as a word (weight 1) or the start of one (0.9; the best `limit` by BM25) or, for
        terms of 3+ letters, inside a word (trigram index, weight 0.8), or, found nowhere and of 5+
        letters, with a letter or two misread (weight 0.7), and how many photos hold it."""
        out: list[dict[int, float]] = []
        counts: list[int] = []
        with self._read() as conn:
            total = int(conn.exec_driver_sql("SELECT count(*) FROM image_text").scalar_one())
            for term in terms:
                phrase = words.fts_phrase(term)
                found: dict[int, float] = {}
                if len(term) >= 3:
                    for (rowid,) in conn.exec_driver_sql(
                            "SELECT rowid FROM keywords_tri WHERE keywords_tri MATCH ? ORDER BY rank LIMIT ?",
                            (phrase, limit)):
                        found[int(rowid)] = 0.8
                query = phrase + ("*" if len(term) >= 2 and not words.fold(term).count(" ") else "")
                for (rowid,) in conn.exec_driver_sql(
                        "SELECT rowid FROM keywords WHERE keywords MATCH ? ORDER BY rank LIMIT ?", (query, limit)):
                    found[int(rowid)] = 0.9  # the start of a word...
                if query != phrase:
                    for (rowid,) in conn.exec_driver_sql(
                            "SELECT rowid FROM keywords WHERE keywords MATCH ? ORDER BY rank LIMIT ?", (phrase, limit)):
                        found[int(rowid)] = 1.0  # ...weighs less than the word itself
                if not found and words.misread_allowance(term):  # maybe misread by OCR: near words
                    trigrams = " OR ".join(words.fts_phrase(term[i:i + 3]) for i in range(len(term) - 2))
                    for rowid, *fields in conn.exec_driver_sql(
                            "SELECT rowid, name, meta, ocr, captions FROM keywords_tri WHERE keywords_tri MATCH ? "
                            "ORDER BY rank LIMIT ?", (trigrams, min(limit, 200))):
                        if words.near_word(term, " ".join(fields)):
                            found[int(rowid)] = 0.7
                out.append(found)
                count = len(found)
                if count >= limit:  # more than were fetched: count them all (its weight depends on it)
                    table = "keywords_tri" if len(term) >= 3 else "keywords"
                    count = int(conn.exec_driver_sql(f"SELECT count(*) FROM {table} WHERE {table} MATCH ?",
                                                     (phrase if len(term) >= 3 else query,)).scalar_one())
                counts.append(count)
        return total, out, counts

    def image_words(self, ids: Sequence[int]) -> dict[int, dict[str, str]]:
        """``{id: {"name": ..., "meta": ..., "ocr": ..., "captions": ...}}`` (the text as read, not folded;
        captions one per line) for ``ids``."""
        found: dict[int, dict[str, str]] = {}
        with self._read() as conn:
            for part in _chunks(ids):
                for r in conn.execute(select(IMAGE_TEXT.c.image_id, IMAGE_TEXT.c.name, IMAGE_TEXT.c.meta,
                                             IMAGE_TEXT.c.ocr, IMAGE_TEXT.c.captions)
                                      .where(IMAGE_TEXT.c.image_id.in_(part))):
                    found[int(r.image_id)] = {"name": r.name or "", "meta": r.meta or "", "ocr": r.ocr or "",
                                              "captions": r.captions or ""}
        return found

    def count_read_by_ocr(self) -> int:
        """How many photos have been read by OCR (with or without text found)."""
        with self._read() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM image_text WHERE ocr IS NOT NULL").scalar_one())

    def ocr_boxes(self, image_id: int) -> list | None:
        """The OCR boxes stored for a photo (None: not read by OCR yet)."""
        with self._read() as conn:
            value = conn.execute(select(IMAGE_TEXT.c.ocr_boxes).where(IMAGE_TEXT.c.image_id == int(image_id))
                                 ).scalar()
        return None if value is None else json.loads(value)

    # -- shared

    @staticmethod
    def _delete(conn: Connection, table: Table, ids: Sequence[int]) -> int:
        deleted = 0
        for part in _chunks(ids):
            deleted += conn.execute(delete(table).where(table.c.id.in_(part))).rowcount
        return deleted

    def _count(self, table: Table) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def _all_ids(self, table: Table) -> np.ndarray:
        with self._read() as conn:
            ids = conn.execute(select(table.c.id).order_by(table.c.id)).scalars()
            return np.fromiter(ids, dtype=np.int64)


# ------------------------------------------------------------------------------------------ engine events


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    """Per-connection setup: let SQLAlchemy (not the sqlite3 module) emit BEGIN, then set the pragmas."""
    dbapi_conn.isolation_level = None  # the "begin" event below emits BEGIN; gives transactional DDL
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def _on_connect_read_only(dbapi_conn: Any, _record: Any) -> None:
    """A read-only, immutable connection: no journal mode to set, nothing to wait for."""
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA query_only = ON")
    finally:
        cur.close()


def writable(db_path: Path) -> bool:
    """Whether the library's database can be written where it is: the file and its folder (SQLite writes its
    log and lock files beside it). False on a read-only file system, for root too (access(2) says EROFS)."""
    return os.access(db_path, os.W_OK) and os.access(db_path.parent, os.W_OK)


def _on_begin(conn: Connection) -> None:
    """Reads begin DEFERRED (no lock until needed); write transactions ask for IMMEDIATE."""
    mode = conn.get_execution_options().get("xmodal_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")
