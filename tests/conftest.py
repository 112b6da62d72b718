"""Shared fixtures. PostgreSQL: one throwaway server per session, a fresh schema per test. Ray: one
local cluster per test module."""

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


@pytest.fixture(scope="module")
def ray_auth_disabled() -> Iterator[None]:
    """``RAY_AUTH_MODE=disabled`` set explicitly for one test module (a test cluster on this machine),
    the previous value restored after it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        yield


@pytest.fixture(scope="module")
def ray_local(ray_auth_disabled: None) -> Iterator[None]:
    """One local Ray per test module, as DESIGN.md says: 2 CPUs, no dashboard, auth mode set
    explicitly; shut down (and the environment restored) after the module.

    ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5``: Ray Train's controller polls its workers every 2 s by
    default, and tiny test epochs would wait on it."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory):
    """A tiny trained registry version (trees, LSTM, Prophet per ticker, learned ensemble) on a small
    synthetic market, made production: (registry, version id, the training data stage's Prepared).
    Shared by the scoring, recommendation and jobs.score tests (tests/_tiny_version.py)."""
    from _tiny_version import train_tiny_version  # tests/ is on sys.path (conftest.py lives there)

    return train_tiny_version(tmp_path_factory.mktemp("tiny-registry"))
