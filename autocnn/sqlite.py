"""SQLite files that several autocnn processes share (Optuna's and MLflow's stores): where a URL
points, write-ahead logging, and a lock for the folder while one process creates them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQLITE_BUSY_TIMEOUT_S = 60  # a writer waits this long for another process's lock


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URL; None for any other URL."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return None


def enable_wal(db: Path) -> None:
    """WAL lets `autocnn status` / `autocnn ui` read while a study writes: no 'database is locked'."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Held by one process of this machine at a time: workers opening an SQLite file that may not
    exist yet take turns, so its tables and migrations are made once, not half-made by two."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: one process at a time is then the user's to ensure
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
