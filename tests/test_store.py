"""xmodal.indexer.storage.store: the SQLite metadata store of a library."""
from __future__ import annotations

import os
import sqlite3
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from xmodal.indexer.storage import store as store_module
from xmodal.indexer.records import DecodedImage, ImageRecord, TextRecord
from xmodal.indexer.storage.store import SCHEMA_VERSION, Store, StoreError


def decoded(path: str, size: int = 100, mtime: float = 1_700_000_000.5,
            taken_at: datetime | None = None) -> DecodedImage:
    return DecodedImage(
        path=path, size=size, mtime=mtime, sha256=f"sha-{size}", width=640, height=480,
        taken_at=taken_at, image=Image.new("RGB", (2, 2)),
    )


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "lib", create=True) as s:
        yield s


# -- opening


def test_opening_a_directory_without_a_library_says_how_to_create_one(tmp_path):
    with pytest.raises(StoreError, match=r"no xmodal library at .*xmodal index PATH --library"):
        Store(tmp_path)
    assert not (tmp_path / "library.db").exists()


def test_create_makes_the_directory_and_a_wal_database_at_the_current_schema(tmp_path):
    with Store(tmp_path / "a" / "b", create=True) as s:
        assert s.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(tmp_path / "a" / "b" / "library.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"images", "texts", "meta"} <= tables


def test_reopening_keeps_the_data(tmp_path):
    with Store(tmp_path, create=True) as s:
        s.add_images([decoded("/p/a.jpg")], "clip")
    with Store(tmp_path) as s:
        assert s.count_images() == 1


def test_a_library_from_a_newer_xmodal_is_refused(tmp_path):
    with Store(tmp_path, create=True) as s:
        s.set_meta("schema_version", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=rf"newer xmodal \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\); upgrade"):
        Store(tmp_path)


def test_a_file_that_is_not_sqlite_is_reported_with_its_path(tmp_path):
    (tmp_path / "library.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"library\.db is damaged \(file is not a database\).*not a usable xmodal"):
        Store(tmp_path)


def test_a_second_migration_runs_once_on_an_old_library(tmp_path, monkeypatch):
    with Store(tmp_path, create=True) as s:
        s.add_images([decoded("/p/a.jpg")], "clip")
    calls = []

    def migration_2(conn):
        calls.append(1)
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN rating INTEGER")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, migration_2])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Store(tmp_path) as s:
        assert s.schema_version == SCHEMA_VERSION + 1
        assert s.get_images([1])[0].path == "/p/a.jpg"  # existing rows survive
    with Store(tmp_path) as s:  # already there: not applied again
        assert s.schema_version == SCHEMA_VERSION + 1
    assert calls == [1]
    columns = [r[1] for r in sqlite3.connect(tmp_path / "library.db").execute("PRAGMA table_info(images)")]
    assert "rating" in columns


def test_a_failing_migration_leaves_the_library_untouched(tmp_path, monkeypatch):
    Store(tmp_path, create=True).close()

    def broken_migration_2(conn):
        conn.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, broken_migration_2])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="boom"):
        Store(tmp_path)
    monkeypatch.undo()
    with Store(tmp_path) as s:
        assert s.schema_version == SCHEMA_VERSION
    tables = {r[0] for r in sqlite3.connect(tmp_path / "library.db").execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables


# -- meta


def test_meta_values_round_trip_as_json(store):
    assert store.get_meta("model") is None
    assert store.get_meta("model", "default") == "default"
    store.set_meta("model", {"name": "clip", "dim": 512, "tags": ["a", "b"]})
    store.set_meta("model", {"name": "siglip", "dim": 768, "tags": []})
    assert store.get_meta("model") == {"name": "siglip", "dim": 768, "tags": []}


def test_a_meta_value_that_is_not_json_is_refused_by_key(store):
    with pytest.raises(StoreError, match="'when' is not JSON-serialisable"):
        store.set_meta("when", datetime.now())


# -- images


def test_added_images_get_increasing_ids_and_come_back_in_the_order_asked(store):
    taken = datetime(2021, 6, 1, 12, 30, 5)
    ids = store.add_images([decoded("/p/a.jpg", 1, taken_at=taken), decoded("/p/b.jpg", 2)], "clip-b32")
    assert ids == [1, 2]
    records = store.get_images([2, 99, 1])  # unknown id dropped
    assert records == [
        ImageRecord(2, "/p/b.jpg", 2, 1_700_000_000.5, "sha-2", 640, 480, None, "clip-b32"),
        ImageRecord(1, "/p/a.jpg", 1, 1_700_000_000.5, "sha-1", 640, 480, taken, "clip-b32"),
    ]


def test_get_images_accepts_numpy_ids(store):
    store.add_images([decoded("/p/a.jpg")], "m")
    assert [r.id for r in store.get_images(np.array([1], dtype=np.int64))] == [1]


def test_a_timezone_aware_taken_at_keeps_its_offset(store):
    taken = datetime(2021, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    store.add_images([decoded("/p/a.jpg", taken_at=taken)], "m")
    assert store.get_images([1])[0].taken_at == taken
    assert store.get_images([1])[0].taken_at.utcoffset() == timedelta(hours=2)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX byte paths")
def test_a_non_utf8_file_name_round_trips_exactly(store, tmp_path):
    raw = b"/photos/caf\xe9-\xff.jpg"  # latin-1 bytes: not valid UTF-8
    path = os.fsdecode(raw)
    store.add_images([decoded(path)], "m")
    assert store.get_images([1])[0].path == path
    assert os.fsencode(store.get_images([1])[0].path) == raw
    assert [s[:4] for s in store.image_states()] == [(path, 1, 100, 1_700_000_000.5)]
    display = sqlite3.connect(tmp_path / "lib" / "library.db").execute("SELECT path FROM images").fetchone()[0]
    assert display == "/photos/caf\\xe9-\\xff.jpg"


def test_adding_a_path_that_is_already_indexed_is_refused_and_writes_nothing(store):
    store.add_images([decoded("/p/a.jpg")], "m")
    with pytest.raises(StoreError, match=r"/p/a\.jpg is already indexed \(id 1.*replace_images"):
        store.add_images([decoded("/p/new.jpg"), decoded("/p/a.jpg")], "m")
    assert store.count_images() == 1


def test_the_same_path_twice_in_one_batch_is_refused(store):
    with pytest.raises(StoreError, match="appears twice"):
        store.add_images([decoded("/p/a.jpg"), decoded("/p/a.jpg")], "m")
    assert store.count_images() == 0


def test_replacing_a_changed_file_gives_it_a_new_id_and_reports_the_old_one(store):
    store.add_images([decoded("/p/a.jpg", 1), decoded("/p/b.jpg", 2)], "m")
    new_ids, replaced = store.replace_images([decoded("/p/b.jpg", 20), decoded("/p/c.jpg", 3)], "m")
    assert new_ids == [3, 4] and replaced == [2]
    assert store.get_images([2]) == []
    assert store.get_images([3])[0].size == 20


def test_ids_are_never_reused_after_deleting_the_newest_row(store):
    store.add_images([decoded("/p/a.jpg"), decoded("/p/b.jpg")], "m")
    assert store.delete_images([2]) == 1
    assert store.add_images([decoded("/p/c.jpg")], "m") == [3]


def test_delete_images_ignores_unknown_ids_and_counts_deleted_rows(store):
    store.add_images([decoded(f"/p/{i}.jpg") for i in range(3)], "m")
    assert store.delete_images(np.array([1, 3, 42])) == 2
    assert store.count_images() == 1
    np.testing.assert_array_equal(store.all_image_ids(), [2])


def test_image_states_stream_every_image_in_id_order_across_pages(store, monkeypatch):
    monkeypatch.setattr(store_module, "_STREAM_BATCH", 3)
    store.add_images([decoded(f"/p/{i:02d}.jpg", size=i) for i in range(8)], "m")
    store.delete_images([4])
    states = store.image_states()
    assert not isinstance(states, list)
    rows = list(states)
    assert [r[1] for r in rows] == [1, 2, 3, 5, 6, 7, 8]
    assert rows[0][:4] == ("/p/00.jpg", 1, 0, 1_700_000_000.5)


def test_the_store_can_be_written_while_image_states_is_iterating(store, monkeypatch):
    monkeypatch.setattr(store_module, "_STREAM_BATCH", 2)
    store.add_images([decoded(f"/p/{i}.jpg") for i in range(5)], "m")
    seen = []
    for path, image_id, *_ in store.image_states():
        seen.append(image_id)
        if image_id == 1:
            store.delete_images([4])
    assert seen == [1, 2, 3, 5]


def test_all_image_ids_is_an_int64_array(store):
    assert store.all_image_ids().dtype == np.int64 and len(store.all_image_ids()) == 0
    store.add_images([decoded("/p/a.jpg"), decoded("/p/b.jpg")], "m")
    np.testing.assert_array_equal(store.all_image_ids(), np.array([1, 2], dtype=np.int64))


def test_a_transaction_block_rolls_back_every_write_on_error(store):
    with pytest.raises(KeyError):
        with store.transaction():
            store.add_images([decoded("/p/a.jpg")], "m")
            store.add_texts(["hello"], "t.txt", "m")
            raise KeyError("abort")
    assert store.count_images() == 0 and store.count_texts() == 0


def test_a_transaction_block_commits_at_the_end(store, tmp_path):
    with store.transaction():
        store.add_images([decoded("/p/a.jpg")], "m")
        store.set_meta("built", True)
        assert store.count_images() == 1  # reads inside see the pending writes
    with Store(tmp_path / "lib") as other:
        assert other.count_images() == 1 and other.get_meta("built") is True


# -- texts


def test_texts_come_back_in_order_with_their_source(store):
    ids = store.add_texts(["a dog, running", 'a "cat"'], "captions.txt", "clip")
    assert ids == [1, 2]
    assert store.get_texts([2, 7, 1]) == [
        TextRecord(2, 'a "cat"', "captions.txt", "clip"),
        TextRecord(1, "a dog, running", "captions.txt", "clip"),
    ]
    assert store.count_texts() == 2
    assert store.add_texts([], "x", "clip") == []


def test_text_sources_count_texts_per_file(store):
    store.add_texts(["a", "b", "c"], "one.txt", "m")
    store.add_texts(["d"], "two.txt", "m")
    assert store.text_sources() == {"one.txt": 3, "two.txt": 1}


def test_deleting_a_source_returns_exactly_its_ids(store):
    store.add_texts(["a", "b"], "one.txt", "m")
    store.add_texts(["c"], "two.txt", "m")
    assert store.delete_texts_from_source("one.txt") == [1, 2]
    assert store.delete_texts_from_source("one.txt") == []
    assert store.text_sources() == {"two.txt": 1}
    np.testing.assert_array_equal(store.all_text_ids(), [3])


def test_delete_texts_by_id(store):
    store.add_texts(["a", "b", "c"], "one.txt", "m")
    assert store.delete_texts([1, 3]) == 2
    assert [t.text for t in store.get_texts([1, 2, 3])] == ["b"]


def test_a_library_that_cannot_be_made_leaves_no_empty_database(tmp_path, monkeypatch):
    """Creating a library on a full disk fails with a message that says so, and leaves no 0-byte library.db
    that a later command would take for a damaged library."""
    from sqlalchemy.exc import OperationalError

    def full(conn):
        raise OperationalError("CREATE TABLE", {}, Exception("database or disk is full"))

    monkeypatch.setattr(store_module, "MIGRATIONS", [full, *store_module.MIGRATIONS[1:]])
    with pytest.raises(StoreError, match="the disk is full"):
        Store(tmp_path / "lib", create=True)
    assert not (tmp_path / "lib" / "library.db").exists()
