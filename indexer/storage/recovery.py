"""What can go wrong with a library's database, told apart (a damaged file, a read-only place, a full or
failing disk), and the way back from damage: the backup every successful writing session leaves
(`Store.backup`), put in place by `restore_backup`. No SQLAlchemy here: `database_problem` reads only the
message of the driver's error."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DB_FILENAME = "library.db"
BACKUP_FILENAME = "library.db.bak"  # a consistent copy after each successful writing session


class StoreError(Exception):
    """The library database is missing, unreadable, too new, or a write would break an invariant."""


class DatabaseDamaged(StoreError):
    """library.db itself is damaged (not a disk that is full or read-only): restore its backup."""


def database_problem(db_path: Path, exc: Exception, doing: str) -> StoreError:
    """SQLite's error -> a StoreError that says which of three different things happened, and what to do:
    a damaged file (DatabaseDamaged: restore the backup), a read-only place, or a full disk / I/O error."""
    why = str(getattr(exc, "orig", exc))
    low = why.lower()
    if any(s in low for s in ("malformed", "not a database", "file is encrypted", "database corrupt")):
        backup = db_path.with_name(BACKUP_FILENAME)
        fix = ("run `xmodal check --repair` to put back its backup (made after the last successful run), then "
               "`xmodal index` to catch up" if backup.exists() else
               "it is not a usable xmodal library database: move it away and index again")
        return DatabaseDamaged(f"{db_path} is damaged ({why}) while {doing}; {fix}")
    if "readonly" in low or "read-only" in low:
        return StoreError(f"cannot write to {db_path}: it is on a read-only file system or not writable ({why}); "
                          f"nothing was changed")
    if "full" in low or "disk i/o" in low or "unable to open" in low:
        return StoreError(f"cannot use {db_path} while {doing}: the disk is full or failing ({why}); free some "
                          "space and run the command again, nothing committed is lost")
    return StoreError(f"{db_path}: database error while {doing} ({why})")


def restore_backup(library_dir: str | Path) -> Path:
    """Put library.db.bak in place of a damaged library.db, which is kept beside as library.db.damaged (with
    its -wal and -shm). Returns the damaged file's new path. The caller then reconciles the index files
    (they may hold vectors of rows newer than the backup) and indexes again to catch up."""
    library_dir = Path(library_dir)
    db, backup = library_dir / DB_FILENAME, library_dir / BACKUP_FILENAME
    if not backup.is_file():
        raise StoreError(f"{db} is damaged and there is no backup ({backup}); move it away and index again")
    kept = library_dir / (DB_FILENAME + ".damaged")
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(db) + suffix)
        if part.exists():
            os.replace(part, Path(str(kept) + suffix))
    tmp = db.with_name(DB_FILENAME + ".restoring")
    shutil.copyfile(backup, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, db)
    log.warning("%s was damaged: restored %s (kept the damaged file as %s)", db, backup, kept)
    return kept
