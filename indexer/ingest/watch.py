"""Keep a library current while it runs (`xmodal watch`): file events -> debounced rescans of the roots
they touched, through the same pipeline and the same per-batch commits as `xmodal index`.

    Watcher("my-library", ["~/Pictures"]).run(should_stop=stop.is_set)

* Events come from the OS through `watchdog` (inotify, FSEvents, ReadDirectoryChangesW). Where they are
  unavailable (no watchdog, a file system without events) or the inotify watch limit runs out, the watcher
  says so once in the log and rescans every root every `poll_seconds` instead.
* A root with events is rescanned `debounce` seconds after its last event (at the latest `max_wait` after
  the first, so a steady stream of files still gets indexed). The rescan is `index_images` on that root:
  new files are embedded, edited ones embedded again, moved or renamed ones keep their row (same content
  hash), deleted ones are removed. Unchanged files cost a stat. Every root is also rescanned every
  `rescan_seconds` as a safety net (events can be lost: a queue overflow, a folder created faster than it
  was watched).
* A root deleted and created again is watched again (its identity is checked every tick); while it is gone
  its photos are kept, as `xmodal index` keeps those of an unplugged drive.
* The watcher holds the library's writer lock for its whole run (searches take none); `should_stop` is
  asked after every batch, so a stop finishes the batch in flight. Every `DURABLE_SECONDS` with changes the
  write-ahead log is checkpointed and library.db.bak refreshed.
* While it runs, `<library>/watch.json` is its heartbeat (pid, roots, mode, last beat, totals), read by
  `watch_status` for `xmodal info` and the web page; it is removed on exit.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from xmodal.indexer.ingest.pipeline import IndexReport, WRITE_ERRNOS, index_images
from xmodal.indexer.models.base import Encoder
from xmodal.indexer.storage.library import Library, _under

logger = logging.getLogger(__name__)

HEARTBEAT_FILE = "watch.json"
HEARTBEAT_SECONDS = 2.0
DURABLE_SECONDS = 60.0
TICK = 0.1
#: event kinds that change nothing (watchdog reports opening and reading files on Linux: indexing itself
#: would otherwise wake the watcher)
IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})


@dataclass
class WatchReport:
    """What a watch run did, in total."""

    mode: str = "events"  # "events", or "polling" when OS events were unavailable
    cycles: int = 0
    added: int = 0
    reembedded: int = 0
    moved: int = 0
    removed: int = 0
    skipped: int = 0
    interrupted: bool = False  # stopped in the middle of a rescan (its committed batches are kept)
    roots: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def absorb(self, r: IndexReport) -> None:
        self.cycles += 1
        self.added += r.added
        self.reembedded += r.reembedded
        self.moved += r.moved
        self.removed += r.removed
        self.skipped += len(r.skipped)
        self.interrupted = self.interrupted or r.interrupted

    def to_json(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def owning_root(path: str, roots: Sequence[str]) -> str | None:
    """The root `path` lies under (the longest, should roots nest), or None."""
    found = [r for r in roots if _under(path, r)]
    return max(found, key=len) if found else None


def ignored(path: str, root: str, library_root: str) -> bool:
    """Events the watcher does not act on: inside the library folder itself (a library kept under a watched
    root would wake its own watcher) and hidden entries below the root (the walk skips them too)."""
    if _under(path, library_root):
        return True
    return any(part.startswith(".") for part in Path(os.path.relpath(path, root)).parts)


class Pending:
    """Roots with events not yet acted on, with the time of their first and last event (thread-safe: the
    observer's threads add, the watcher's loop takes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: dict[str, tuple[float, float]] = {}

    def touch(self, root: str, now: float) -> None:
        with self._lock:
            first, _ = self._roots.get(root, (now, now))
            self._roots[root] = (first, now)

    def due(self, now: float, debounce: float, max_wait: float) -> list[str]:
        """Take the roots quiet for `debounce` seconds, or waiting for `max_wait` since their first event."""
        with self._lock:
            ready = [r for r, (first, last) in self._roots.items() if now - last >= debounce or now - first >= max_wait]
            for r in ready:
                del self._roots[r]
            return sorted(ready)

    def __len__(self) -> int:
        with self._lock:
            return len(self._roots)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Watcher:
    """Watches a library's roots (or `paths`, added as roots) until `should_stop()`; see the module doc."""

    def __init__(self, library_dir: str | os.PathLike, paths: Sequence[str | os.PathLike] = (),
                 encoder: str | Encoder | None = None, *, debounce: float = 1.0, max_wait: float = 10.0,
                 poll_seconds: float = 5.0, rescan_seconds: float = 300.0, events: bool = True,
                 batch_size: int = 16, patches: bool = True):
        self.library_dir = Path(library_dir)
        self.paths = [os.path.expanduser(os.fspath(p)) for p in paths]
        self.encoder = encoder
        self.debounce, self.max_wait = debounce, max_wait
        self.poll_seconds, self.rescan_seconds = poll_seconds, rescan_seconds
        self.use_events, self.batch_size, self.patches = events, batch_size, patches
        self.pending = Pending()
        self.report = WatchReport()
        self._observer = None
        self._watches: dict[str, object] = {}
        self._started = time.time()
        self._last_beat = 0.0

    # ------------------------------------------------------------------ the run
    def run(self, should_stop: Callable[[], bool], ready: Callable[[], None] | None = None) -> WatchReport:
        """Index what changed since the last run, then watch until should_stop(). `ready` is called once the
        first scan is done and events are being watched."""
        from xmodal.indexer.api import library_encoder
        from xmodal.indexer.models.patch_projector import default_projector

        t0 = time.monotonic()
        encoder = library_encoder(self.library_dir, self.encoder)
        projector = default_projector(encoder.name) if self.patches else None
        with Library(self.library_dir, create=True) as lib:
            with lib.writing():
                self._lib, self._encoder, self._projector = lib, encoder, projector
                try:
                    # events first, then the first scan: a file written in between is not missed
                    self.report.roots = roots = [os.path.realpath(p) for p in self.paths] or lib.roots
                    self._start_events(roots)
                    self._cycle(self.paths or None, should_stop)
                    roots = self.report.roots = roots or lib.roots
                    if ready is not None:
                        ready()
                    self._loop(roots, should_stop)
                finally:
                    self._stop_events()
                    self.report.seconds = time.monotonic() - t0
                    self._remove_heartbeat()
        return self.report

    def _loop(self, roots: list[str], should_stop: Callable[[], bool]) -> None:
        identity = {r: _identity(r) for r in roots}
        last_scan = last_durable = time.monotonic()
        while not should_stop():
            now = time.monotonic()
            for r in roots:  # a root deleted and created again: watch the new folder
                now_id = _identity(r)
                if now_id != identity[r]:
                    identity[r] = now_id
                    logger.info("%s %s", r, "is back" if now_id else "is gone (its photos are kept)")
                    self._rewatch(r)
                    self.pending.touch(r, now - self.debounce)
            if self.report.mode == "polling":
                due = roots if now - last_scan >= self.poll_seconds else []
            elif now - last_scan >= self.rescan_seconds:
                due = roots
            else:
                due = self.pending.due(now, self.debounce, self.max_wait)
            if due:
                self._cycle(due, should_stop)
                if len(due) == len(roots):
                    last_scan = time.monotonic()
                if self._lib.store.written and time.monotonic() - last_durable >= DURABLE_SECONDS:
                    self._lib.make_durable()
                    last_durable = time.monotonic()
            self._beat()
            time.sleep(TICK)

    def _text_reader(self):
        """The OCR reader when the library's `ocr` setting is on (`xmodal index --ocr`), made once; None when
        it is off, or when OCR is not installed (said once: the photos are still indexed)."""
        if not self._lib.store.get_meta("ocr", False):
            return None
        if getattr(self, "_reader", None) is None:
            from xmodal.indexer.ingest.ocr import OcrUnavailable, get_reader

            try:
                self._reader = get_reader()
            except OcrUnavailable as e:
                logger.warning("the library reads text in photos (OCR) but %s; watching without it", e)
                self._reader = False
        return self._reader or None

    def _cycle(self, roots: Sequence[str] | None, should_stop: Callable[[], bool]) -> None:
        """One rescan of `roots` (None: all the library's) through the indexing pipeline."""
        try:
            report = index_images(self._lib, roots, self._encoder, batch_size=self.batch_size,
                                  should_stop=should_stop, patches=self._projector, ocr=self._text_reader(),
                                  progress=lambda done, total: self._beat(busy=(done, total)))
        except OSError as e:  # e.g. a root removed in the middle of its walk: try again on the next event
            if e.errno in WRITE_ERRNOS:
                raise
            logger.warning("rescanning %s failed (%s); trying again", ", ".join(roots or ["the library"]),
                           e.strerror or e)
            for r in roots or self._lib.roots:
                self.pending.touch(r, time.monotonic())
            return
        self.report.absorb(report)
        if report.indexed or report.moved or report.removed:
            logger.info("added %d, re-embedded %d, moved %d, removed %d (%.1fs)", report.added,
                        report.reembedded, report.moved, report.removed, report.seconds)
        for s in report.skipped:
            logger.debug("skipped %s: %s", s.path, s.reason)
        self._beat(force=True)

    # ------------------------------------------------------------------ OS events
    def _start_events(self, roots: list[str]) -> None:
        if not self.use_events:
            self._fall_back("polling was asked for")
            return
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            self._fall_back("the watchdog package is not installed")
            return
        pending, library_root = self.pending, str(self.library_dir.resolve())

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type in IGNORED_EVENTS:
                    return
                now = time.monotonic()
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    path = os.fsdecode(path) if path else ""
                    root = owning_root(path, roots) if path else None
                    if root is not None and not ignored(path, root, library_root):
                        pending.touch(root, now)

        self._handler = Handler()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        for r in roots:
            if not self._schedule(r):
                return

    def _schedule(self, root: str) -> bool:
        """Watch `root` (recursively) when it exists; False when events had to be given up."""
        if self._observer is None or not os.path.isdir(root):
            return self._observer is not None
        try:
            self._watches[root] = self._observer.schedule(self._handler, root, recursive=True)
            return True
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EMFILE):
                self._fall_back(f"the inotify watch limit ran out ({e.strerror or e}; raise "
                                "fs.inotify.max_user_watches)")
            else:
                self._fall_back(f"cannot watch {root}: {e.strerror or e}")
            return False

    def _rewatch(self, root: str) -> None:
        if self._observer is None:
            return
        old = self._watches.pop(root, None)
        if old is not None:
            try:
                self._observer.unschedule(old)
            except (KeyError, OSError):
                pass  # its emitter already ended with the folder
        self._schedule(root)

    def _fall_back(self, why: str) -> None:
        if self.report.mode != "polling":
            logger.warning("file events unavailable (%s): rescanning every %gs instead", why, self.poll_seconds)
        self.report.mode = "polling"
        self._stop_events()

    def _stop_events(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            try:
                observer.stop()
                observer.join(timeout=5)
            except (OSError, RuntimeError) as e:
                logger.debug("stopping the file observer: %s", e)
            self._watches.clear()

    # ------------------------------------------------------------------ heartbeat
    @property
    def heartbeat_path(self) -> Path:
        return self.library_dir / HEARTBEAT_FILE

    def _beat(self, busy: tuple[int, int] | None = None, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "started": self._started, "beat": now,
               "interval": HEARTBEAT_SECONDS, "mode": self.report.mode, "roots": self.report.roots,
               "pending_roots": len(self.pending), "busy": list(busy) if busy else None,
               "totals": {k: getattr(self.report, k) for k in ("cycles", "added", "reembedded", "moved", "removed")}}
        tmp = self.heartbeat_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.heartbeat_path)
        except OSError as e:
            logger.debug("cannot write the heartbeat %s: %s", self.heartbeat_path, e)

    def _remove_heartbeat(self) -> None:
        for p in (self.heartbeat_path, self.heartbeat_path.with_suffix(".json.tmp")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                logger.debug("cannot remove %s: %s", p, e)


def watch_status(library_dir: str | os.PathLike) -> dict | None:
    """The heartbeat of a watcher on this library, or None when none ran or it exited cleanly. "running" is
    False when the heartbeat is stale (the watcher was killed): its last beat is older than 5 intervals, or
    its pid is gone (same host)."""
    path = Path(library_dir) / HEARTBEAT_FILE
    try:
        doc = json.loads(path.read_text())
        beat, interval, pid = float(doc["beat"]), float(doc.get("interval", HEARTBEAT_SECONDS)), int(doc["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.debug("unreadable watch heartbeat %s: %s", path, e)
        return None
    alive = time.time() - beat <= 5 * interval + (60 if doc.get("busy") else 0)
    if alive and doc.get("host") == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
    return {**doc, "running": alive, "age_seconds": round(time.time() - beat, 1)}


def watch_folders(library_dir: str | os.PathLike, paths: Sequence[str | os.PathLike] = (),
                  model: str | Encoder | None = None, should_stop: Callable[[], bool] = lambda: False,
                  **options) -> WatchReport:
    """Library form of `xmodal watch`: see Watcher."""
    return Watcher(library_dir, paths, model, **options).run(should_stop)
