"""A study on a real PostgreSQL server (127.0.0.1:5432, user postgres): the storage workers share."""

from __future__ import annotations

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
