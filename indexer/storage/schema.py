"""The store's schema: versioned migrations (frozen SQL), the SQLAlchemy Core tables the queries use, and
the conversions between rows and records. Only `store.py` imports this module: SQLAlchemy objects never
leave the two of them.

Schema changes are migrations: plain functions taking a Connection, listed in order in ``MIGRATIONS``.
To change the schema, write ``_migration_N(conn)``, append it to ``MIGRATIONS`` and bump ``SCHEMA_VERSION``.
Migrations are frozen SQL on purpose: they must keep creating exactly what they created when they were
released, whatever the Core ``Table`` objects below (used only for queries) look like today.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Column, Connection, Float, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.types import TypeDecorator

from xmodal.indexer.records import DecodedImage, ImageRecord
from xmodal.indexer.storage.words import fold, name_words


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


def _migration_3_file_identity(conn: Connection) -> None:
    """Version 3: each image row carries its file's change time and inode (NULL in older rows: unknown), so
    that a file rewritten with its size and mtime restored is still seen as changed."""
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN ctime REAL")
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN inode INTEGER")


def _migration_4_keywords(conn: Connection) -> None:
    """Version 4: the words of each photo (its file and folder names, its embedded description, the text
    read in it by OCR with boxes and confidences) in ``image_text``, and two FTS5 indexes over their folded
    form: ``keywords`` (whole words, unicode61) and ``keywords_tri`` (trigrams, for parts of words). A
    trigger drops a photo's words with its row. Existing photos get their names indexed here; their
    description and OCR text come with the next run that reads them."""
    conn.exec_driver_sql(
        """
        CREATE TABLE image_text (
            image_id INTEGER PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            meta TEXT NOT NULL DEFAULT '',
            ocr TEXT,
            ocr_boxes TEXT,
            ocr_model TEXT
        )
        """
    )
    conn.exec_driver_sql("CREATE VIRTUAL TABLE keywords USING fts5(name, meta, ocr, "
                         "tokenize = 'unicode61 remove_diacritics 2')")
    conn.exec_driver_sql("CREATE VIRTUAL TABLE keywords_tri USING fts5(name, meta, ocr, tokenize = 'trigram')")
    conn.exec_driver_sql(
        """
        CREATE TRIGGER images_words_delete AFTER DELETE ON images BEGIN
            DELETE FROM keywords WHERE rowid = old.id;
            DELETE FROM keywords_tri WHERE rowid = old.id;
            DELETE FROM image_text WHERE image_id = old.id;
        END
        """
    )
    rows = conn.exec_driver_sql("SELECT id, raw_path FROM images").fetchall()
    for image_id, raw in rows:
        name = name_words(os.fsdecode(raw))
        conn.exec_driver_sql("INSERT INTO image_text (image_id, name) VALUES (?, ?)", (image_id, name))
        for table in ("keywords", "keywords_tri"):
            conn.exec_driver_sql(f"INSERT INTO {table} (rowid, name, meta, ocr) VALUES (?, ?, '', '')",
                                 (image_id, fold(name)))


def _migration_5_captions(conn: Connection) -> None:
    """Version 5: a text may describe a photo (``texts.image_id``, NULL: none), and the texts linked to a
    photo are its ``captions``, a fourth keyword field. FTS5 tables cannot be altered: both are made again
    with the new column and refilled from ``image_text`` (no photo has captions yet). The delete trigger
    also unlinks the texts of a deleted photo."""
    conn.exec_driver_sql("ALTER TABLE texts ADD COLUMN image_id INTEGER")
    conn.exec_driver_sql("CREATE INDEX ix_texts_image_id ON texts (image_id)")
    conn.exec_driver_sql("ALTER TABLE image_text ADD COLUMN captions TEXT NOT NULL DEFAULT ''")
    conn.exec_driver_sql("DROP TRIGGER images_words_delete")
    conn.exec_driver_sql("DROP TABLE keywords")
    conn.exec_driver_sql("DROP TABLE keywords_tri")
    conn.exec_driver_sql("CREATE VIRTUAL TABLE keywords USING fts5(name, meta, ocr, captions, "
                         "tokenize = 'unicode61 remove_diacritics 2')")
    conn.exec_driver_sql("CREATE VIRTUAL TABLE keywords_tri USING fts5(name, meta, ocr, captions, "
                         "tokenize = 'trigram')")
    conn.exec_driver_sql(
        """
        CREATE TRIGGER images_words_delete AFTER DELETE ON images BEGIN
            DELETE FROM keywords WHERE rowid = old.id;
            DELETE FROM keywords_tri WHERE rowid = old.id;
            DELETE FROM image_text WHERE image_id = old.id;
            UPDATE texts SET image_id = NULL WHERE image_id = old.id;
        END
        """
    )
    rows = conn.exec_driver_sql("SELECT image_id, name, meta, ocr FROM image_text ORDER BY image_id")
    for image_id, name, meta, ocr in rows.fetchall():
        folded = (fold(name or ""), fold(meta or ""), fold(ocr or ""))
        for table in ("keywords", "keywords_tri"):
            conn.exec_driver_sql(f"INSERT INTO {table} (rowid, name, meta, ocr, captions) VALUES (?, ?, ?, ?, '')",
                                 (image_id, *folded))


#: Ordered schema migrations; ``MIGRATIONS[i]`` takes a library from version ``i`` to ``i + 1``.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1_initial, _migration_2_vectors,
                                                   _migration_3_file_identity, _migration_4_keywords,
                                                   _migration_5_captions]
SCHEMA_VERSION = 5

META_DDL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


# ------------------------------------------------------------------------------------ query-side tables


class IsoDateTime(TypeDecorator):
    """A datetime stored as ISO-8601 text; keeps a timezone offset when there is one (EXIF times have none)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> str | None:
        return None if value is None else value.isoformat()

    def process_result_value(self, value: str | None, dialect: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


METADATA = MetaData()
META = Table("meta", METADATA, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
IMAGES = Table(
    "images",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("raw_path", LargeBinary, nullable=False, unique=True),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("mtime", Float, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("taken_at", IsoDateTime),
    Column("model", Text, nullable=False),
    Column("indexed_at", IsoDateTime, nullable=False),
    Column("vector", LargeBinary),
    Column("ctime", Float),
    Column("inode", Integer),
)
#: every image column but the vector (records never carry it)
IMAGE_COLUMNS = [c for c in IMAGES.c if c.name != "vector"]
TEXTS = Table(
    "texts",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("text", Text, nullable=False),
    Column("source", Text),
    Column("model", Text, nullable=False),
    Column("indexed_at", IsoDateTime, nullable=False),
    Column("vector", LargeBinary),
    Column("image_id", Integer),
)
TABLES = {"images": IMAGES, "texts": TEXTS}
IMAGE_TEXT = Table(
    "image_text",
    METADATA,
    Column("image_id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("meta", Text, nullable=False),
    Column("ocr", Text),
    Column("ocr_boxes", Text),
    Column("ocr_model", Text),
    Column("captions", Text, nullable=False),
)


# ------------------------------------------------------------------------------------------------ helpers


def raw_path_of(path: str) -> bytes:
    return os.fsencode(path)


def display_path(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def image_record(row: Any) -> ImageRecord:
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
        ctime=row.ctime,
        inode=row.inode,
    )


def to_blob(vector: np.ndarray | None) -> bytes | None:
    return None if vector is None else np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes | None, dim: int) -> np.ndarray | None:
    if blob is None or len(blob) != 4 * dim:
        return None
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def image_row(image: DecodedImage, model: str, indexed_at: datetime) -> dict[str, Any]:
    raw = raw_path_of(image.path)
    return {
        "raw_path": raw,
        "path": display_path(raw),
        "size": int(image.size),
        "mtime": float(image.mtime),
        "sha256": image.sha256,
        "width": int(image.width),
        "height": int(image.height),
        "taken_at": image.taken_at,
        "model": model,
        "indexed_at": indexed_at,
        "ctime": None if image.ctime is None else float(image.ctime),
        "inode": None if image.inode is None else int(image.inode),
    }
