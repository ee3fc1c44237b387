"""Crash safety with real child processes: SIGKILL at random points, SIGINT, searches during indexing.

The child is the real `xmodal` command with the fake encoder registered (tests/fake_xmodal.py), slowed by
FAKE_ENCODER_DELAY seconds per batch so that signals land in the middle of a run."""
from __future__ import annotations

import gc
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import vectors_by_path
from xmodal.engine.search.engine import SearchEngine
from xmodal.indexer.storage.check import check_library
from xmodal.indexer.storage.library import Library
from xmodal.indexer.ingest.pipeline import index_images

TESTS = Path(__file__).resolve().parent


def _make_photos(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        Image.new("RGB", (32, 32), colour).save(root / f"{i:04d}.png")
    return root


def _spawn(photos: Path, library: Path, delay: float, batch: int = 8) -> subprocess.Popen:
    env = {**os.environ, "FAKE_ENCODER_DELAY": str(delay)}
    env.pop("XMODAL_LIBRARY", None)
    return subprocess.Popen([sys.executable, str(TESTS / "fake_xmodal.py"), "index", str(photos), "--library",
                             str(library), "--model", "fake-colour", "--batch-size", str(batch)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed(library: Path) -> int:
    try:
        with sqlite3.connect(f"file:{library / 'library.db'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait_for_more_than(library: Path, n: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while _committed(library) <= n and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)


def _run_to_end(photos: Path, library: Path, delay: float) -> float:
    t0 = time.perf_counter()
    proc = _spawn(photos, library, delay)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return time.perf_counter() - t0


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_and_ends_equal_to_a_clean_build(tmp_path, fake_encoder):
    photos = _make_photos(tmp_path / "photos", 400)
    clean = tmp_path / "clean"
    with Library(clean, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder, batch_size=8)

    library = tmp_path / "library"
    rng = random.Random(20240605)
    kills, committed, delay = 0, 0, 0.05
    while kills < 22:
        proc = _spawn(photos, library, delay)
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.0, 1.5))  # anywhere in start-up: opening, migrating, locking, planning
        else:
            _wait_for_more_than(library, committed, proc)
            time.sleep(rng.uniform(0.0, 2 * delay))  # mid-batch: decoding, encoding, committing, saving
        if proc.poll() is not None:
            break  # finished before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        now = _committed(library)
        assert now >= committed, "a kill lost committed photos"
        committed = now
        if (library / "library.db").exists():
            with SearchEngine(library) as engine:  # opens, answers, and sees exactly what was committed
                try:
                    assert len(engine.search_text("red", k=1000)) == committed
                except Exception as e:  # an empty library right after the first kill has no model yet
                    assert committed == 0, e
    assert kills >= 20, f"only {kills} kills landed before the run finished; slow the child down"
    _run_to_end(photos, library, 0)

    with Library(library) as lib:
        report = check_library(lib)
    assert report.ok, report.problems
    got, want = vectors_by_path(library), vectors_by_path(clean)
    assert set(got) == set(want) and len(got) == 400
    for path, vector in want.items():
        np.testing.assert_allclose(got[path], vector, atol=1e-6)

    # resume vs fresh, with the same per-batch cost
    fresh = _run_to_end(photos, tmp_path / "fresh", delay)
    half = tmp_path / "half"
    proc = _spawn(photos, half, delay)
    _wait_for_more_than(half, 200, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _committed(half)
    resume = _run_to_end(photos, half, delay)
    noop = _run_to_end(photos, half, delay)
    print(f"\nkills survived: {kills}; files lost: {400 - len(got)}; fresh run {fresh:.2f}s; "
          f"resume after a kill at {done_before}/400 committed {resume:.2f}s; re-run with nothing to do {noop:.2f}s")


def test_sigint_stops_after_the_batch_says_how_to_resume_and_exits_130(tmp_path):
    photos = _make_photos(tmp_path / "photos", 80)
    library = tmp_path / "library"
    proc = _spawn(photos, library, 0.1)
    _wait_for_more_than(library, 0, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "interrupted after" in err
    done = _committed(library)
    assert 0 < done < 80
    _run_to_end(photos, library, 0)
    with Library(library) as lib:
        assert lib.store.count_images() == 80 and check_library(lib).ok


@pytest.mark.parametrize("delay, second", [(0.3, 0.05), (0.6, 0.9)])
def test_a_second_sigint_stops_at_once_with_one_line_and_exit_130(tmp_path, delay, second):
    """The second Ctrl-C lands mid-batch, or (0.6, 0.9) while the stopped run closes its stages and waits for
    the batch in flight: never "Exception ignored in: <generator ordered_map>", "Aborted!" or a traceback."""
    photos = _make_photos(tmp_path / "photos", 80)
    library = tmp_path / "library"
    proc = _spawn(photos, library, delay)
    _wait_for_more_than(library, 0, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(second)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    for noise in ("Exception ignored", "Traceback", "KeyboardInterrupt", "Aborted"):
        assert noise not in err, err
    assert err.count("run the same command again to resume") == 1, err
    _run_to_end(photos, library, 0)
    with Library(library) as lib:
        assert lib.store.count_images() == 80 and check_library(lib).ok


def test_a_ctrl_c_after_the_stopped_run_has_said_how_to_resume_still_exits_130(tmp_path):
    """A late Ctrl-C, sent once the stopped run has printed its last line and is exiting, has nothing left to
    stop: it must not kill the exit (status -2 instead of 130) or print a traceback."""
    photos = _make_photos(tmp_path / "photos", 80)
    library = tmp_path / "library"
    proc = _spawn(photos, library, 0.3)
    _wait_for_more_than(library, 0, proc)
    proc.send_signal(signal.SIGINT)
    err = []
    for line in proc.stderr:
        err.append(line)
        if "interrupted after" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    err = "".join(err) + rest
    assert proc.returncode == 130, err
    for noise in ("Exception ignored", "Traceback", "KeyboardInterrupt", "Aborted"):
        assert noise not in err, err


def test_searches_during_indexing_never_fail_and_see_committed_state(tmp_path, fake_encoder):
    photos = _make_photos(tmp_path / "photos", 200)
    library = tmp_path / "library"
    first = tmp_path / "first"
    first.mkdir()
    for p in sorted(photos.iterdir())[:40]:
        os.link(p, first / p.name)
    with Library(library, create=True) as lib:
        index_images(lib, [str(first)], fake_encoder)
    proc = _spawn(photos, library, 0.03)
    searches, seen = 0, 40
    while proc.poll() is None or searches < 5:
        with SearchEngine(library) as engine:
            hits = engine.search_text("red", k=1000)
        assert len(hits) >= 40 and all(Path(h.path).exists() for h in hits)
        seen = max(seen, len(hits))
        searches += 1
    assert proc.returncode == 0, proc.stderr.read()
    print(f"\n{searches} searches during indexing, none failed")
    with SearchEngine(library) as engine:
        assert len(engine.search_text("red", k=1000)) == 240


@pytest.mark.slow
def test_a_deleted_wal_after_a_kill_loses_no_root_and_the_next_index_catches_up(tmp_path, fake_encoder):
    """SIGKILL a run while the write-ahead log holds its committed rows, then delete library.db-wal: the
    rows since the last checkpoint are gone, but the new root was checkpointed when it was added, so the
    next `xmodal index` (no paths) walks it again and the library ends equal to a clean build."""
    first, second = _make_photos(tmp_path / "first", 16), _make_photos(tmp_path / "second", 120, seed=1)
    clean = tmp_path / "clean"
    with Library(clean, create=True) as lib:
        index_images(lib, [str(first), str(second)], fake_encoder, batch_size=8)
    library = tmp_path / "library"
    assert _spawn(first, library, 0.0).wait(timeout=120) == 0
    proc = _spawn(second, library, 0.05)
    _wait_for_more_than(library, 16 + 24, proc)
    proc.kill()
    proc.wait()
    for suffix in ("-wal", "-shm"):
        Path(str(library / "library.db") + suffix).unlink(missing_ok=True)
    # the polling above may leave a reader connection to collect; SQLite shares one lock and shared-memory
    # record per file across a process's connections, and a stale one would see the deleted -shm
    gc.collect()
    with Library(library) as lib:
        assert sorted(lib.roots) == sorted([str(first), str(second)])
    env = {k: v for k, v in os.environ.items() if k != "XMODAL_LIBRARY"}
    for command in (["check", "--repair"], ["index"]):
        done = subprocess.run([sys.executable, str(TESTS / "fake_xmodal.py"), *command, "--library", str(library)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done.stdout, done.stderr)
    assert set(vectors_by_path(library)) == set(vectors_by_path(clean))
    with Library(library) as lib:
        assert check_library(lib).ok
