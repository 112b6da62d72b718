"""The data layer against bad input: non-finite values, dates that are not trading days, malformed
files, empty tables, and two first writers racing to create the PostgreSQL table."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ensemble.data import schema
from ensemble.data.files import load_file
from ensemble.data.schema import DataValidationError, clean, validate

REPO = Path(__file__).resolve().parents[1]
DATES = pd.bdate_range("2024-01-02", periods=5)  # Tue 2 .. Mon 8 January 2024
HEADER = "date,ticker,open,high,low,close,volume\n"


def frame(tickers: tuple[str, ...] = ("A", "B"), dates: pd.DatetimeIndex = DATES) -> pd.DataFrame:
    rows = []
    for i, t in enumerate(tickers):
        for j, d in enumerate(dates):
            c = 10.0 * (i + 1) + j
            rows.append((d, t, c - 0.5, c + 1.0, c - 1.0, c, 1000.0 * (j + 1)))
    return schema.coerce(pd.DataFrame(rows, columns=list(schema.REQUIRED_COLUMNS)))


def with_value(df: pd.DataFrame, ticker: str, day: pd.Timestamp, **values: float) -> pd.DataFrame:
    out = df.copy()
    row = (out["ticker"] == ticker) & (out["date"] == day)
    assert row.sum() == 1
    for col, v in values.items():
        out.loc[row, col] = v
    return out


def dropped(report: schema.CleaningReport, rule: str) -> list[tuple[str, pd.Timestamp]]:
    a = report.actions_frame()
    a = a[(a["rule"] == rule) & (a["action"] == "dropped")]
    return list(zip(a["ticker"], a["date"], strict=True))


# ---------------------------------------------------------------------------- 1. non-finite values
INF_CASES = [
    {"close": np.inf, "high": np.inf},
    {"high": np.inf},
    {"volume": np.inf},
    {"open": np.inf, "high": np.inf},
]


@pytest.mark.parametrize("values", INF_CASES, ids=["close", "high", "volume", "open"])
def test_inf_prices_and_volume_break_the_contract(values: dict[str, float]) -> None:
    df = with_value(frame(), "B", DATES[2], **values)
    with pytest.raises(DataValidationError) as ei:
        validate(df)
    e = ei.value
    assert (e.rule, e.ticker, e.dates[0]) == ("finite_value", "B", DATES[2])
    assert e.column in values and e.value == np.inf
    assert "'B'" in str(e) and "2024-01-04" in str(e) and "inf" in str(e)


def test_inf_adj_close_breaks_the_contract_but_nan_is_allowed() -> None:
    df = frame().assign(adj_close=np.nan)
    validate(df)
    df.loc[3, "adj_close"] = -np.inf
    with pytest.raises(DataValidationError, match="finite_value") as ei:
        validate(df)
    assert (ei.value.column, ei.value.ticker, ei.value.dates[0]) == ("adj_close", "A", DATES[3])


@pytest.mark.parametrize("mode", ["drop", "repair"])
def test_clean_removes_rows_with_inf_and_reports_them(mode: str) -> None:
    df = with_value(frame(), "A", DATES[1], close=np.inf, high=np.inf)
    df = with_value(df, "B", DATES[3], volume=np.inf)
    out, rep = clean(df, mode=mode)  # type: ignore[arg-type]
    assert validate(out) is out
    assert np.isfinite(out[["open", "high", "low", "close", "volume"]].to_numpy()).all()
    assert dropped(rep, "finite_value") == [("A", DATES[1]), ("B", DATES[3])]
    assert (rep.rows_in, rep.rows_out) == (10, 8)
    assert "[finite_value]" in rep.summary()


# ---------------------------------------------------------------------------- 5. weekends, future
def test_weekend_dates_break_the_trading_day_rule() -> None:
    df = frame(("A",), pd.DatetimeIndex(["2024-01-04", "2024-01-05", "2024-01-06", "2024-01-08"]))
    with pytest.raises(DataValidationError) as ei:
        validate(df)
    e = ei.value
    assert (e.rule, e.ticker, e.dates) == ("trading_day", "A", [pd.Timestamp("2024-01-06")])
    assert "trading_day" in str(e) and "2024-01-06" in str(e) and "'A'" in str(e)


def test_dates_after_today_break_the_future_date_rule() -> None:
    df = frame(("A",))
    validate(df, today="2024-01-08")  # the last date is today: fine
    with pytest.raises(DataValidationError) as ei:
        validate(df, today=date(2024, 1, 4))
    e = ei.value
    assert (e.rule, e.ticker, e.dates) == ("future_date", "A", [DATES[3], DATES[4]])
    assert "after today (2024-01-04)" in str(e) and "2024-01-05" in str(e)


def test_future_is_measured_from_the_real_clock_by_default() -> None:
    ahead = pd.bdate_range(pd.Timestamp.today().normalize() + pd.Timedelta(days=3), periods=2)
    df = frame(("A",), pd.DatetimeIndex([pd.Timestamp("2024-01-02"), *ahead]))
    with pytest.raises(DataValidationError, match="future_date"):
        validate(df)
    validate(df.iloc[:1])


@pytest.mark.parametrize("mode", ["drop", "repair"])
def test_clean_drops_weekend_and_future_rows_and_reports_them(mode: str) -> None:
    days = pd.DatetimeIndex(["2024-01-04", "2024-01-05", "2024-01-06", "2024-01-08", "2024-01-10"])
    out, rep = clean(frame(("A", "B"), days), mode=mode, today="2024-01-09")  # type: ignore[arg-type]
    assert validate(out, today="2024-01-09") is out
    assert out["date"].unique().tolist() == [days[0], days[1], days[3]]
    sat, wed = pd.Timestamp("2024-01-06"), pd.Timestamp("2024-01-10")
    assert dropped(rep, "trading_day") == [("A", sat), ("B", sat)]
    assert dropped(rep, "future_date") == [("A", wed), ("B", wed)]
    assert "[trading_day]" in rep.summary() and "[future_date]" in rep.summary()


def test_synthetic_market_is_on_business_days_and_passes() -> None:
    from ensemble.config import SyntheticConfig
    from ensemble.data.synthetic import generate_market

    prices = generate_market(SyntheticConfig(n_tickers=4, n_days=120, seed=1)).prices
    assert validate(prices) is prices
    assert (prices["date"].dt.day_of_week < 5).all()


SAMPLE = REPO.parent / "shared" / "data" / "sp500_daily.parquet"


@pytest.mark.skipif(not SAMPLE.exists(), reason=f"no sample data at {SAMPLE}")
def test_real_sample_has_no_weekend_or_future_dates_and_still_cleans() -> None:
    raw = pq.read_table(SAMPLE, columns=["date"]).column("date").to_pandas()
    assert (raw.dt.day_of_week < 5).all() and raw.max() < pd.Timestamp.today()
    df, rep = load_file(SAMPLE, clean="drop", tickers=["AAPL", "MSFT", "A"])
    assert validate(df) is df and set(df["ticker"]) == {"AAPL", "MSFT", "A"}
    assert rep is not None and not dropped(rep, "trading_day") and not dropped(rep, "future_date")


# ---------------------------------------------------------------------------- 2. dates in files
def write_csv(path: Path, *rows: str) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


GOOD_ROW = "2024-01-03,A,1,2,1,1.5,10"


@pytest.mark.parametrize(
    ("bad_date", "rule", "words"),
    [
        ("2024-01-02T00:00:00+05:00", "date_timezone", "time zone or UTC offset"),
        ("2024-01-02T00:00:00Z", "date_timezone", "time zone or UTC offset"),
        ("0001-01-01", "date_out_of_range", "out of the supported range"),
        ("2024-01-04 13:45:00", "date_midnight", "has a time of day"),
        ("2024-01-02 (sic)", "date_type", "does not parse as a date"),
    ],
    ids=["offset", "utc", "year-1", "time-of-day", "garbage"],
)
def test_csv_dates_that_are_not_calendar_dates_are_refused(
    tmp_path: Path, bad_date: str, rule: str, words: str
) -> None:
    path = write_csv(tmp_path / "px.csv", GOOD_ROW, "2024-01-04,A,1,2,1,1.5,10", f"{bad_date},A,1,2,1,1.5,10")
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    e = ei.value
    assert (e.rule, e.path, e.column, e.row, e.value) == (rule, str(path), "date", 2, bad_date)
    msg = str(e)
    assert words in msg and str(path) in msg and "column 'date'" in msg and "data row 3" in msg
    assert repr(bad_date) in msg and "\n" not in msg


def test_parquet_integer_dates_are_refused_not_read_as_1970(tmp_path: Path) -> None:
    days = (DATES - pd.Timestamp("1970-01-01")).days.to_numpy()
    tbl = pa.table({"Date": days, **{c: frame(("A",))[c].to_numpy() for c in schema.REQUIRED_COLUMNS[1:]}})
    path = tmp_path / "int.parquet"
    pq.write_table(tbl, path)
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    e = ei.value
    assert (e.rule, e.column, e.row, e.value) == ("date_type", "Date", 0, days[0])
    assert "is a number" in str(e) and str(path) in str(e) and "data row 1" in str(e)
    assert "1970" not in str(e)


@pytest.mark.parametrize(
    ("dates", "rule"),
    [
        (pd.DatetimeIndex(["2024-01-02", "2024-01-03 09:30"]), "date_midnight"),
        (pd.DatetimeIndex(["2024-01-02", "2024-01-03"]).tz_localize("America/New_York"), "date_timezone"),
    ],
    ids=["time-of-day", "tz-aware"],
)
def test_parquet_timestamps_with_time_or_zone_are_refused(
    tmp_path: Path, dates: pd.DatetimeIndex, rule: str
) -> None:
    df = frame(("A",), pd.bdate_range("2024-01-02", periods=2)).assign(date=dates)
    path = tmp_path / "ts.parquet"
    df.to_parquet(path, index=False)
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    assert ei.value.rule == rule and ei.value.path == str(path) and ei.value.column == "date"


def test_parquet_date32_and_midnight_timestamps_still_load(tmp_path: Path) -> None:
    df = frame()
    for name, dates in [("d32", pa.array(df["date"].dt.date, pa.date32())), ("ts", pa.array(df["date"]))]:
        tbl = pa.Table.from_pandas(df, preserve_index=False).set_column(0, "date", dates)
        pq.write_table(tbl, tmp_path / f"{name}.parquet")
        got, _ = load_file(tmp_path / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, df)


# ---------------------------------------------------------------------------- 3. no rows
@pytest.mark.parametrize("mode", ["none", "drop", "repair"])
def test_header_only_csv_is_a_clear_empty_error(tmp_path: Path, mode: str) -> None:
    path = write_csv(tmp_path / "empty.csv")
    with pytest.raises(DataValidationError) as ei:
        load_file(path, clean=mode)  # type: ignore[arg-type]
    assert ei.value.rule == "empty" and str(path) in str(ei.value) and "no rows" in str(ei.value)


def test_cleaning_that_drops_every_row_says_so() -> None:
    df = with_value(frame(("A",), DATES[:2]), "A", DATES[0], close=-1.0)
    df = with_value(df, "A", DATES[1], volume=np.inf)
    with pytest.raises(DataValidationError) as ei:
        clean(df, mode="drop")
    assert ei.value.rule == "empty"
    assert "all 2 rows were dropped" in str(ei.value) and "close_positive 1" in str(ei.value)


# ---------------------------------------------------------------------------- 4. bad values, bad files
def test_non_numeric_close_names_file_column_row_and_value(tmp_path: Path) -> None:
    path = tmp_path / "px.csv"
    path.write_text("Date,Symbol,Open,High,Low,Close,Volume\n" + GOOD_ROW + "\n2024-01-04,B,1,2,1,abc,10\n")
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    e = ei.value
    assert (e.rule, e.path, e.column, e.row, e.value, e.ticker) == (
        "numeric_type",
        str(path),
        "Close",
        1,
        "abc",
        "B",
    )
    assert "column 'Close'" in str(e) and "data row 2" in str(e) and "'abc'" in str(e)


def test_non_numeric_value_in_parquet_names_file_column_and_row(tmp_path: Path) -> None:
    df = frame().astype({"volume": object})
    df.loc[6, "volume"] = "lots"
    path = tmp_path / "px.parquet"
    pq.write_table(pa.Table.from_pandas(df.astype({"volume": str}), preserve_index=False), path)
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    e = ei.value
    assert (e.rule, e.column, e.row, e.value) == ("numeric_type", "volume", 6, "lots")
    assert str(path) in str(e) and "data row 7" in str(e)


@pytest.mark.parametrize("name", ["junk.csv", "junk.csv.gz", "junk.parquet"])
def test_binary_files_are_format_errors_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(
        b"\x1f\x8b\x08" + bytes(range(256)) * 20 if name.endswith(".gz") else bytes(range(256)) * 20
    )
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    assert ei.value.rule == "file_format" and str(path) in str(ei.value) and "\n" not in str(ei.value)


def test_a_row_with_too_many_fields_is_a_format_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ragged.csv", GOOD_ROW, GOOD_ROW + ",extra")
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    assert ei.value.rule == "file_format" and str(path) in str(ei.value)


def test_contract_rule_in_a_file_names_the_file_and_its_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "px.csv", GOOD_ROW, "2024-01-04,A,1,2,1,-3,10")
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    e = ei.value
    assert (e.rule, e.column, e.row) == ("close_positive", "close", 1)
    assert str(path) in str(e) and "data row 2" in str(e) and "2024-01-04" in str(e)


def test_errors_survive_pickling() -> None:
    e = DataValidationError(
        "finite_value", "x", ticker="A", dates=[DATES[0]], n_rows=2, column="close", row=3
    )
    back = pickle.loads(pickle.dumps(e.located("f.csv")))
    assert str(back) == str(e.located("f.csv")) and (back.rule, back.row, back.path) == (
        "finite_value",
        None,
        "f.csv",
    )


def _ingest(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENSEMBLE_PG_DSN": dsn, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "jobs.ingest", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


UNREACHABLE_DSN = (
    "host=127.0.0.1 port=1 dbname=nothing connect_timeout=1"  # never reached: the data fail first
)


@pytest.mark.parametrize(
    ("content", "clean", "needles"),
    [
        (
            HEADER + GOOD_ROW + "\n2024-01-04,A,1,2,1,abc,10\n",
            "none",
            ["numeric_type", "'close'", "data row 2"],
        ),
        (bytes(range(256)) * 20, "none", ["file_format"]),
        (HEADER, "drop", ["empty", "no rows"]),
        (
            HEADER + "2024-01-02T00:00:00+05:00,A,1,2,1,1.5,10\n",
            "none",
            ["date_timezone", "'date'", "data row 1"],
        ),
        (
            HEADER + GOOD_ROW + "\n2024-01-06,A,1,2,1,1.5,10\n",
            "none",
            ["trading_day", "2024-01-06", "data row 2"],
        ),
    ],
    ids=["non-numeric", "binary", "header-only", "offset", "weekend"],
)
def test_ingest_job_exits_3_with_one_line(
    tmp_path: Path, content: str | bytes, clean: str, needles: list[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = _ingest(str(path), "--clean", clean, dsn=UNREACHABLE_DSN)
    assert proc.returncode == 3, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------- PostgreSQL
@pytest.mark.postgres
def test_store_refuses_inf_and_leaves_the_table_unchanged(store) -> None:
    good = frame()
    store.write(good)
    with pytest.raises(DataValidationError, match="finite_value"):
        store.write(with_value(good, "A", DATES[1], close=np.inf, high=np.inf))
    pd.testing.assert_frame_equal(store.read(), good)


@pytest.mark.postgres
def test_store_refuses_weekend_dates(store) -> None:
    with pytest.raises(DataValidationError, match="trading_day"):
        store.write(frame(("A",), pd.DatetimeIndex(["2024-01-05", "2024-01-06"])))
    assert store.count() == 0


@pytest.mark.postgres
def test_two_first_ingests_into_a_new_table_both_succeed(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ensemble.data.store import PriceStore

    # Widen the race deterministically: each writer waits (up to 1.5 s) after checking whether the
    # table exists, so without a lock both see "no table" and both run CREATE TABLE. With the lock
    # the second writer queues before its check and the barrier simply times out.
    barrier = threading.Barrier(2, timeout=1.5)
    original = PriceStore._exists

    def exists_then_wait(self: PriceStore, cur: object) -> bool:
        found = original(self, cur)  # type: ignore[arg-type]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return found

    monkeypatch.setattr(PriceStore, "_exists", exists_then_wait)
    frames = [frame(("A", "B")), frame(("C", "D"))]
    errors: list[BaseException] = []

    def ingest(df: pd.DataFrame) -> None:
        try:
            PriceStore(pg_dsn, table="fresh").write(df)
        except BaseException as exc:  # collected and asserted on in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(df,)) for df in frames]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    store = PriceStore(pg_dsn, table="fresh")
    pd.testing.assert_frame_equal(store.read(), pd.concat(frames, ignore_index=True))
