"""`xmodal watch` (indexer/ingest/watch.py): a real watcher, on OS events or polling, keeps a library current
through add, edit, move, delete and a root deleted and created again; searches and `xmodal info` work while it
runs; SIGTERM finishes and exits 0; `xmodal check` is clean afterwards. Every wait is bounded (60 s)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import draw
from xmodal.engine.cli.main import cli
from xmodal.engine.search.engine import SearchEngine
from xmodal.indexer.ingest.watch import HEARTBEAT_FILE, Pending, Watcher, ignored, owning_root, watch_status
from xmodal.indexer.storage.library import Library

TESTS = Path(__file__).resolve().parent
LIMIT = 60.0


def rows(library: Path) -> dict[str, tuple[int, str]]:
    """{file name: (row id, content hash)} of the library's photos, as a reader sees them now."""
    with Library(library) as lib:
        return {os.path.basename(s.path): (s.id, s.sha256) for s in lib.store.image_states()}


def until(condition, what: str):
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"the library did not converge within {LIMIT:.0f}s: {what}")


class Running:
    """A Watcher on a thread, stopped on exit."""

    def __init__(self, library, paths, **options):
        self.stop, self.ready = threading.Event(), threading.Event()
        self.watcher = Watcher(library, paths, "fake-colour", debounce=0.2, **options)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.watcher.run(self.stop.is_set, ready=self.ready.set)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)
            self.ready.set()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(LIMIT) and not self.errors, self.errors
        return self.watcher

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(LIMIT)
        assert not self.thread.is_alive() and not self.errors, self.errors


@pytest.mark.parametrize("events", [True, False], ids=["events", "polling"])
def test_a_watcher_follows_add_edit_move_and_delete_and_check_is_clean(photos, library, fake_encoder, events):
    with Running(library, [photos], events=events, poll_seconds=0.5) as watcher:
        assert watcher.report.mode == ("events" if events else "polling")
        before = until(lambda: rows(library) if len(rows(library)) == 4 else None, "the first scan")

        draw(photos / "new" / "white.jpg", "white")
        until(lambda: "white.jpg" in rows(library), "a new photo is indexed")

        draw(photos / "red.jpg", "cyan")  # edited in place
        until(lambda: rows(library)["red.jpg"][1] != before["red.jpg"][1], "an edited photo is embedded again")
        with SearchEngine(library) as engine:  # a search while the watcher runs sees the new content
            assert os.path.basename(engine.search_text("cyan", 1)[0].path) == "red.jpg"

        os.rename(photos / "blue.jpg", photos / "trip" / "blue-moved.jpg")
        until(lambda: "blue-moved.jpg" in rows(library) and "blue.jpg" not in rows(library), "a move")
        assert rows(library)["blue-moved.jpg"][0] == before["blue.jpg"][0]  # the same row: vector kept

        (photos / "green.png").unlink()
        until(lambda: "green.png" not in rows(library), "a deletion")

        info = CliRunner().invoke(cli, ["info", "--library", str(library), "--json"])
        assert info.exit_code == 0 and json.loads(info.stdout)["watch"]["running"] is True

    assert watch_status(library) is None  # a clean exit removes the heartbeat
    assert set(rows(library)) == {"red.jpg", "blue-moved.jpg", "yellow.webp", "white.jpg"}
    check = CliRunner().invoke(cli, ["check", "--library", str(library)])
    assert check.exit_code == 0, check.output


def test_a_root_deleted_and_created_again_is_watched_again(photos, library, fake_encoder):
    with Running(library, [photos]):
        until(lambda: len(rows(library)) == 4, "the first scan")
        shutil.rmtree(photos)
        time.sleep(1.0)
        assert len(rows(library)) == 4  # a missing root keeps its photos (an unplugged drive)
        draw(photos / "black.jpg", "black")
        until(lambda: set(rows(library)) == {"black.jpg"}, "the new folder's photo in, the old ones out")
        draw(photos / "later" / "purple.jpg", "purple")
        until(lambda: "purple.jpg" in rows(library), "a photo added to the new folder")


def test_sigterm_finishes_and_exits_0_and_a_later_index_has_nothing_left(photos, library):
    child = subprocess.Popen([sys.executable, str(TESTS / "fake_xmodal.py"), "watch", str(photos), "--library",
                              str(library), "--model", "fake-colour", "--debounce", "0.2", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        until(lambda: (watch_status(library) or {}).get("running"), "the watcher's heartbeat")
        draw(photos / "white.jpg", "white")
        until(lambda: "white.jpg" in rows(library), "a photo added while the child watches")
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=LIMIT)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert json.loads(out)["added"] == 5 and "watching 1 folder(s) with file events" in err
    assert not (library / HEARTBEAT_FILE).exists()
    again = subprocess.run([sys.executable, str(TESTS / "fake_xmodal.py"), "index", "--library", str(library), "--json"],
                           capture_output=True, text=True, timeout=LIMIT)
    assert again.returncode == 0 and json.loads(again.stdout)["indexed"] == 0


def test_a_stale_heartbeat_reads_as_not_running(library):
    library.mkdir()
    (library / HEARTBEAT_FILE).write_text(json.dumps({"pid": os.getpid(), "beat": time.time() - 3600,
                                                       "interval": 2.0, "roots": ["/x"], "mode": "events"}))
    assert watch_status(library)["running"] is False
    (library / HEARTBEAT_FILE).write_text("{damaged")
    assert watch_status(library) is None


def test_events_are_debounced_per_root_and_the_library_and_hidden_files_are_ignored():
    pending = Pending()
    pending.touch("/a", 0.0)
    pending.touch("/a", 0.9)
    assert pending.due(1.0, debounce=1.0, max_wait=10.0) == []  # still busy
    assert pending.due(2.0, debounce=1.0, max_wait=10.0) == ["/a"] and len(pending) == 0
    for t in range(0, 12):  # a steady stream still gets indexed after max_wait
        pending.touch("/b", float(t))
    assert pending.due(11.5, debounce=1.0, max_wait=10.0) == ["/b"]

    assert owning_root("/p/q/r.jpg", ["/p", "/p/q"]) == "/p/q" and owning_root("/z.jpg", ["/p"]) is None
    assert ignored("/p/lib/library.db-wal", "/p", "/p/lib")
    assert ignored("/p/.cache/x.jpg", "/p", "/lib") and not ignored("/home/.pics/x.jpg", "/home/.pics", "/lib")


def test_when_the_inotify_limit_runs_out_it_says_so_once_and_rescans_instead(photos, library, fake_encoder,
                                                                              monkeypatch, caplog):
    import errno

    from watchdog.observers import Observer

    def limit_reached(*args, **kwargs):  # what inotify_add_watch answers past fs.inotify.max_user_watches
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(Observer, "schedule", limit_reached)
    with caplog.at_level("WARNING", logger="xmodal.indexer.ingest.watch"):
        with Running(library, [photos], poll_seconds=0.5) as watcher:
            assert watcher.report.mode == "polling"
            draw(photos / "white.jpg", "white")
            until(lambda: "white.jpg" in rows(library), "a photo found by a rescan")
    warnings = [r.message for r in caplog.records if "file events unavailable" in r.message]
    assert len(warnings) == 1 and "inotify watch limit" in warnings[0]
