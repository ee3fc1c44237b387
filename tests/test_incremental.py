"""Incremental indexing, roots, the writer lock, interruption, write failures, migration and `check`."""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import draw, vectors_by_path
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine
from xmodal.indexer.storage import store as store_module
from xmodal.indexer.models.encoders import register_encoder
from xmodal.indexer.storage.check import check_library, missing_files, repair
from xmodal.indexer.storage.library import Library, LibraryError
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.storage.store import Store, StoreError
from xmodal.indexer.storage.vector_index import VectorIndex, VectorIndexError


def _index(library: Path, roots, encoder, **kw):
    with Library(library, create=True) as lib:
        return index_images(lib, [str(r) for r in roots] if roots else None, encoder, **kw)


def _check_ok(library: Path) -> None:
    with Library(library) as lib:
        report = check_library(lib)
    assert report.ok, report.problems


def test_a_moved_photo_keeps_its_id_and_vector_and_is_not_embedded(photos, library, fake_encoder):
    _index(library, [photos], fake_encoder)
    with Library(library) as lib:
        before = {Path(r.path).name: r.id for r in lib.store.get_images(lib.store.all_image_ids().tolist())}
    (photos / "elsewhere").mkdir()
    os.rename(photos / "red.jpg", photos / "elsewhere" / "renamed.jpg")
    draw(photos / "blue.jpg", "cyan", size=(70, 70))  # edited in place
    fake_encoder.calls["images"] = 0
    report = _index(library, [photos], fake_encoder)
    assert (report.added, report.reembedded, report.moved, report.removed, report.unchanged) == (0, 1, 1, 0, 2)
    assert fake_encoder.calls["images"] == 1
    with Library(library) as lib:
        after = {Path(r.path).name: r.id for r in lib.store.get_images(lib.store.all_image_ids().tolist())}
    assert after["renamed.jpg"] == before["red.jpg"] and "red.jpg" not in after
    assert after["blue.jpg"] != before["blue.jpg"]
    _check_ok(library)


def test_a_copy_is_embedded_and_a_deleted_original_is_removed(photos, library, fake_encoder):
    _index(library, [photos], fake_encoder)
    shutil.copy(photos / "red.jpg", photos / "copy.jpg")
    (photos / "green.png").unlink()
    report = _index(library, [photos], fake_encoder)
    assert (report.added, report.moved, report.removed) == (1, 0, 1)
    _check_ok(library)


def test_several_roots_refresh_without_paths_and_remove_drops_one(tmp_path, library, fake_encoder):
    a, b = tmp_path / "a", tmp_path / "b"
    draw(a / "red.jpg", "red")
    draw(b / "blue.jpg", "blue")
    _index(library, [a], fake_encoder)
    _index(library, [b], fake_encoder)
    draw(a / "green.jpg", "green")
    report = _index(library, None, fake_encoder)  # no path: every known root
    assert (report.added, report.unchanged) == (1, 2) and report.roots == [str(a), str(b)]
    with Library(library) as lib:
        assert lib.roots == [str(a), str(b)]
        assert lib.remove_root(str(a)) == 2 and lib.roots == [str(b)]
        assert lib.store.count_images() == 1
        with pytest.raises(LibraryError, match="is not a root"):
            lib.remove_root(str(a))
    _check_ok(library)


def test_a_missing_root_keeps_its_photos(tmp_path, library, fake_encoder):
    a = tmp_path / "drive"
    draw(a / "red.jpg", "red")
    _index(library, [a], fake_encoder)
    a.rename(tmp_path / "unplugged")
    report = _index(library, None, fake_encoder)
    assert report.removed == 0 and "root not found" in report.skipped[0].reason
    with Library(library) as lib:
        assert lib.store.count_images() == 1


def test_check_and_repair_keep_the_photos_of_an_unplugged_drive(tmp_path, library, fake_encoder):
    """A root that is not there (a drive not mounted: here, renamed away) is missing, not deleted: check
    reports it without failing or advising a repair, and a repair (run for another problem) neither drops
    its photos as vanished nor drops its rows that need a new vector; files deleted under a root that is
    there are still dropped."""
    drive, home = tmp_path / "drive", tmp_path / "home"
    for colour in ("red", "green", "blue"):
        draw(drive / f"{colour}.jpg", colour)
    draw(home / "yellow.jpg", "yellow")
    draw(home / "white.jpg", "white")
    _index(library, [drive, home], fake_encoder)
    with Library(library) as lib:
        records = lib.store.get_images(lib.store.all_image_ids().tolist())
        on_drive = [r.id for r in records if "drive" in r.path]
        kept = sorted(r.id for r in records if not r.path.endswith("white.jpg"))
        index = VectorIndex.load(lib.index_path("images"))
        index.remove([on_drive[0]])  # with its stored vector gone too, this row needs embedding again
        index.save(lib.index_path("images"), generation=index.generation)
    db = sqlite3.connect(library / "library.db")
    db.execute("UPDATE images SET vector = NULL WHERE id = ?", (on_drive[0],))
    db.commit()
    db.close()
    drive.rename(tmp_path / "unplugged")
    (home / "white.jpg").unlink()

    runner, args = CliRunner(), ["--library", str(library)]
    out = runner.invoke(cli, ["check", "--json", *args])
    report = json.loads(out.stdout)
    assert report["unreachable_roots"] == {str(drive): 3} and report["vanished"] == [str(home / "white.jpg")]
    out = runner.invoke(cli, ["check", "--repair", "--json", *args])
    fixed = json.loads(out.stdout)["repair"]
    assert fixed["removed_vanished"] == 1 and fixed["kept_unreachable"] == 1 and fixed["failed"] == []
    with Library(library) as lib:
        assert sorted(lib.store.all_image_ids().tolist()) == kept  # all but the file deleted at home
    (tmp_path / "unplugged").rename(drive)  # plugged back in: nothing to embed but the row that lost its vector
    fake_encoder.calls["images"] = 0
    report = _index(library, None, fake_encoder)
    assert report.added == 0 and fake_encoder.calls["images"] == 1
    _check_ok(library)


def test_a_drive_that_is_only_unplugged_is_not_a_problem_for_check(tmp_path, library, fake_encoder):
    drive = tmp_path / "drive"
    draw(drive / "red.jpg", "red")
    _index(library, [drive], fake_encoder)
    drive.rename(tmp_path / "unplugged")
    out = CliRunner().invoke(cli, ["check", "--library", str(library)])
    assert out.exit_code == 0, out.output
    assert "not found" in out.stdout and "xmodal remove" in out.stdout and "--repair" not in out.output


def test_missing_files_tells_a_missing_root_from_vanished_files():
    there = {"/home", "/home/a.jpg", "/mnt/usb/deep"}
    vanished, unreachable = missing_files(
        ["/home/a.jpg", "/home/b.jpg", "/mnt/usb/x.jpg", "/mnt/usb/deep/y.jpg", "/elsewhere/z.jpg"],
        ["/home", "/mnt/usb", "/mnt/usb/deep"], exists=there.__contains__)
    assert vanished == ["/home/b.jpg", "/mnt/usb/deep/y.jpg", "/elsewhere/z.jpg"]
    assert unreachable == {"/mnt/usb": 1}


def test_no_roots_yet_is_a_clear_error(library, fake_encoder):
    with pytest.raises(LibraryError, match="no folders yet"):
        _index(library, None, fake_encoder)


def test_a_second_indexer_fails_fast_naming_the_first(photos, library, fake_encoder):
    with Library(library, create=True) as first, first.writing():
        with Library(library) as second:
            with pytest.raises(LibraryError, match=rf"being indexed by another process \(pid {os.getpid()}\)"):
                index_images(second, [str(photos)], fake_encoder)
    assert _index(library, [photos], fake_encoder).added == 4  # released


def test_stop_request_ends_after_the_batch_and_a_rerun_resumes(tmp_path, library, fake_encoder):
    root = tmp_path / "many"
    for i in range(20):
        draw(root / f"{i:02d}.png", ["red", "green", "blue", "white"][i % 4], size=(16 + i, 16))
    asked = []
    report = _index(library, [root], fake_encoder, batch_size=4, should_stop=lambda: asked.append(1) or len(asked) >= 2)
    assert report.interrupted and report.processed == 8 and report.added == 8
    fake_encoder.calls["images"] = 0
    again = _index(library, [root], fake_encoder, batch_size=4)
    assert (again.added, again.unchanged, again.interrupted) == (12, 8, False)
    assert fake_encoder.calls["images"] == 12  # nothing committed was embedded twice
    _check_ok(library)


@pytest.mark.parametrize("where", ["store", "index"])
def test_a_full_disk_stops_with_a_clear_message_and_loses_nothing_committed(photos, library, fake_encoder,
                                                                            monkeypatch, where):
    for i in range(6):
        draw(photos / "more" / f"{i}.png", "white", size=(10 + i, 10))
    full = OSError(errno.ENOSPC, "No space left on device")
    calls = []
    if where == "store":
        original = Store.replace_images

        def replace_images(self, *a, **kw):
            calls.append(1)
            if len(calls) > 1:
                raise full
            return original(self, *a, **kw)

        monkeypatch.setattr(Store, "replace_images", replace_images)
    else:
        original = VectorIndex.save

        def save(self, *a, **kw):  # the end-of-run save of a non-empty index fails: every batch is committed
            if self.ntotal:
                raise full
            return original(self, *a, **kw)

        monkeypatch.setattr(VectorIndex, "save", save)
    with pytest.raises(LibraryError, match=rf"cannot write to library {library}: No space left on device"):
        _index(library, [photos], fake_encoder, batch_size=4)
    monkeypatch.undo()
    committed = 4 if where == "store" else 10
    with SearchEngine(library) as engine:  # the library opens and answers from what was committed
        assert len(engine.search_text("red", k=50)) == committed
    report = _index(library, [photos], fake_encoder, batch_size=4)
    assert (report.added, report.unchanged) == (10 - committed, committed)
    _check_ok(library)


def test_a_read_only_library_is_refused_with_its_name(photos, library, fake_encoder, monkeypatch):
    _index(library, [photos], fake_encoder)
    real_open = os.open

    def read_only(path, *a, **kw):
        if str(path).endswith("index.lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr("xmodal.indexer.storage.library.os.open", read_only)
    with pytest.raises(LibraryError, match=rf"cannot write to library {library}: Read-only file system"):
        _index(library, [photos], fake_encoder)
    monkeypatch.undo()
    _check_ok(library)


def test_a_folder_that_is_not_a_library_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="no xmodal library"):
        Library(tmp_path)
    (tmp_path / "library.db").write_bytes(b"not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable xmodal library"):
        Library(tmp_path)


def test_a_schema_1_library_is_upgraded_and_back_filled_without_embedding(photos, library, fake_encoder):
    _index(library, [photos], fake_encoder)
    expected = vectors_by_path(library)
    db = sqlite3.connect(library / "library.db")  # turn it into what version 1 wrote
    db.executescript("ALTER TABLE images DROP COLUMN vector; ALTER TABLE texts DROP COLUMN vector;"
                     "ALTER TABLE images DROP COLUMN ctime; ALTER TABLE images DROP COLUMN inode;"
                     "DROP TRIGGER images_words_delete; DROP TABLE image_text; DROP TABLE keywords;"
                     "DROP INDEX ix_texts_image_id; ALTER TABLE texts DROP COLUMN image_id;"
                     "DROP TABLE keywords_tri;"
                     "UPDATE meta SET value = '1' WHERE key = 'schema_version';"
                     "DELETE FROM meta WHERE key LIKE 'generation.%' OR key = 'roots';")
    db.close()
    sidecar = library / "images.faiss.json"
    meta = json.loads(sidecar.read_text())
    del meta["generation"]
    sidecar.write_text(json.dumps(meta))
    with Library(library) as lib:
        assert lib.store.schema_version == store_module.SCHEMA_VERSION == 5
        assert not check_library(lib).ok  # rows without a stored vector
    fake_encoder.calls["images"] = 0
    report = _index(library, [photos], fake_encoder)
    assert (report.indexed, report.unchanged) == (0, 4) and fake_encoder.calls["images"] == 0
    _check_ok(library)
    got = vectors_by_path(library)
    assert set(got) == set(expected)
    for p in expected:
        np.testing.assert_allclose(got[p], expected[p], atol=1e-6)


def test_check_finds_every_problem_and_repair_reembeds_only_what_it_must(photos, library, fake_encoder):
    _index(library, [photos], fake_encoder)
    with Library(library) as lib:
        ids = lib.store.all_image_ids().tolist()
        index = VectorIndex.load(lib.index_path("images"))
        index.remove([ids[0], ids[1]])  # ids[0]: blob still in the store; ids[1]: no vector anywhere
        index.add(np.array([777]), np.eye(8, dtype=np.float32)[:1])
        index.save(lib.index_path("images"), generation=index.generation)
    db = sqlite3.connect(library / "library.db")
    db.execute("UPDATE images SET vector = NULL WHERE id = ?", (ids[1],))
    db.commit()
    db.close()
    (photos / "trip" / "yellow.webp").unlink()
    with Library(library) as lib:
        report = check_library(lib)
        m = report.modalities["images"]
        assert m.rows_without_vector == [ids[0], ids[1]] and m.vectors_without_row == [777]
        assert m.rows_without_stored_vector == [ids[1]] and len(report.vanished) == 1
        fake_encoder.calls["images"] = 0
        fixed = repair(lib, lambda: fake_encoder)
        assert fixed.reembedded == 1 and fake_encoder.calls["images"] == 1 and fixed.removed_vanished == 1
    _check_ok(library)


def test_check_command_exit_codes_and_json(photos, library):
    runner = CliRunner()
    args = ["--library", str(library)]
    assert runner.invoke(cli, ["index", str(photos), "--model", "fake-colour", *args]).exit_code == 0
    out = runner.invoke(cli, ["check", "--json", *args])
    assert out.exit_code == 0 and json.loads(out.stdout)["ok"] is True
    (photos / "red.jpg").unlink()
    out = runner.invoke(cli, ["check", *args])
    assert out.exit_code == 1 and "no longer exist" in out.stdout
    out = runner.invoke(cli, ["check", "--repair", "--json", *args])
    assert out.exit_code == 0 and json.loads(out.stdout)["repair"]["removed_vanished"] == 1
    out = runner.invoke(cli, ["remove", str(photos), "--json", *args])
    assert out.exit_code == 0 and json.loads(out.stdout)["removed"] == 3
    out = runner.invoke(cli, ["index", *args])
    assert out.exit_code == 1 and "no folders yet" in out.output


def _save_cmyk(path):
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(path, "JPEG")


def test_every_kind_of_bad_or_odd_input_at_the_pipeline_level(tmp_path, library, fake_encoder, monkeypatch):
    root = tmp_path / "odd"
    root.mkdir()
    _save_cmyk(root / "cmyk.jpg")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(root / "sixteen.png")
    Image.new("P", (20, 20), 3).save(root / "palette.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(root / "alpha.png")
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 20), (0, 0, 255)).save(root / "rotated.jpg", exif=exif)
    Image.new("RGB", (4000, 3000), (10, 120, 10)).save(root / "twelve_mp.jpg", quality=50)
    png = (root / "palette.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "empty.jpg").write_bytes(b"")
    os.symlink(root / "loop", root / "loop")  # a symlink loop named like a folder
    os.symlink(root / "self.jpg", root / "self.jpg")  # and one named like a photo
    draw(root / "vanishes.jpg", "red")
    draw(root / "locked.jpg", "red")

    import xmodal.indexer.ingest.decode as decode_module
    import xmodal.indexer.ingest.pipeline as pipeline_module
    real_iter, real_open = pipeline_module.iter_decoded, decode_module.os.open

    def iter_decoded(paths, **kw):  # files deleted or truncated between the walk and the read
        paths = list(paths)
        (root / "vanishes.jpg").unlink()
        return real_iter(paths, **kw)

    def no_permission(path, *a, **kw):
        if str(path).endswith("locked.jpg"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(pipeline_module, "iter_decoded", iter_decoded)
    monkeypatch.setattr(decode_module.os, "open", no_permission)
    report = _index(library, [root], fake_encoder)
    skipped = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(skipped) == {"truncated.png", "empty.jpg", "self.jpg", "vanishes.jpg", "locked.jpg"}
    assert "permission denied" in skipped["locked.jpg"] and "not found" in skipped["vanishes.jpg"]
    assert report.added == 7
    with Library(library) as lib:
        recs = {Path(r.path).name: r for r in lib.store.get_images(lib.store.all_image_ids().tolist())}
    assert (recs["rotated.jpg"].width, recs["rotated.jpg"].height) == (20, 60)
    assert (recs["twelve_mp.jpg"].width, recs["twelve_mp.jpg"].height) == (4000, 3000)
    _check_ok(library)


def test_a_second_writer_is_refused_before_any_model_loads(photos, library, fake_encoder):
    """While one process indexes (holds the writer lock), `xmodal index` refuses at once, naming the
    holder's pid, instead of loading its encoder first; `xmodal check` says a run is in progress and does
    not advise a repair."""
    _index(library, [photos], fake_encoder)
    built = []
    register_encoder("counted", lambda: built.append(1) or fake_encoder)
    with Library(library) as holder, holder.writing():
        runner, args = CliRunner(), ["--library", str(library)]
        out = runner.invoke(cli, ["index", str(photos), "--model", "counted", *args])
        assert out.exit_code == 1 and f"pid {os.getpid()}" in out.output and built == []
        out = runner.invoke(cli, ["check", "--json", *args])
        assert json.loads(out.stdout)["writer_pid"] == str(os.getpid())
        out = runner.invoke(cli, ["check", *args])
        assert "being indexed by another process" in out.stdout and "--repair" not in out.output
    with Library(library) as lib:
        assert lib.writer_pid() is None


def test_a_root_given_through_a_symbolic_link_is_not_indexed_twice(photos, tmp_path, library, fake_encoder):
    link = tmp_path / "link"
    link.symlink_to(photos)
    _index(library, [photos], fake_encoder)
    report = _index(library, [link], fake_encoder)
    assert report.added == 0 and report.unchanged == 4
    with Library(library) as lib:
        assert lib.roots == [str(photos)] and lib.store.count_images() == 4
    assert CliRunner().invoke(cli, ["remove", str(link), "--library", str(library)]).exit_code == 0


def test_a_library_inside_an_indexed_folder_never_indexes_its_own_files(photos, fake_encoder):
    """`xmodal index Pictures --library Pictures/xmodal-lib`, then serve (thumbnails) and index again."""
    inside = photos / "xmodal-lib"
    _index(inside, [photos], fake_encoder)
    draw(inside / "thumbnails" / "1.jpg", "red")  # what the web server caches there
    report = _index(inside, None, fake_encoder)
    assert report.added == 0
    with Library(inside) as lib:
        assert not any("xmodal-lib" in r.path for r in lib.store.get_images(lib.store.all_image_ids().tolist()))


def test_bit_rot_in_an_index_file_is_found_by_check_and_repaired_from_the_store(photos, library, fake_encoder):
    """Random bytes over the stored vectors load fine and make one photo rank first for everything; the
    sidecar's checksum gives it away, and repair rebuilds the file from the store's exact vectors."""
    _index(library, [photos], fake_encoder)
    clean = vectors_by_path(library)
    path = library / "images.faiss"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = np.random.default_rng(0).integers(0, 256, 16, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    runner, args = CliRunner(), ["--library", str(library)]
    out = runner.invoke(cli, ["check", "--json", *args])
    report = json.loads(out.stdout)
    assert out.exit_code == 1 and "does not match the checksum" in report["modalities"]["images"]["index_error"]
    out = runner.invoke(cli, ["check", "--repair", "--json", *args])
    assert out.exit_code == 0 and json.loads(out.stdout)["repair"]["rebuilt"][0]["modality"] == "images"
    assert fake_encoder.calls["images"] == 4  # nothing embedded again
    repaired = vectors_by_path(library)
    assert repaired.keys() == clean.keys()
    for p in clean:
        np.testing.assert_allclose(repaired[p], clean[p], atol=1e-6)


def test_an_index_file_and_a_sidecar_from_different_saves_do_not_pair(photos, library, fake_encoder):
    """A SIGKILL between the two renames can leave a new index file beside the old sidecar: their sizes
    disagree, so the pair is refused (and rebuilt from the store) instead of trusted."""
    _index(library, [photos], fake_encoder)
    with Library(library) as lib:
        index = VectorIndex.load(lib.index_path("images"))
    side = (library / "images.faiss.json").read_text()
    big = VectorIndex.create(index.dim, "IVF1,Flat")
    big.train(np.eye(index.dim, dtype=np.float32))
    big.add(index.ids(), index.reconstruct(index.ids()))
    big.save(library / "images.faiss", generation=index.generation)
    (library / "images.faiss.json").write_text(side)  # the old sidecar: says Flat
    (library / "images.faiss.json.tmp").write_text("{}")  # a temp file the killed run left
    with pytest.raises(VectorIndexError, match="interrupted save"):
        VectorIndex.load(library / "images.faiss")
    _check_ok_after_repair = CliRunner().invoke(cli, ["check", "--repair", "--library", str(library)])
    assert _check_ok_after_repair.exit_code == 0, _check_ok_after_repair.output
    _check_ok(library)
    with Library(library) as lib:
        lib.vector_index("images")
        with lib.writing():
            lib.save("images")
    assert not (library / "images.faiss.json.tmp").exists()


def test_a_run_leaves_its_rows_in_the_database_file_and_a_consistent_backup(photos, tmp_path, library, fake_encoder):
    """What a lost library.db-wal would take: after a run, nothing (the log is checkpointed into the
    database and a backup made); during a run, never the roots (checkpointed as soon as they are added)."""
    with Library(library, create=True) as lib, lib.writing():
        lib.add_roots([str(photos)])
        survivor = tmp_path / "survivor"
        survivor.mkdir()
        shutil.copy(library / "library.db", survivor / "library.db")  # the database file alone, -wal lost
    with Store(survivor) as store:
        assert store.get_meta("roots") == [str(photos)]

    _index(library, [photos], fake_encoder)
    assert not (library / "library.db-wal").exists() or (library / "library.db-wal").stat().st_size == 0
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(library / "library.db.bak", restored / "library.db")
    with Store(restored) as store:
        assert store.count_images() == 4 and store.get_meta("roots") == [str(photos)]


def test_a_damaged_database_is_named_as_such_and_repair_puts_back_its_backup(photos, tmp_path, library, fake_encoder):
    _index(library, [photos], fake_encoder)
    clean = vectors_by_path(library)
    db = library / "library.db"
    data = bytearray(db.read_bytes())
    page = 4096
    data[page:len(data)] = np.random.default_rng(1).integers(0, 256, len(data) - page, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    runner, args = CliRunner(), ["--library", str(library)]
    for command in (["check"], ["search", "red"], ["info"]):
        out = runner.invoke(cli, [*command, *args])
        assert out.exit_code == 1 and "is damaged" in out.output and "Traceback" not in out.output, command
        assert "check --repair" in out.output
    out = runner.invoke(cli, ["check", "--repair", "--json", *args])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["restored_backup"] is True and (library / "library.db.damaged").exists()
    fake_encoder.calls["images"] = 0
    assert _index(library, None, fake_encoder).added == 0 and fake_encoder.calls["images"] == 0
    repaired = vectors_by_path(library)
    assert repaired.keys() == clean.keys()


def test_sqlite_errors_are_told_apart():
    from sqlalchemy.exc import DatabaseError as SADatabaseError

    from xmodal.indexer.storage.recovery import DatabaseDamaged, database_problem

    def err(message):
        return database_problem(Path("/lib/library.db"), SADatabaseError("stmt", {}, Exception(message)), "reading")

    assert isinstance(err("database disk image is malformed"), DatabaseDamaged)
    assert "read-only" in str(err("attempt to write a readonly database"))
    assert "disk is full" in str(err("database or disk is full")) and not isinstance(err("disk I/O error"), DatabaseDamaged)


def _same_size_pair(photos: Path) -> tuple[Path, bytes]:
    """red.jpg, and purple content of exactly red.jpg's size (both padded: JPEG readers stop at the end marker)."""
    red, purple = photos / "red.jpg", draw(photos.parent / "purple.jpg", "purple")
    a, b = red.read_bytes(), purple.read_bytes()
    n = max(len(a), len(b))
    red.write_bytes(a + bytes(n - len(a)))
    return red, b + bytes(n - len(b))


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    st = os.stat(path)
    time.sleep(0.05)  # past the file system's timestamp granularity
    with open(path, "r+b") as f:  # in place: same inode, new ctime
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r` to the original
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime == st.st_mtime


def test_a_photo_rewritten_with_its_size_and_mtime_restored_is_embedded_again(photos, library, fake_encoder):
    red, purple = _same_size_pair(photos)
    _index(library, [photos], fake_encoder)
    before = vectors_by_path(library)[str(red)]
    _rewrite_keeping_size_and_mtime(red, purple)
    report = _index(library, [photos], fake_encoder)
    assert (report.reembedded, report.unchanged) == (1, 3)
    assert not np.allclose(vectors_by_path(library)[str(red)], before)
    _check_ok(library)


def test_a_file_whose_ctime_moved_but_content_did_not_is_hashed_once_not_embedded(photos, library, fake_encoder,
                                                                                   monkeypatch):
    from xmodal.indexer.ingest import pipeline

    _index(library, [photos], fake_encoder)
    time.sleep(0.05)
    os.chmod(photos / "red.jpg", 0o600)  # moves the ctime only
    hashed = []
    real = pipeline.file_sha256
    monkeypatch.setattr(pipeline, "file_sha256", lambda p: hashed.append(p) or real(p))
    fake_encoder.calls["images"] = 0
    report = _index(library, [photos], fake_encoder)
    assert (report.indexed, report.unchanged, fake_encoder.calls["images"]) == (0, 4, 0)
    assert hashed == [str(photos / "red.jpg")]
    _index(library, [photos], fake_encoder)  # the new ctime was recorded: no hashing now
    assert len(hashed) == 1


def test_rows_without_ctime_fall_back_to_size_and_mtime_and_verify_rehashes_everything(photos, library,
                                                                                     fake_encoder):
    red, purple = _same_size_pair(photos)
    _index(library, [photos], fake_encoder)
    db = sqlite3.connect(library / "library.db")  # rows from before schema 3
    db.execute("UPDATE images SET ctime = NULL, inode = NULL")
    db.commit()
    db.close()
    _rewrite_keeping_size_and_mtime(red, purple)
    assert _index(library, [photos], fake_encoder).unchanged == 4  # unknown ctime: size and mtime decide
    out = CliRunner().invoke(cli, ["index", "--verify", "--json", "--library", str(library)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert (report["reembedded"], report["unchanged"]) == (1, 3)
    with Library(library) as lib:
        states = list(lib.store.image_states())
    assert all(s.ctime is not None and s.inode is not None for s in states)  # filled in


def _cli(library: Path, *args: str):
    out = CliRunner().invoke(cli, [*args, "--library", str(library)])
    assert "Traceback" not in out.output and (out.exception is None or isinstance(out.exception, SystemExit)), \
        repr(out.exception)
    return out


def _set_meta(library: Path, key: str, value: str) -> None:
    db = sqlite3.connect(library / "library.db")
    db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    db.commit()
    db.close()


def test_bad_search_params_in_a_sidecar_are_dropped_with_a_warning(photos, library, fake_encoder, caplog):
    _index(library, [photos], fake_encoder)
    sidecar = library / "images.faiss.json"
    for params in ({"nprobe": "abc"}, ["nprobe"], {"efSearch": None}, {"nprobe": 1e400}):
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**meta, "search_params": params}))
        caplog.clear()
        out = _cli(library, "search", "red", "--json")
        assert out.exit_code == 0 and json.loads(out.stdout)
        assert "dropped" in caplog.text
        assert _cli(library, "check").exit_code == 0


@pytest.mark.parametrize("key, value, says", [
    ("schema_version", '"abc"', "schema version"), ("schema_version", "abc", "schema version"),
    ("dim", '"abc"', "model dim"), ("dim", "5", "model dim"), ("dim", "16", "stored vectors have 8"),
    ("dim", "{", "'dim' setting"),
])
def test_hand_edited_meta_is_a_one_line_error_and_check_repair_puts_back_the_backup(photos, library, fake_encoder,
                                                                                    key, value, says):
    _index(library, [photos], fake_encoder)
    _set_meta(library, key, value)
    for command in (["search", "red"], ["index"], ["check"], ["info"]):
        out = _cli(library, *command)
        assert out.exit_code == 1 and says in out.output and "library.db" in out.output, out.output
        assert "check --repair" in out.output
    out = _cli(library, "check", "--repair")
    assert out.exit_code == 0 and "put back library.db.bak" in out.output, out.output
    assert _cli(library, "search", "red").exit_code == 0


def _full_disk(monkeypatch):
    import faiss
    from types import SimpleNamespace

    def write_index(*a, **kw):
        raise RuntimeError("Error in void faiss::write_index(const faiss::Index*, faiss::IOWriter*, int) at "
                           "/project/faiss/faiss/impl/index_write.cpp:860: Error: 'ret == (size * 4)' failed")

    monkeypatch.setattr(faiss, "write_index", write_index)
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_bavail=0, f_frsize=4096))


def test_a_full_disk_during_rebuild_repair_and_index_says_so_without_faiss_internals(photos, library, fake_encoder,
                                                                                    monkeypatch):
    _index(library, [photos], fake_encoder)
    (library / "images.faiss").unlink()  # repair must write it again
    _full_disk(monkeypatch)
    with Library(library) as lib, lib.writing():
        with pytest.raises(VectorIndexError, match=r"cannot write .*images\.faiss: the disk is full$"):
            lib.rebuild_index("images")
    repaired = _cli(library, "check", "--repair")
    assert repaired.exit_code == 1 and "images.faiss: the disk is full" in repaired.output, repaired.output
    draw(photos / "new.png", "white")
    out = _cli(library, "index")
    assert out.exit_code == 1 and "images.faiss: the disk is full; stopped" in out.output, out.output
    for text in (repaired.output, out.output):
        assert "faiss::" not in text and "ret ==" not in text
    monkeypatch.undo()
    assert _cli(library, "check", "--repair").exit_code == 0


def test_a_library_on_read_only_media_is_searchable_and_left_untouched(photos, library, fake_encoder, monkeypatch):
    """A DVD, a read-only share or a snapshot: the database opens read-only and immutable, searches work
    from the CLI and the API, a write is refused in one line, and not a byte of the library changes."""
    from xmodal.indexer.storage import store as store_mod

    _index(library, [photos], fake_encoder)
    before = {p.name: p.read_bytes() for p in library.iterdir() if p.is_file()}
    monkeypatch.setattr(store_mod, "writable", lambda db_path: False)  # what access(2) says on such media
    with SearchEngine(library) as engine:
        assert engine.library.store.read_only
        assert Path(engine.search_text("red", k=1)[0].path).name == "red.jpg"
    runner, args = CliRunner(), ["--library", str(library)]
    out = runner.invoke(cli, ["search", "blue", "-k", "1", "--json", *args])
    assert out.exit_code == 0 and json.loads(out.stdout)[0]["path"].endswith("blue.jpg")
    out = runner.invoke(cli, ["index", str(photos), *args])
    assert out.exit_code == 1 and "read-only" in out.output and "Traceback" not in out.output
    after = {p.name: p.read_bytes() for p in library.iterdir() if p.is_file()}
    assert after == before
