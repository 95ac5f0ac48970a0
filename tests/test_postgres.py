"""A study on a real PostgreSQL server (127.0.0.1:5432, user postgres): the storage workers share."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from autocnn import StudyOptions, load_spec, run_study, study_status
from autocnn.search.storage import SERVER_POOL, open_storage
from tests.conftest import digits_spec_dict, write_spec
from tests.postgres import temporary_database

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
