"""MLflow's SQLite tables, made and migrated once per test session rather than once per store.

MLflow makes a new SQLite store by running its whole Alembic migration history, a commit (and an
fsync) per step: about 6 s a store on these disks, for a store every test study opens. The tests
run that history once, into a template, and give every new store the template's tables in one
transaction: the same schema, the same rows (the default workspace, the schema's version), and
MLflow's own path to it (its client finds no tables and initialises them). The migrations
themselves still run once, here, and in every spawned process (tests/test_workers.py opens new
stores from several processes at once to check that they are made once).
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow.store.db.utils as db_utils

_REAL_INITIALIZE = db_utils._initialize_tables
_lock = threading.Lock()  # a study's threads may open new stores at once
_template: Path | None = None
_script: str | None = None


def template() -> Path:
    """An empty MLflow SQLite store, made by MLflow's own migrations (once per session)."""
    global _template
    with _lock:
        if _template is None:
            _template = _make_template()
    return _template


def _make_template() -> Path:
    import sqlalchemy

    folder = Path(tempfile.mkdtemp(prefix="autocnn-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _REAL_INITIALIZE(engine)
    finally:
        engine.dispose()
    return path


def _template_script() -> str:
    global _script
    path = template()
    with _lock:
        if _script is None:
            conn = sqlite3.connect(path)
            try:
                _script = "\n".join(conn.iterdump())  # BEGIN ... COMMIT: one transaction
            finally:
                conn.close()
    return _script


def initialize_tables(engine: Any) -> None:
    """MLflow's `_initialize_tables` for an empty SQLite store: the template's tables and rows;
    anything else (a store half made, another database) goes through the migrations."""
    import sqlalchemy

    if engine.dialect.name != "sqlite" or sqlalchemy.inspect(engine).get_table_names():
        _REAL_INITIALIZE(engine)
        return
    raw = engine.raw_connection()
    try:
        raw.driver_connection.executescript(_template_script())
    finally:
        raw.close()


def seed_store(folder: Path) -> Path:
    """`folder/mlruns/mlflow.db` (the default tracking store of a study run in `folder`) made
    ready, as a copy of the template: for `autocnn study` processes the tests start."""
    store = folder / "mlruns" / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template(), store)
    return store
