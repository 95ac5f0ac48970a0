"""A study on a real PostgreSQL server (127.0.0.1:5432, user postgres): the storage workers share."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autocnn import StudyOptions, load_spec, run_study, study_status
from autocnn.search.options import SilentReporter
from autocnn.search.storage import SERVER_POOL, open_storage
from tests.conftest import digits_spec_dict, write_spec
from tests.postgres import admin_connection, temporary_database

pytestmark = pytest.mark.slow


@pytest.fixture
def database() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def test_a_study_runs_on_postgresql_and_status_reads_it_back(in_tmp: Path, database: str) -> None:
    spec = load_spec(write_spec(in_tmp, digits_spec_dict(study={"trials": 2, "pruner": "none"})))
    result = run_study(spec, StudyOptions(storage=database))
    assert result.storage == database and result.counts["COMPLETE"] == 2
    status = study_status(spec, storage=database)
    assert status.counts == result.counts and status.best_number == result.best_number
    assert not (in_tmp / "digits-test.optuna.db").exists()  # nothing fell back to the SQLite default


def test_each_process_keeps_a_small_pool_of_checked_recycled_connections(database: str) -> None:
    pool = open_storage(database).engine.pool
    assert pool.size() == SERVER_POOL["pool_size"] and pool._max_overflow == SERVER_POOL["max_overflow"]
    assert pool._pre_ping is True and pool._recycle == SERVER_POOL["pool_recycle"]


def restart_postgresql() -> None:
    """The server restarted as its service would be: every open connection is cut."""
    done = subprocess.run(["pg_ctlcluster", "15", "main", "restart"], capture_output=True, text=True)
    if done.returncode != 0:
        done = subprocess.run(["service", "postgresql", "restart"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_postgresql_restarting_under_a_running_study_loses_nothing(in_tmp: Path, database: str) -> None:
    from tests.test_resume import SPEC, assert_consistent, start_study, wait_for

    spec_dict = {**SPEC, "study": {**SPEC["study"], "storage": database}}
    write_spec(in_tmp, spec_dict)
    proc = start_study(in_tmp)
    wait_for(in_tmp / ".autocnn" / "digits-test" / "checkpoints" / "trial-1.pt", proc)
    restart_postgresql()
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    study, runs = assert_consistent(in_tmp)
    assert all(run.info.status != "RUNNING" for run in runs.values())


class CutsTheConnection(SilentReporter):
    """Once trial `number` has reported its first epoch (`at="epoch"`) or its end (`at="end"`),
    the server ends the backend of the connection that this process's next storage statement
    runs on, as a restart does to a connection in use: the statement fails with the connection
    cut, which a pool's pre-ping cannot catch. After the end, that statement is Optuna telling
    the trial its result."""

    def __init__(self, database: str, number: int, at: str) -> None:
        self.database, self.number, self.at = database.rsplit("/", 1)[1], number, at
        self.epochs: dict[int, list[int]] = {}
        self.armed = self.fired = False

    def epoch_done(self, number: int, metrics: object, metric: str) -> None:
        self.epochs.setdefault(number, []).append(metrics.epoch)  # type: ignore[attr-defined]
        self.arm(number, "epoch")

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        if state == "COMPLETE":
            self.arm(number, "end")

    def arm(self, number: int, moment: str) -> None:
        self.armed = self.armed or (not self.fired and number == self.number and moment == self.at)

    def before_execute(self, conn: Any, *_args: Any) -> None:
        if not self.armed or conn.engine.url.database != self.database:
            return
        if threading.current_thread() is not threading.main_thread():  # not Optuna's heartbeat
            return
        self.armed, self.fired = False, True
        admin = admin_connection()
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (conn.connection.dbapi_connection.info.backend_pid,))
        admin.close()


@pytest.mark.parametrize("at", ["epoch", "end"])
def test_a_connection_cut_under_a_trial_queues_it_again(in_tmp: Path, database: str, at: str) -> None:
    """Cut inside the trial (its next report), it resumes from its checkpoint; cut as Optuna tells
    its result (outside autocnn's objective), the worker goes on and the trial is run again."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from autocnn.search.resume import RESUMED_AT_ATTR, RETRY_OF_ATTR
    from tests.test_resume import LIGHT_SPEC, assert_consistent

    write_spec(in_tmp, {**LIGHT_SPEC, "study": {**LIGHT_SPEC["study"], "storage": database}})
    spec = load_spec(in_tmp / "spec.yaml")
    reporter = CutsTheConnection(database, 1, at)
    event.listen(Engine, "before_cursor_execute", reporter.before_execute)
    try:
        result = run_study(spec, StudyOptions(), reporter)
    finally:
        event.remove(Engine, "before_cursor_execute", reporter.before_execute)

    assert result.counts["COMPLETE"] == 3 and reporter.fired
    study, runs = assert_consistent(in_tmp)  # one MLflow run per trial, the same state
    cut = study.trials[1]
    assert cut.state.name == "FAIL" and "database connection was cut" in runs[1].data.tags["autocnn.reason"]
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == 1]
    assert retry.state.name == "COMPLETE" and retry.params == cut.params
    if at == "epoch":
        assert retry.user_attrs[RESUMED_AT_ATTR] == 1  # from its checkpoint
    assert runs[1].info.status == "KILLED" and not [r for r in runs.values() if r.info.status == "RUNNING"]
