"""A study on a real PostgreSQL server (127.0.0.1:5432, user postgres): the storage workers share.

CI machines run one; without it these tests fail and say why, rather than pass unexamined.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from autocnn import StudyOptions, load_spec, run_study, study_status
from autocnn.storage import SERVER_POOL, open_storage
from tests.conftest import digits_spec_dict, write_spec

SERVER = "postgresql://postgres@127.0.0.1:5432"

pytestmark = pytest.mark.slow


def admin_connection() -> psycopg.Connection:
    try:
        return psycopg.connect(f"{SERVER}/postgres", connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL server at {SERVER} (start it: service postgresql start): {exc}")


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own, dropped afterwards even while the test's pool still holds connections."""
    name = f"autocnn_test_{uuid.uuid4().hex[:12]}"
    admin = admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


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
