"""Databases of their own on the PostgreSQL server these machines run (127.0.0.1:5432, user postgres).

CI machines run one; without it the tests that need it fail and say why, rather than pass unexamined.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

SERVER = "postgresql://postgres@127.0.0.1:5432"


def admin_connection() -> psycopg.Connection:
    try:
        return psycopg.connect(f"{SERVER}/postgres", connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL server at {SERVER} (start it: service postgresql start): {exc}")


@contextmanager
def temporary_database() -> Iterator[str]:
    """A new database's URL; dropped afterwards even while pools still hold connections to it."""
    name = f"autocnn_test_{uuid.uuid4().hex[:12]}"
    admin = admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    try:
        yield f"{SERVER}/{name}"
    finally:
        admin = admin_connection()  # a new one: the test may have restarted the server
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
