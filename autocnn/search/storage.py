"""Where a study's Optuna trials live: an SQLite file by default, a PostgreSQL or MySQL URL, or an
Optuna journal file. Opening one is the same for the study that writes it and for `status`,
`report` and `finalize`, which only read.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocnn.errors import StudyError
from autocnn.spec.schema import Spec, absolute_path
from autocnn.sqlite import SQLITE_BUSY_TIMEOUT_S, enable_wal, folder_lock, sqlite_path

if TYPE_CHECKING:
    import optuna

# A database server (PostgreSQL, MySQL) shared by workers: each keeps a small pool, so many workers
# stay under the server's connection limit; every connection is checked before use and renewed
# after half an hour, so one idle through a long trial is never found dropped by a firewall or
# the server.
SERVER_OUTAGE_S = 60.0  # how long a worker waits for a restarting database server
SERVER_RETRY_S = 0.5
SERVER_POOL: dict[str, Any] = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800}


def storage_url(spec: Spec, override: str | None = None) -> str:
    """An Optuna URL, or a journal file path; default: `<spec dir>/<name>.optuna.db`."""
    value = override or spec.study.storage
    if value is None:
        return f"sqlite:///{spec.base_dir / f'{spec.name}.optuna.db'}"
    if "://" in value:
        return value
    return str(absolute_path(value, spec.base_dir))  # an override is relative to the spec, too


def open_storage(url: str) -> Any:
    """Optuna's storage for `url`, with heartbeats so a dead process's trial is noticed."""
    import optuna

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    from autocnn.search.resume import heartbeat_kwargs

    def open_rdb(engine_kwargs: dict[str, Any]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs())

    db = sqlite_path(url)
    if db is None:
        storage = _first_to_create_tables_wins(lambda: open_rdb(dict(SERVER_POOL)))
        wait_for_the_server_to_return(storage.engine)
        return storage
    with folder_lock(db.parent):
        enable_wal(db)
        storage = open_rdb({"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}})
    take_the_write_lock_first(storage.engine)
    return storage


def take_the_write_lock_first(engine: Any) -> None:
    """Every SQLite transaction starts with BEGIN IMMEDIATE (SQLAlchemy's recipe for pysqlite).

    Optuna reads a trial's state, then writes it: a queued trial becomes RUNNING only if it is
    still WAITING. SQLite ignores SELECT ... FOR UPDATE, and pysqlite begins a transaction only at
    the write, so two workers asking at once could both read WAITING and both run the same trial
    (seen: two MLflow runs of one trial, then "Cannot tell a COMPLETE trial"). Taking the write
    lock at the start makes the read and the write one step; the busy timeout lets the other
    process wait its turn. The pool's connections, made before, are dropped to take the settings.
    """
    from sqlalchemy import event

    def no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite emits no BEGIN of its own

    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", no_implicit_begin)
    event.listen(engine, "begin", begin_immediate)
    engine.dispose()


def wait_for_the_server_to_return(engine: Any, patience_s: float = SERVER_OUTAGE_S) -> None:
    """A database server that restarts (an upgrade, a failover, a crash) refuses connections for
    a few seconds and cuts the open ones; the pool's pre-ping finds the cut ones when they are next
    used, and this makes each new connection keep trying for up to `patience_s` instead of failing
    the trial that happened to ask first (optuna#5600)."""
    from sqlalchemy import event

    def connect_patiently(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        refused = dialect.loaded_dbapi.OperationalError  # the driver's own: the server is not there yet
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except refused:
                if time.monotonic() > deadline:
                    raise
                time.sleep(SERVER_RETRY_S)

    event.listen(engine, "do_connect", connect_patiently)


def lost_the_connection(error: BaseException) -> bool:
    """Whether `error` is, or was raised during, the database server cutting a connection while it
    was in use (a restart, a failover): not the trial's fault, and the next connection works."""
    from sqlalchemy.exc import DBAPIError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_to_create_tables_wins(open_rdb: Callable[[], Any], attempts: int = 3) -> Any:
    """Workers started together on an empty database server all try to create Optuna's tables;
    all but one fail with "already exists" (a table, a type, a unique key). Those open it again
    and find the tables made by the winner: the server's DDL is transactional, nothing half-made."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return open_rdb()
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("already exists" in text or "duplicate" in text):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def storage_exists(url: str) -> bool:
    """False only for a file-backed storage whose file is missing: opening it would create it."""
    path = sqlite_path(url) if "://" in url else Path(url)
    return path is None or path.exists()


def stored_trials(backend: Any, name: str) -> int:
    """How many trials the study `name` holds in `backend`; 0 when there is no such study."""
    try:
        study_id = backend.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(backend.get_all_trials(study_id, deepcopy=False))


def open_study(spec: Spec, url: str) -> optuna.Study:
    """The spec's existing study, to read; a clear error when `autocnn study` has not run yet."""
    import optuna

    if not storage_exists(url):
        raise StudyError(f"{url}: no study storage yet; run `autocnn study` on this spec first")
    try:
        return optuna.load_study(study_name=spec.name, storage=open_storage(url))
    except KeyError:
        raise StudyError(f"{url}: no study named '{spec.name}' yet; run `autocnn study` first") from None
