"""Shared fixtures. PostgreSQL: one throwaway server per session, a fresh schema per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """A LocalPostgres for the whole session; skips only when no PostgreSQL binaries exist."""
    from ensemble.data.pgserver import LocalPostgres, find_pg_bin

    try:
        find_pg_bin()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL server binaries on this machine: {exc}")
    with LocalPostgres(dbname="ensemble_test") as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server) -> Iterator[str]:
    """DSN whose search_path is a fresh, empty schema (dropped after the test)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(pg_server.dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        yield make_dsn(pg_server.dsn, options=f"-c search_path={name}")
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    finally:
        conn.close()


@pytest.fixture
def store(pg_dsn: str):
    """A PriceStore on an empty ``prices`` table in the test's own schema (small COPY chunks)."""
    from ensemble.data.store import PriceStore

    s = PriceStore(pg_dsn, table="prices", chunk_rows=37)
    s.create_schema()
    return s
