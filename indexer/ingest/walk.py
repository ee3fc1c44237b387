"""Find candidate image files under a folder.

`iter_image_files` walks a folder tree depth-first and yields the absolute path of every file whose
extension looks like an image, plus a `Skipped` record for every entry the user would expect to be
indexed but that cannot be (a broken symbolic link, a folder we may not list, ...). It only looks at
names; whether a file really is an image is decided later by `indexer.decode`.

Behaviour, in short:

* Order is deterministic: entries are visited sorted by name within each folder, and a sub-folder is
  walked at its position in that order (depth-first), so results do not depend on the file system.
* Hidden entries (name starting with ``.``) are skipped, files and folders alike. The root itself is
  walked even if its own name is hidden: the user asked for it explicitly.
* Symbolic links are followed, to files and to folders. Every folder is entered at most once, keyed by
  its ``(st_dev, st_ino)``: a link loop, or a second link to a folder already walked, is silently not
  re-entered (logged at debug level). The folder is walked under whichever path reaches it first in the
  walk order.
* A folder that is an xmodal library (it holds ``library.db`` and ``index.lock``) is never entered: a
  library kept inside a photo folder must not index its own thumbnails, nor any other library's.
* Paths are Python's native ``str``: a name that is not valid UTF-8 comes through with
  ``surrogateescape`` exactly as `os.scandir` gives it, and can be passed back to `open` unchanged.
* The walk is a generator and holds one sorted listing per folder on the current path, never the whole
  tree. Files or folders that vanish while it runs are skipped quietly.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator

from xmodal.indexer.records import Skipped

logger = logging.getLogger(__name__)

LIBRARY_MARKERS = frozenset({"library.db", "index.lock"})
"""A folder holding all of these is an xmodal library (indexer.storage), never walked."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
)
"""Lower-case extensions (with the dot) that make a file a candidate; matched case-insensitively."""


def is_image_name(name: str) -> bool:
    """True if `name` ends in one of `IMAGE_EXTENSIONS`, ignoring case (``IMG_1.JPG`` counts)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(root: str | os.PathLike) -> Iterator[str | Skipped]:
    """Yield the absolute path of every candidate image file under `root`, or a `Skipped` for it.

    `root` may be a folder (walked recursively, see the module docstring for the rules) or a single file:
    a file with an image extension is yielded as the only result, any other file gives one `Skipped`.

    Yields `Skipped` for: a broken symbolic link with an image extension, an image-named entry that is
    not a regular file (a FIFO, a socket, a link we cannot follow), and a folder that cannot be listed
    (permission denied); the walk then carries on with the rest of the tree.

    Raises `FileNotFoundError` if `root` does not exist (including a broken link given as root). Like
    any generator, it raises only when iteration starts.
    """
    root_path = os.path.abspath(os.fsdecode(os.fspath(root)))
    try:
        root_stat = os.stat(root_path)
    except FileNotFoundError:
        hint = " (it is a broken symbolic link)" if os.path.lexists(root_path) else ""
        raise FileNotFoundError(
            errno.ENOENT,
            f"cannot scan {root_path}: no such file or folder{hint}; check the path and try again",
            root_path,
        ) from None

    if not stat.S_ISDIR(root_stat.st_mode):
        if not is_image_name(root_path):
            yield Skipped(
                root_path,
                "not an image file extension (expected one of "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); pass a folder or an image file",
            )
        elif not stat.S_ISREG(root_stat.st_mode):
            yield Skipped(root_path, "not a regular file (a device, FIFO or socket); pass a folder or an image file")
        else:
            yield root_path
        return

    visited: set[tuple[int, int]] = {(root_stat.st_dev, root_stat.st_ino)}
    entries, problem = _list_folder(root_path)
    if problem is not None:
        yield problem
    # One iterator of sorted entries per folder on the current path: a depth-first walk without recursion.
    stack: list[Iterator[os.DirEntry[str]]] = [iter(entries)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = entry.path
        image_name = is_image_name(entry.name)
        try:
            is_dir = entry.is_dir()  # follows symbolic links; False for a broken one
        except OSError as exc:  # e.g. ELOOP: a link that points at itself
            if image_name:
                yield Skipped(path, f"cannot follow: {_os_reason(exc)}; fix or remove it")
            continue

        if is_dir:
            try:
                st = entry.stat()
            except FileNotFoundError:
                logger.debug("folder vanished during the walk: %s", path)
                continue
            except OSError as exc:
                yield Skipped(path, f"cannot read folder information: {_os_reason(exc)}")
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                logger.debug("not entering %s again: folder already walked (link loop or duplicate link)", path)
                continue
            visited.add(key)
            entries, problem = _list_folder(path)
            if problem is not None:
                yield problem
            if LIBRARY_MARKERS <= {e.name for e in entries}:
                logger.info("not indexing %s: it is an xmodal library", path)
                continue
            stack.append(iter(entries))
            continue

        if not image_name:
            continue
        try:
            is_file = entry.is_file()
            is_link = entry.is_symlink()
        except OSError as exc:
            yield Skipped(path, f"cannot read file information: {_os_reason(exc)}")
            continue
        if is_file:
            yield path
        elif is_link and not os.path.exists(path):
            yield Skipped(path, f"broken symbolic link (its target {_link_target(path)} does not exist); "
                                "fix or remove the link")
        elif os.path.lexists(path):
            yield Skipped(path, "not a regular file (a device, FIFO or socket); remove it or rename it")
        else:
            logger.debug("file vanished during the walk: %s", path)


def _list_folder(path: str) -> tuple[list[os.DirEntry[str]], Skipped | None]:
    """The entries of folder `path` sorted by name, or no entries and a `Skipped` saying why not."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name), None
    except (FileNotFoundError, NotADirectoryError):
        logger.debug("folder vanished during the walk: %s", path)
        return [], None
    except PermissionError:
        return [], Skipped(path, "cannot list folder: permission denied; "
                                 "check its permissions, or run as a user that may read it")
    except OSError as exc:
        return [], Skipped(path, f"cannot list folder: {_os_reason(exc)}")


def _os_reason(exc: OSError) -> str:
    """A short human reason for an OS error, without repeating the path."""
    return (exc.strerror or type(exc).__name__).lower()


def _link_target(path: str) -> str:
    """The target a symbolic link points at, quoted, for messages."""
    try:
        return repr(os.readlink(path))
    except OSError:
        return "(unknown)"
