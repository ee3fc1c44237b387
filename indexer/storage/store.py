"""The library's metadata store: one SQLite file, ``<library_dir>/library.db``, through SQLAlchemy Core.

What lives here:

* ``images`` — one row per indexed photo. ``id`` is ``AUTOINCREMENT`` so an id is never reused: ids are the
  FAISS vector ids, and a stale vector must never point at a different photo. ``raw_path`` holds the exact
  bytes of the path (``os.fsencode``) so file names that are not valid UTF-8 round-trip; ``path`` is a
  display copy (UTF-8 with ``backslashreplace``). Records handed out carry ``os.fsdecode(raw_path)``, i.e.
  the very ``str`` the walker produced.
* ``texts`` — indexed texts (captions, corpus lines) and the file they came from.
* ``meta`` — key/value settings, values JSON-encoded; ``schema_version`` lives here.

Since schema 2 the store is the single source of truth for vectors too: each ``images``/``texts`` row holds
its vector (``vector``: little-endian float32 bytes) written in the same transaction as the row, and every
write that changes a modality's rows bumps ``meta["generation.<modality>"]`` in that transaction. The FAISS
files are a cache of these vectors, saved with the generation they reflect (see ``indexer.library``). Rows
from schema 1 have ``vector`` NULL until the library back-fills them from its FAISS file.

Schema changes are migrations: plain functions taking a Connection, listed in order in ``MIGRATIONS``.
Opening a library applies ``MIGRATIONS[stored_version:SCHEMA_VERSION]`` in one write transaction (SQLite has
transactional DDL, so a failing migration leaves the file untouched). To change the schema later, write
``_migration_N(conn)``, append it to ``MIGRATIONS`` and bump ``SCHEMA_VERSION``. Migrations are frozen
SQL on purpose: they must keep creating exactly what they created when they were released, whatever the
Core ``Table`` objects below (used only for queries) look like today.

SQLAlchemy objects never leave this module: callers get ``ImageRecord``/``TextRecord``, ints and numpy arrays.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.types import TypeDecorator

from xmodal.indexer.records import DecodedImage, ImageRecord, TextRecord

log = logging.getLogger(__name__)

DB_FILENAME = "library.db"
BUSY_TIMEOUT_MS = 10_000
_CHUNK = 500  # ids per IN (...) clause; well under SQLite's bound-variable limit
_STREAM_BATCH = 2_000  # rows per keyset page in image_states()


class StoreError(Exception):
    """The library database is missing, unreadable, too new, or a write would break an invariant."""


# --------------------------------------------------------------------------------------------- migrations


def _migration_1_initial(conn: Connection) -> None:
    """Version 1: images, texts and meta."""
    conn.exec_driver_sql(
        """
        CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            raw_path BLOB UNIQUE NOT NULL,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            sha256 TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            taken_at DATETIME,
            model TEXT NOT NULL,
            indexed_at DATETIME NOT NULL
        )
        """
    )
    conn.exec_driver_sql("CREATE INDEX ix_images_sha256 ON images (sha256)")
    conn.exec_driver_sql(
        """
        CREATE TABLE texts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            text TEXT NOT NULL,
            source TEXT,
            model TEXT NOT NULL,
            indexed_at DATETIME NOT NULL
        )
        """
    )
    conn.exec_driver_sql("CREATE INDEX ix_texts_source ON texts (source)")


def _migration_2_vectors(conn: Connection) -> None:
    """Version 2: each row carries its vector (float32 bytes), making the store the source of truth."""
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN vector BLOB")
    conn.exec_driver_sql("ALTER TABLE texts ADD COLUMN vector BLOB")


#: Ordered schema migrations; ``MIGRATIONS[i]`` takes a library from version ``i`` to ``i + 1``.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1_initial, _migration_2_vectors]
SCHEMA_VERSION = 2

_META_DDL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


# ------------------------------------------------------------------------------------ query-side tables


class _IsoDateTime(TypeDecorator):
    """A datetime stored as ISO-8601 text; keeps a timezone offset when there is one (EXIF times have none)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> str | None:
        return None if value is None else value.isoformat()

    def process_result_value(self, value: str | None, dialect: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


_md = MetaData()
_meta = Table("meta", _md, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
_images = Table(
    "images",
    _md,
    Column("id", Integer, primary_key=True),
    Column("raw_path", LargeBinary, nullable=False, unique=True),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("mtime", Float, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("taken_at", _IsoDateTime),
    Column("model", Text, nullable=False),
    Column("indexed_at", _IsoDateTime, nullable=False),
    Column("vector", LargeBinary),
)
#: every image column but the vector (records never carry it)
_IMAGE_COLUMNS = [c for c in _images.c if c.name != "vector"]
_texts = Table(
    "texts",
    _md,
    Column("id", Integer, primary_key=True),
    Column("text", Text, nullable=False),
    Column("source", Text),
    Column("model", Text, nullable=False),
    Column("indexed_at", _IsoDateTime, nullable=False),
    Column("vector", LargeBinary),
)
_TABLES = {"images": _images, "texts": _texts}


# ------------------------------------------------------------------------------------------------ helpers


def _raw(path: str) -> bytes:
    return os.fsencode(path)


def _display(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    as_ints = [int(i) for i in ids]
    for start in range(0, len(as_ints), _CHUNK):
        yield as_ints[start : start + _CHUNK]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _image_record(row: Any) -> ImageRecord:
    return ImageRecord(
        id=row.id,
        path=os.fsdecode(row.raw_path),
        size=row.size,
        mtime=row.mtime,
        sha256=row.sha256,
        width=row.width,
        height=row.height,
        taken_at=row.taken_at,
        model=row.model,
    )


def _blob(vector: np.ndarray | None) -> bytes | None:
    return None if vector is None else np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _unblob(blob: bytes | None, dim: int) -> np.ndarray | None:
    if blob is None or len(blob) != 4 * dim:
        return None
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _image_row(image: DecodedImage, model: str, indexed_at: datetime) -> dict[str, Any]:
    raw = _raw(image.path)
    return {
        "raw_path": raw,
        "path": _display(raw),
        "size": int(image.size),
        "mtime": float(image.mtime),
        "sha256": image.sha256,
        "width": int(image.width),
        "height": int(image.height),
        "taken_at": image.taken_at,
        "model": model,
        "indexed_at": indexed_at,
    }


# -------------------------------------------------------------------------------------------------- store


class Store:
    """The metadata store of one library directory.

    ``Store(library_dir)`` opens an existing library (``StoreError`` if there is none); ``create=True`` makes
    the directory and an empty database when needed. Opening migrates an older schema and refuses a newer
    one. Use as a context manager, or call ``close()``.

    Write methods each run in one transaction (``BEGIN IMMEDIATE``, so concurrent writers queue on the busy
    timeout instead of deadlocking); wrap several calls in ``with store.transaction():`` to make them one.
    """

    def __init__(self, library_dir: str | Path, create: bool = False) -> None:
        self.library_dir = Path(library_dir)
        self.db_path = self.library_dir / DB_FILENAME
        if not self.db_path.exists():
            if not create:
                raise StoreError(
                    f"no xmodal library at {self.library_dir} ({DB_FILENAME} not found); "
                    f"create one with `xmodal index PATH --library {self.library_dir}`"
                )
            self.library_dir.mkdir(parents=True, exist_ok=True)
        self._engine = create_engine(f"sqlite:///{self.db_path}")
        event.listen(self._engine, "connect", _on_connect)
        event.listen(self._engine, "begin", _on_begin)
        self._local = threading.local()  # .tx: this thread's open transaction() connection, if any
        try:
            self._migrate()
        except DatabaseError as exc:
            self._engine.dispose()
            raise StoreError(
                f"{self.db_path} is not a usable xmodal library database ({exc.orig}); "
                "move it away and re-index, or point --library at the right directory"
            ) from exc
        except BaseException:
            self._engine.dispose()
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
        with self._engine.connect() as conn:
            yield conn

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
        except OperationalError as exc:  # disk full, read-only file system, I/O error: nothing was committed
            raise StoreError(f"cannot write to {self.db_path} ({exc.orig}); nothing from this write was "
                             "committed") from exc

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.transaction():
            assert self._tx is not None
            yield self._tx

    # -- schema

    def _stored_version(self, conn: Connection) -> int:
        value = conn.execute(select(_meta.c.value).where(_meta.c.key == "schema_version")).scalar()
        return 0 if value is None else int(json.loads(value))

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
        with self._write() as conn:
            conn.exec_driver_sql(_META_DDL)
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
            value = conn.execute(select(_meta.c.value).where(_meta.c.key == key)).scalar()
        return default if value is None else json.loads(value)

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
        value = conn.execute(select(_meta.c.value).where(_meta.c.key == key)).scalar()
        self._set_meta(conn, key, (0 if value is None else int(json.loads(value))) + 1)

    # -- images

    def add_images(self, images: Sequence[DecodedImage], model: str, vectors: np.ndarray | None = None) -> list[int]:
        """Insert ``images`` in one transaction and return their new ids, in order.

        Raises ``StoreError`` (and writes nothing) if a path is already in the library or appears twice in
        ``images``; use ``replace_images`` for files that changed on disk.
        """
        with self._write() as conn:
            self._check_batch_paths(images)
            existing = self._ids_by_raw_path(conn, [_raw(im.path) for im in images])
            if existing:
                raw, old_id = next(iter(existing.items()))
                raise StoreError(
                    f"{_display(raw)} is already indexed (id {old_id}, {len(existing)} such path(s) in this batch); "
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
            existing = self._ids_by_raw_path(conn, [_raw(im.path) for im in images])
            replaced = sorted(existing.values())
            self._delete(conn, _images, replaced)
            self._bump(conn, "images")
            return self._insert_images(conn, images, model, vectors), replaced

    @staticmethod
    def _check_batch_paths(images: Sequence[DecodedImage]) -> None:
        seen: set[bytes] = set()
        for im in images:
            raw = _raw(im.path)
            if raw in seen:
                raise StoreError(f"{im.path!r} appears twice in one batch of images; pass each file once")
            seen.add(raw)

    @staticmethod
    def _ids_by_raw_path(conn: Connection, raws: Sequence[bytes]) -> dict[bytes, int]:
        found: dict[bytes, int] = {}
        for start in range(0, len(raws), _CHUNK):
            part = list(raws[start : start + _CHUNK])
            for row in conn.execute(select(_images.c.raw_path, _images.c.id).where(_images.c.raw_path.in_(part))):
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
        rows = [_image_row(im, model, now) for im in images]
        for i, row in enumerate(rows):
            row["vector"] = None if vectors is None else _blob(vectors[i])
        try:
            result = conn.execute(insert(_images).returning(_images.c.id, sort_by_parameter_order=True), rows)
        except IntegrityError as exc:
            raise StoreError(f"could not insert {len(rows)} image rows ({exc.orig}); this is a bug") from exc
        return [int(i) for i in result.scalars()]

    def get_images(self, ids: Sequence[int]) -> list[ImageRecord]:
        """Records for ``ids``, in the order given; ids not in the store are dropped."""
        by_id: dict[int, ImageRecord] = {}
        with self._read() as conn:
            for part in _chunks(ids):
                for row in conn.execute(select(*_IMAGE_COLUMNS).where(_images.c.id.in_(part))):
                    by_id[row.id] = _image_record(row)
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    def _image_pages(self, *columns) -> Iterator[Row]:
        """Every image row (id plus `columns`) in id order, streamed in pages of a few thousand rows (keyset
        pagination on id), holding no read transaction between pages, so the caller may write to the store
        while iterating; rows added meanwhile with higher ids may or may not be seen."""
        last = 0
        while True:
            with self._read() as conn:
                query = (select(_images.c.id, *columns).where(_images.c.id > last)
                         .order_by(_images.c.id).limit(_STREAM_BATCH))
                page = list(conn.execute(query))
            yield from page
            if len(page) < _STREAM_BATCH:
                return
            last = page[-1].id

    def image_states(self) -> Iterator[tuple[str, int, int, float]]:
        """Yield ``(path, id, size, mtime)`` for every image in id order, for the incremental re-index check."""
        for r in self._image_pages(_images.c.raw_path, _images.c.size, _images.c.mtime):
            yield os.fsdecode(r.raw_path), r.id, r.size, r.mtime

    def delete_images(self, ids: Sequence[int]) -> int:
        """Delete the images with these ids (unknown ids are ignored); returns how many rows went."""
        with self._write() as conn:
            self._bump(conn, "images")
            return self._delete(conn, _images, ids)

    def move_images(self, moves: Sequence[tuple[int, DecodedImage]]) -> None:
        """Give existing rows a new file (path, size, mtime...), keeping their ids and vectors: a photo that
        was renamed or moved. One transaction."""
        if not moves:
            return
        with self._write() as conn:
            for image_id, image in moves:
                row = _image_row(image, "", _now())
                del row["model"], row["indexed_at"]
                conn.execute(_images.update().where(_images.c.id == int(image_id)).values(**row))
            self._bump(conn, "images")

    def images_by_sha256(self, digests: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        """``{sha256: [(id, path), ...]}`` of the stored images with these content hashes (ids ascending)."""
        found: dict[str, list[tuple[int, str]]] = {}
        digests = list(dict.fromkeys(digests))
        with self._read() as conn:
            for start in range(0, len(digests), _CHUNK):
                query = (select(_images.c.sha256, _images.c.id, _images.c.raw_path)
                         .where(_images.c.sha256.in_(digests[start : start + _CHUNK])).order_by(_images.c.id))
                for row in conn.execute(query):
                    found.setdefault(row.sha256, []).append((int(row.id), os.fsdecode(row.raw_path)))
        return found

    def image_paths(self) -> Iterator[tuple[int, str, str]]:
        """Yield ``(id, path, model)`` for every image in id order (paged like ``image_states``)."""
        for r in self._image_pages(_images.c.raw_path, _images.c.model):
            yield int(r.id), os.fsdecode(r.raw_path), r.model

    def image_digests(self) -> Iterator[tuple[int, str, str]]:
        """Yield ``(id, path, sha256)`` for every image in id order (paged like ``image_states``)."""
        for r in self._image_pages(_images.c.raw_path, _images.c.sha256):
            yield int(r.id), os.fsdecode(r.raw_path), r.sha256

    # -- vectors (both modalities)

    def vector_state(self, modality: str) -> tuple[int, np.ndarray, np.ndarray]:
        """``(generation, ids, has_vector)`` of ``modality`` read in one snapshot: every row id ascending
        (int64) and whether that row holds a vector."""
        table = _TABLES[modality]
        with self._snapshot() as conn:
            value = conn.execute(select(_meta.c.value).where(_meta.c.key == f"generation.{modality}")).scalar()
            rows = conn.execute(select(table.c.id, table.c.vector.is_not(None)).order_by(table.c.id)).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        has = np.fromiter((bool(r[1]) for r in rows), dtype=bool, count=len(rows))
        return (0 if value is None else int(json.loads(value))), ids, has

    def get_vectors(self, modality: str, ids: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        """``{id: vector}`` for the rows among ``ids`` that hold a vector of ``dim`` floats."""
        table = _TABLES[modality]
        out: dict[int, np.ndarray] = {}
        with self._read() as conn:
            for part in _chunks(ids):
                for row in conn.execute(select(table.c.id, table.c.vector).where(table.c.id.in_(part))):
                    vector = _unblob(row.vector, dim)
                    if vector is not None:
                        out[int(row.id)] = vector
        return out

    def set_vectors(self, modality: str, vectors: dict[int, np.ndarray]) -> None:
        """Store vectors for existing rows (back-filling rows from schema 1); one transaction."""
        if not vectors:
            return
        table = _TABLES[modality]
        with self._write() as conn:
            for i, v in vectors.items():
                conn.execute(table.update().where(table.c.id == int(i)).values(vector=_blob(v)))
            self._bump(conn, modality)

    def ids_with_other_model(self, modality: str, model: str) -> list[int]:
        """Ids of ``modality`` rows embedded with a model other than ``model``."""
        table = _TABLES[modality]
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
        return self._count(_images)

    def all_image_ids(self) -> np.ndarray:
        """All image ids, ascending, as an int64 array."""
        return self._all_ids(_images)

    # -- texts

    def add_texts(self, texts: Sequence[str], source: str, model: str,
                  vectors: np.ndarray | None = None) -> list[int]:
        """Insert ``texts`` (all from file ``source``, with their ``vectors`` if given) in one transaction;
        returns their new ids in order."""
        if not texts:
            return []
        now = _now()
        rows = [{"text": t, "source": source, "model": model, "indexed_at": now,
                 "vector": None if vectors is None else _blob(vectors[i])} for i, t in enumerate(texts)]
        with self._write() as conn:
            self._bump(conn, "texts")
            result = conn.execute(insert(_texts).returning(_texts.c.id, sort_by_parameter_order=True), rows)
            return [int(i) for i in result.scalars()]

    def get_texts(self, ids: Sequence[int]) -> list[TextRecord]:
        """Records for ``ids``, in the order given; ids not in the store are dropped."""
        by_id: dict[int, TextRecord] = {}
        with self._read() as conn:
            for part in _chunks(ids):
                for row in conn.execute(select(_texts.c.id, _texts.c.text, _texts.c.source, _texts.c.model)
                                        .where(_texts.c.id.in_(part))):
                    by_id[row.id] = TextRecord(id=row.id, text=row.text, source=row.source, model=row.model)
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    def delete_texts(self, ids: Sequence[int]) -> int:
        """Delete the texts with these ids (unknown ids are ignored); returns how many rows went."""
        with self._write() as conn:
            self._bump(conn, "texts")
            return self._delete(conn, _texts, ids)

    def text_sources(self) -> dict[str, int]:
        """How many texts each source file contributed."""
        with self._read() as conn:
            query = select(_texts.c.source, func.count()).group_by(_texts.c.source).order_by(_texts.c.source)
            rows = conn.execute(query)
            return {source: int(n) for source, n in rows}

    def delete_texts_from_source(self, source: str) -> list[int]:
        """Delete every text that came from ``source``; returns the deleted ids (ascending) so the caller can
        remove their vectors."""
        with self._write() as conn:
            query = select(_texts.c.id).where(_texts.c.source == source).order_by(_texts.c.id)
            ids = list(conn.execute(query).scalars())
            conn.execute(delete(_texts).where(_texts.c.source == source))
            self._bump(conn, "texts")
            return [int(i) for i in ids]

    def count_texts(self) -> int:
        """Number of indexed texts."""
        return self._count(_texts)

    def all_text_ids(self) -> np.ndarray:
        """All text ids, ascending, as an int64 array."""
        return self._all_ids(_texts)

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


def _on_begin(conn: Connection) -> None:
    """Reads begin DEFERRED (no lock until needed); write transactions ask for IMMEDIATE."""
    mode = conn.get_execution_options().get("xmodal_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")
