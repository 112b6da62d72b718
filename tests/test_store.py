"""PriceStore against a real throwaway PostgreSQL server; LocalPostgres; the jobs.ingest CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest

from ensemble.data import schema
from ensemble.data.pgserver import LocalPostgres
from ensemble.data.store import PriceStore

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]
HOSTILE_TICKERS = [
    "X'); DROP TABLE prices; --",
    "qu\"ote's",
    "back\\slash\\",
    "\\.",
    "\\N",
    "NULL",
    "",
    " padded ",
    "comma,and\nnewline\r\ttab",
    "ünïcødé-中文-🚀",
    "$$dollar$$",
]


def make_frame(
    tickers: list[str] | int = 4,
    n_days: int = 30,
    seed: int = 0,
    start: str = "2020-01-01",
    optional: bool = True,
) -> pd.DataFrame:
    """A random, valid contract frame (all columns when ``optional``), sorted by (ticker, date)."""
    rng = np.random.default_rng(seed)
    names = [f"T{i:03d}" for i in range(tickers)] if isinstance(tickers, int) else list(tickers)
    names = sorted(names)
    n = len(names) * n_days
    dates = pd.bdate_range(start, periods=n_days)
    close = 50 * np.exp(rng.normal(0, 0.02, n).cumsum())
    open_ = close * np.exp(rng.normal(0, 0.01, n))
    df = pd.DataFrame(
        {
            "date": np.tile(dates.to_numpy(), len(names)),
            "ticker": np.repeat(names, n_days),
            "open": open_,
            "high": np.maximum(open_, close) * (1 + rng.random(n) / 50),
            "low": np.minimum(open_, close) * (1 - rng.random(n) / 50),
            "close": close,
            "volume": rng.integers(0, 10**7, n).astype(float),
        }
    )
    if optional:
        df["adj_close"] = close * rng.uniform(0.9, 1.0, n)
        df["pe"] = rng.normal(15, 30, n)  # negative P/E happens
        df.loc[rng.random(n) < 0.2, "pe"] = np.nan  # partial NULLs
        df["pb"] = rng.lognormal(0, 1, n)
        df["market_cap"] = rng.lognormal(23, 2, n)
        df["dividend_yield"] = rng.uniform(0, 0.06, n)
        df["sector"] = np.repeat([f"Sector {i % 3}" for i in range(len(names))], n_days)
        df["sentiment"] = rng.normal(0, 1, n)
    return schema.validate(schema.coerce(df))


def table_snapshot(store: PriceStore) -> pd.DataFrame:
    return store.read()


def assert_bitwise_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)
    for c in a.columns:
        if c in schema.NUMERIC_COLUMNS:
            x, y = a[c].to_numpy(), b[c].to_numpy()
            assert np.array_equal(np.isnan(x), np.isnan(y)), c
            assert np.array_equal(x[~np.isnan(x)].view(np.int64), y[~np.isnan(y)].view(np.int64)), c


# ---------------------------------------------------------------------------------- schema
def test_create_schema_twice_gives_an_empty_table(store: PriceStore) -> None:
    store.create_schema()
    store.create_schema()
    assert store.exists()
    assert store.count() == 0
    assert store.tickers() == []
    assert store.date_range() is None
    out = store.read()
    assert len(out) == 0
    assert list(out.columns[:2]) == ["date", "ticker"]


def test_table_and_date_index_are_created(pg_dsn: str) -> None:
    store = PriceStore(pg_dsn, table="quotes")
    assert not store.exists()
    store.create_schema()
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'quotes' AND schemaname = current_schema()"
        )
        defs = sorted(r[0] for r in cur.fetchall())
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'quotes' AND table_schema = current_schema() ORDER BY ordinal_position"
        )
        cols = dict(cur.fetchall())
    conn.close()
    assert any("(ticker, date)" in d and "UNIQUE" in d for d in defs), defs
    assert any("quotes_date_idx" in d and "(date)" in d for d in defs), defs
    assert list(cols) == list(schema.ALL_COLUMNS)
    assert cols["date"] == "date" and cols["ticker"] == "text" and cols["sector"] == "text"
    assert cols["close"] == "double precision" and cols["volume"] == "double precision"


def test_reading_a_missing_table_names_it(pg_dsn: str) -> None:
    with pytest.raises(LookupError, match="'nosuch'"):
        PriceStore(pg_dsn, table="nosuch").read()


# ---------------------------------------------------------------------------------- round trip
def test_write_then_read_round_trips_values_and_dtypes_exactly(store: PriceStore) -> None:
    df = make_frame(5, 40, seed=1)
    # awkward floats: shortest-repr edge cases, huge and tiny magnitudes
    df.loc[0, ["open", "high", "low", "close"]] = [1 / 3, 0.1 + 0.2 + 0.1, 0.1 + 0.2, 1 / 3]
    df.loc[1, "market_cap"] = 1.7976931348623157e308
    df.loc[1, "sentiment"] = 5e-324
    df.loc[2, "pe"] = -0.0
    df.loc[3, "volume"] = 0.0
    schema.validate(df)
    seen: list[int] = []
    assert store.write(df, progress=seen.append) == len(df)
    assert sum(seen) == len(df) and len(seen) == -(-len(df) // store.chunk_rows)
    out = store.read()
    assert_bitwise_equal(out, df)
    assert out.dtypes.to_dict() == schema.coerce(df).dtypes.to_dict()
    assert out["date"].dtype == "datetime64[ns]"
    assert store.count() == len(df)
    assert store.tickers() == sorted(df["ticker"].unique())
    assert store.date_range() == (df["date"].min(), df["date"].max())


def test_absent_optional_columns_are_null_and_dropped_on_read(store: PriceStore) -> None:
    df = make_frame(3, 20, optional=False)
    store.write(df)
    out = store.read()
    assert list(out.columns) == list(schema.REQUIRED_COLUMNS)
    assert_bitwise_equal(out, df)
    # a partly-present optional column is kept, with NaN where it was absent
    more = make_frame(["ZZZ"], 20, seed=5, optional=False).assign(pe=1.5)
    store.write(more)
    out = store.read()
    assert "pe" in out.columns and "sector" not in out.columns
    assert out.loc[out["ticker"] == "ZZZ", "pe"].eq(1.5).all()
    assert out.loc[out["ticker"] != "ZZZ", "pe"].isna().all()


def test_upsert_without_an_optional_column_keeps_its_stored_values(store: PriceStore) -> None:
    df = make_frame(2, 10)
    store.write(df)
    store.write(df[list(schema.REQUIRED_COLUMNS)])
    assert_bitwise_equal(store.read(), df)


# ---------------------------------------------------------------------------------- idempotence
def test_reingesting_the_same_frame_changes_nothing(store: PriceStore) -> None:
    df = make_frame(4, 25)
    assert store.write(df) == len(df)
    before = store.read()
    assert store.write(df) == 0  # nothing inserted, nothing rewritten
    assert store.write(df.copy()) == 0
    assert store.count() == len(df)
    assert_bitwise_equal(store.read(), before)


def test_upsert_updates_changed_close_and_inserts_new_rows(store: PriceStore) -> None:
    df = make_frame(3, 20)
    store.write(df)
    changed = df.copy()
    rows = changed.index[changed["ticker"].eq("T001") & (changed["date"] >= changed["date"].iloc[15])]
    mid = (changed.loc[rows, "low"] + changed.loc[rows, "high"]) / 2
    changed.loc[rows, "close"] = mid
    changed.loc[rows, "open"] = mid
    new = make_frame(["T001"], 5, seed=9, start="2021-06-01")
    combined = schema.validate(
        pd.concat([changed, new]).sort_values(["ticker", "date"], kind="mergesort").reset_index(drop=True)
    )
    assert store.write(combined) == len(rows) + len(new)
    assert store.count() == len(df) + len(new)
    out = store.read()
    assert_bitwise_equal(out, combined)
    got = out.set_index(["ticker", "date"]).loc[
        changed.loc[rows].set_index(["ticker", "date"]).index, "close"
    ]
    assert np.array_equal(got.to_numpy(), mid.to_numpy())


# ---------------------------------------------------------------------------------- filters
def test_reads_filter_by_tickers_and_date_range_like_pandas(store: PriceStore) -> None:
    df = make_frame(6, 60, seed=2)
    store.write(df)
    lo, hi = df["date"].unique()[[10, 41]]
    pick = ["T004", "T001", "NOPE"]
    cases = [
        ({"tickers": pick}, df["ticker"].isin(pick)),
        ({"start": lo}, df["date"] >= lo),
        ({"end": hi}, df["date"] <= hi),
        ({"start": str(pd.Timestamp(lo).date()), "end": pd.Timestamp(hi)}, df["date"].between(lo, hi)),
        ({"tickers": pick, "start": lo, "end": hi}, df["ticker"].isin(pick) & df["date"].between(lo, hi)),
    ]
    for kwargs, mask in cases:
        assert_bitwise_equal(store.read(**kwargs), df[mask])
    assert len(store.read(tickers=[])) == 0
    assert len(store.read(tickers=["NOPE"])) == 0
    assert len(store.read(start="2030-01-01")) == 0
    cols = store.read(tickers=["T002"], columns=["close", "sector"])
    assert list(cols.columns) == ["date", "ticker", "close", "sector"]
    assert_bitwise_equal(cols, df.loc[df["ticker"] == "T002", ["date", "ticker", "close", "sector"]])
    with pytest.raises(ValueError, match="bogus"):
        store.read(columns=["close", "bogus"])
    with pytest.raises(TypeError):
        store.read(tickers="T001")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- failures
def test_contract_violation_raises_and_leaves_the_table_unchanged(store: PriceStore) -> None:
    df = make_frame(3, 15)
    store.write(df)
    before = store.read()
    bad = make_frame(3, 15, seed=4)
    bad.loc[7, "high"] = bad.loc[7, "low"] / 2
    with pytest.raises(schema.DataValidationError, match="T000") as err:
        store.write(bad)
    assert err.value.rule == "high_ge_open_close"
    dup = pd.concat([df.iloc[:5], df.iloc[4:6]]).reset_index(drop=True)
    with pytest.raises(schema.DataValidationError, match="duplicate_key"):
        store.write(dup)
    timed = df.copy()
    timed.loc[3, "date"] = timed.loc[3, "date"] + pd.Timedelta(hours=9)
    with pytest.raises(schema.DataValidationError, match="date_midnight"):
        store.write(timed)
    nul = make_frame(["A\x00B"], 5)
    with pytest.raises(ValueError, match="NUL"):
        store.write(nul)
    assert_bitwise_equal(store.read(), before)


@pytest.mark.parametrize("prefilled", [False, True], ids=["empty-table", "upsert"])
def test_failure_after_copy_rolls_back_the_whole_write(
    store: PriceStore, monkeypatch: pytest.MonkeyPatch, prefilled: bool
) -> None:
    first = make_frame(3, 12)
    if prefilled:
        store.write(first)
    before = store.read()
    update = make_frame(5, 30, seed=3)  # overlaps `first` and adds rows
    target = "_merge" if prefilled else "_copy_into"
    original = getattr(PriceStore, target)

    def then_fail(self: PriceStore, *args: object, **kwargs: object) -> object:
        original(self, *args, **kwargs)  # the rows are in (staging or table) ...
        raise RuntimeError("boom after COPY")  # ... and then the write fails

    monkeypatch.setattr(PriceStore, target, then_fail)
    with pytest.raises(RuntimeError, match="boom"):
        store.write(update)
    monkeypatch.undo()
    assert store.count() == len(before)
    assert_bitwise_equal(store.read(), before)
    assert store.write(update) == len(update)  # every row is new or differs from `first`
    assert_bitwise_equal(store.read(), update)


# ---------------------------------------------------------------------------------- hostile input
def test_hostile_tickers_and_sectors_round_trip_verbatim(store: PriceStore) -> None:
    df = make_frame(HOSTILE_TICKERS, 6, seed=8)
    df = schema.coerce(df.assign(sector=df["ticker"].map(lambda t: f"sector {t}")))
    store.write(df)
    assert store.exists()
    assert store.count() == len(df)
    out = store.read()
    assert_bitwise_equal(out, df)
    assert list(out["ticker"].unique()) == sorted(HOSTILE_TICKERS)
    assert store.tickers() == sorted(HOSTILE_TICKERS)
    for t in HOSTILE_TICKERS:
        one = store.read(tickers=[t])
        assert one["ticker"].tolist() == [t] * 6, repr(t)
        assert_bitwise_equal(one, df[df["ticker"] == t])
    assert store.write(df) == 0  # the upsert path matches hostile keys exactly too
    assert store.exists() and store.count() == len(df)


@pytest.mark.parametrize(
    "table",
    [
        "prices; DROP TABLE prices; --",
        'prices"',
        "pri ces",
        "",
        "1prices",
        "prïces",
        "a" * 60,
        "x.y",
        "prices--",
    ],
)
def test_hostile_table_names_are_rejected(store: PriceStore, table: str) -> None:
    with pytest.raises(ValueError, match="table name"):
        PriceStore(store._dsn, table=table)
    assert store.exists()


# ---------------------------------------------------------------------------------- DSN handling
def test_dsn_comes_from_the_environment(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLE_PG_DSN", pg_dsn)
    s = PriceStore()
    s.create_schema()
    assert s.count() == 0
    monkeypatch.delenv("ENSEMBLE_PG_DSN")
    with pytest.raises(ValueError, match="ENSEMBLE_PG_DSN"):
        PriceStore()


def test_password_never_appears_in_repr_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    from ensemble.data.pgserver import free_port

    dsn = f"host=127.0.0.1 port={free_port()} user=u password=hunter2 dbname=d connect_timeout=3"
    s = PriceStore(dsn)
    assert "hunter2" not in repr(s)
    with pytest.raises(ConnectionError) as err:
        s.count()
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    assert "hunter2" not in caplog.text


# ---------------------------------------------------------------------------------- LocalPostgres
def test_local_postgres_binds_loopback_and_cleans_up(pg_server: LocalPostgres) -> None:
    assert "host=127.0.0.1" in pg_server.dsn
    with psycopg2.connect(pg_server.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('listen_addresses'), current_setting('fsync')")
        assert cur.fetchone() == ("127.0.0.1", "off")
    conn.close()
    with LocalPostgres(dbname="other") as pg:
        root = pg.root
        assert root is not None and (root / "data" / "PG_VERSION").exists()
        with psycopg2.connect(pg.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("other",)
        conn.close()
    assert not root.exists()
    with pytest.raises(RuntimeError, match="not running"):
        _ = pg.dsn


def test_missing_binaries_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ensemble.data.pgserver import find_pg_bin

    monkeypatch.setenv("ENSEMBLE_PG_BIN", str(tmp_path))
    with pytest.raises(RuntimeError, match="initdb"):
        find_pg_bin()
    with pytest.raises(RuntimeError, match="initdb"):
        LocalPostgres()


# ---------------------------------------------------------------------------------- jobs.ingest
def _ingest(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENSEMBLE_PG_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "jobs.ingest", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ingest_job_loads_a_file_and_is_idempotent(pg_dsn: str, tmp_path: Path) -> None:
    df = make_frame(7, 33, seed=6)
    path = tmp_path / "prices.parquet"
    df.to_parquet(path, index=False)
    for _ in range(2):
        proc = _ingest(str(path), "--table", "prices", dsn=pg_dsn)
        assert proc.returncode == 0, proc.stderr
        assert f"{len(df):,} rows written" in proc.stdout and "rows/s" in proc.stdout
    assert "0 inserted or changed" in proc.stdout
    store = PriceStore(pg_dsn)
    assert store.count() == len(df)
    assert_bitwise_equal(store.read(), df)


def test_ingest_job_synthetic_source(pg_dsn: str) -> None:
    args = ("synthetic", "--tickers", "4", "--days", "90", "--seed", "3", "--table", "synth")
    for _ in range(2):
        proc = _ingest(*args, dsn=pg_dsn)
        assert proc.returncode == 0, proc.stderr
    assert PriceStore(pg_dsn, table="synth").count() == 4 * 90


def test_ingest_job_errors_are_clear(pg_dsn: str, tmp_path: Path) -> None:
    proc = _ingest("synthetic", "--tickers", "3", "--days", "90", dsn="")
    assert proc.returncode == 2 and "ENSEMBLE_PG_DSN" in proc.stderr
    proc = _ingest("synthetic", "--table", "x; drop", dsn=pg_dsn)
    assert proc.returncode == 2 and "table name" in proc.stderr
