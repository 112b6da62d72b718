"""The prediction log (ensemble/predlog.py): the row format, the Parquet and PostgreSQL backends, the
buffered asynchronous writer (flush by rows, by age, on close; acknowledged writes; retries), and
that a process killed with SIGKILL loses no row it had acknowledged as durable."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.config import load_settings
from ensemble.predlog import (
    NO_ARM,
    ParquetLogBackend,
    PostgresLogBackend,
    PredictionLog,
    PredictionLogError,
    open_backend,
    records_from_scores,
)

DAY = pd.Timestamp("2024-03-05")


def scores(tickers: list[str], day: pd.Timestamp = DAY, seed: int = 0) -> pd.DataFrame:
    """A frame shaped like ensemble.scoring.ScoreResult.frame (two horizons, two members)."""
    rng = np.random.default_rng(seed)
    n = len(tickers)
    f = pd.DataFrame({"date": day, "ticker": tickers, "close": 100.0, "ref_vol": 0.02})
    for h in (5, 20):
        p = rng.normal(0, 0.01, n)
        f[f"pred_h{h}"] = p
        f[f"excess_h{h}"] = p - p.mean()
        f[f"lo80_h{h}"], f[f"hi80_h{h}"] = p - 0.03, p + 0.03
        f[f"lo95_h{h}"], f[f"hi95_h{h}"] = p - 0.05, p + 0.05
        f[f"confidence_h{h}"] = 0.5
        f[f"n_models_h{h}"] = 2
        f[f"xgboost_h{h}"] = p + 0.001
        f[f"lstm_h{h}"] = p - 0.001
    return f


def test_records_are_one_row_per_ticker_and_horizon_with_members_and_intervals() -> None:
    f = scores(["AAA", "BBB", "CCC"])
    r = records_from_scores(f, version="v1", source="serve", arm="B", logged_at="2024-03-05 10:00")
    assert len(r) == 6 and sorted(set(r["horizon"])) == [5, 20]
    assert list(r.columns[:11]) == ["logged_at", "as_of", "ticker", "horizon", "version", "arm",
                                    "source", "ensemble", "excess", "confidence", "n_models"]  # fmt: skip
    assert list(r.columns[11:]) == ["lstm", "xgboost", "lo80", "hi80", "lo95", "hi95"]
    h20 = r[r["horizon"] == 20].set_index("ticker")
    assert h20.loc["BBB", "ensemble"] == f.loc[1, "pred_h20"]
    assert h20.loc["BBB", "hi95"] == f.loc[1, "hi95_h20"]
    assert h20.loc["CCC", "xgboost"] == f.loc[2, "xgboost_h20"]
    assert set(r["arm"]) == {"B"} and set(r["source"]) == {"serve"} and set(r["version"]) == {"v1"}
    assert (r["as_of"] == DAY).all() and (r["logged_at"] == pd.Timestamp("2024-03-05 10:00", tz="UTC")).all()
    no_arm = records_from_scores(f.drop(columns="date"), version="v1", source="score", as_of=DAY)
    assert set(no_arm["arm"]) == {NO_ARM} and (no_arm["as_of"] == DAY).all()
    with pytest.raises(ValueError, match="pred_h"):
        records_from_scores(f[["date", "ticker"]], version="v1", source="score")


def test_a_selection_of_tickers_and_horizons_is_logged_from_a_frame_left_uncopied(tmp_path: Path) -> None:
    """``log(..., tickers=, horizons=, copy=False)`` (how the service logs what it served out of a
    cached universe frame): only those rows and that horizon, selected by the writer, not the caller."""
    f = scores(["AAA", "BBB", "CCC", "DDD"])
    backend = ParquetLogBackend(tmp_path / "log")
    with PredictionLog(backend, flush_rows=10_000, flush_seconds=3600) as plog:
        assert (
            plog.log(f, version="v1", source="serve", tickers=["CCC", "AAA"], horizons=[20], copy=False) == 2
        )
        assert plog.log(f, version="v1", source="serve", tickers=["BBB"], wait=True) == 2
        with pytest.raises(ValueError, match="pred_h<h> for the horizons \\[60\\]"):
            plog.log(f, version="v1", source="serve", horizons=[60])  # no such horizon in the frame
    r = backend.read().sort_values(["ticker", "horizon"]).reset_index(drop=True)
    assert list(zip(r["ticker"], r["horizon"], strict=True)) == [
        ("AAA", 20),
        ("BBB", 5),
        ("BBB", 20),
        ("CCC", 20),
    ]
    assert r.loc[0, "ensemble"] == f.loc[0, "pred_h20"] and r.loc[3, "xgboost"] == f.loc[2, "xgboost_h20"]


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_parquet_close_flushes_everything_and_each_flush_is_a_new_part(tmp_path: Path) -> None:
    backend = ParquetLogBackend(tmp_path / "log")
    plog = PredictionLog(backend, flush_rows=10_000, flush_seconds=3600)
    for i in range(3):
        assert plog.log(scores([f"T{i}a", f"T{i}b"], seed=i), version="v1", source="score") == 4
    time.sleep(0.2)
    assert backend.parts() == []  # buffered: neither 10,000 rows nor an hour old
    plog.close()
    first = backend.parts()
    assert len(first) == 1 and plog.stats()["written"] == 12
    got = backend.read()
    assert len(got) == 12 and sorted(set(got["ticker"])) == ["T0a", "T0b", "T1a", "T1b", "T2a", "T2b"]
    with pytest.raises(PredictionLogError, match="closed"):
        plog.log(scores(["X"]), version="v1", source="score")
    before = _digest(first[0])
    with PredictionLog(backend, flush_rows=10_000, flush_seconds=3600) as again:
        again.log(scores(["Z"]), version="v2", source="score")
        again.flush()
        assert len(backend.parts()) == 2
        again.log(scores(["Y"]), version="v2", source="score")
    parts = backend.parts()
    assert len(parts) == 3 and parts[0] == first[0] and _digest(first[0]) == before  # never rewritten
    got = backend.read()
    assert len(got) == 16 and set(got.loc[got["version"] == "v2", "ticker"]) == {"Z", "Y"}
    # the exact values come back
    want = records_from_scores(scores(["T1a", "T1b"], seed=1), version="v1", source="score")
    back = got[got["ticker"].isin(["T1a", "T1b"])].sort_values(["horizon", "ticker"]).reset_index(drop=True)
    want = want.sort_values(["horizon", "ticker"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back.drop(columns="logged_at"), want.drop(columns="logged_at"))
    # a half-written part (a crash mid-write) is never read
    (tmp_path / "log" / ".part-x.parquet.tmp").write_bytes(b"garbage")
    assert len(backend.read()) == 16
    assert len(backend.read(start=DAY, end=DAY)) == 16 and backend.read(end="2024-01-01").empty


def _wait_for(cond, timeout: float = 10.0) -> bool:
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_background_flush_by_rows_and_by_age(tmp_path: Path) -> None:
    by_rows = ParquetLogBackend(tmp_path / "rows")
    with PredictionLog(by_rows, flush_rows=10, flush_seconds=3600) as plog:
        plog.log(scores(["A", "B", "C", "D"]), version="v", source="score")  # 8 rows < 10
        time.sleep(0.2)
        assert by_rows.parts() == []
        plog.log(scores(["E"]), version="v", source="score")  # 10 rows: written without a flush
        assert _wait_for(lambda: len(by_rows.read()) == 10)
    by_age = ParquetLogBackend(tmp_path / "age")
    with PredictionLog(by_age, flush_rows=10_000, flush_seconds=0.2) as plog:
        t0 = time.monotonic()
        plog.log(scores(["A"]), version="v", source="score")
        assert _wait_for(lambda: len(by_age.read()) == 2)
        assert time.monotonic() - t0 >= 0.15


def test_wait_returns_once_durable(tmp_path: Path) -> None:
    backend = ParquetLogBackend(tmp_path)
    with PredictionLog(backend, flush_rows=10_000, flush_seconds=3600) as plog:
        a = scores(["A"])
        plog.log(a, version="v", source="score")
        a["pred_h5"] = 99.0  # the caller reuses its frame: what was logged does not change
        plog.log(scores(["B"]), version="v", source="score", wait=True)  # and everything before it
        got = backend.read()
        assert sorted(set(got["ticker"])) == ["A", "B"] and (got["ensemble"] != 99.0).all()
        with pytest.raises(ValueError, match="no 'date' column"):
            plog.log(a.drop(columns="date"), version="v", source="score")  # checked at once


class FlakyBackend:
    """Fails the first ``failures`` writes; can block writes until released."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.rows: list[pd.DataFrame] = []
        self.gate = threading.Event()
        self.gate.set()

    def write(self, frame: pd.DataFrame) -> None:
        self.gate.wait()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database away")
        self.rows.append(frame)

    def read(self, start=None, end=None) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True)


def test_a_failed_write_is_reported_to_the_waiter_kept_and_retried() -> None:
    backend = FlakyBackend(failures=1)
    plog = PredictionLog(backend, flush_rows=10_000, flush_seconds=3600, retry_seconds=0.05)
    with pytest.raises(PredictionLogError, match="database away"):
        plog.log(scores(["A"]), version="v", source="score", wait=True)
    assert plog.stats()["failures"] == 1 and plog.stats()["last_error"].startswith("ConnectionError")
    plog.log(scores(["B"]), version="v", source="score", wait=True)  # the retry carries A too
    plog.close()
    got = backend.read()
    assert sorted(got["ticker"]) == ["A", "A", "B", "B"] and plog.stats()["written"] == 4
    # a backend that never recovers: close reports the rows it could not write
    dead = PredictionLog(FlakyBackend(failures=100), retry_seconds=0.01, close_retries=2)
    dead.log(scores(["C"]), version="v", source="score")
    with pytest.raises(PredictionLogError, match="2 rows could not be written"):
        dead.close()


def test_a_full_buffer_refuses_rows_without_blocking() -> None:
    backend = FlakyBackend()
    backend.gate.clear()  # the writer is stuck
    plog = PredictionLog(backend, flush_rows=1, flush_seconds=3600, max_buffer_rows=4)
    assert plog.log(scores(["A"]), version="v", source="score") == 2  # taken by the stuck writer
    assert _wait_for(lambda: plog.stats()["buffered"] == 0)
    assert plog.log(scores(["B", "C"]), version="v", source="score") == 4
    t0 = time.monotonic()
    assert plog.log(scores(["D"]), version="v", source="score") == 0  # refused at once
    assert time.monotonic() - t0 < 1.0 and plog.stats()["dropped"] == 2
    with pytest.raises(PredictionLogError, match="refused"):
        plog.log(scores(["E"]), version="v", source="score", wait=True)
    backend.gate.set()
    plog.close()
    assert sorted(set(backend.read()["ticker"])) == ["A", "B", "C"]


@pytest.mark.postgres
def test_postgres_backend_creates_the_table_and_round_trips(pg_dsn: str) -> None:
    backend = PostgresLogBackend(pg_dsn, table="prediction_log")
    assert backend.read().empty  # no table yet: nothing logged
    with PredictionLog(backend, flush_rows=10_000, flush_seconds=3600) as plog:
        plog.log(scores(["A", "B"], seed=1), version="v1", source="score", wait=True)
        plog.log(scores(["C"], day=DAY + pd.Timedelta(days=1), seed=2), version="v2", source="serve", arm="B")
    got = backend.read()
    assert len(got) == 6
    want = pd.concat(
        [
            records_from_scores(scores(["A", "B"], seed=1), version="v1", source="score"),
            records_from_scores(scores(["C"], day=DAY + pd.Timedelta(days=1), seed=2), version="v2",
                                source="serve", arm="B"),
        ]
    )  # fmt: skip
    key = ["as_of", "ticker", "horizon"]
    pd.testing.assert_frame_equal(
        got.drop(columns="logged_at").sort_values(key).reset_index(drop=True),
        want.drop(columns="logged_at").sort_values(key).reset_index(drop=True),
        check_exact=True,
    )
    assert (got["logged_at"].dt.tz is not None) and got["logged_at"].notna().all()
    assert len(backend.read(start=DAY + pd.Timedelta(days=1))) == 2 and len(backend.read(end=DAY)) == 4
    with pytest.raises(ValueError):
        PostgresLogBackend(pg_dsn, table="log; DROP TABLE prices")


def test_open_backend_follows_the_settings(monkeypatch, tmp_path: Path) -> None:
    s = load_settings(overrides={"monitoring": {"log_dir": str(tmp_path / "d"), "table": "plog"}})
    monkeypatch.delenv("ENSEMBLE_PG_DSN", raising=False)
    b = open_backend(s)
    assert isinstance(b, ParquetLogBackend) and b.directory == tmp_path / "d"
    monkeypatch.setenv("ENSEMBLE_PG_DSN", "host=127.0.0.1 port=1 dbname=x")
    pg = open_backend(s)
    assert isinstance(pg, PostgresLogBackend) and pg.table == "plog"
    assert isinstance(open_backend(s, tmp_path / "e"), ParquetLogBackend)  # an explicit directory wins


CHILD = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from ensemble.predlog import ParquetLogBackend, PostgresLogBackend, PredictionLog

    kind, target = sys.argv[1], sys.argv[2]
    backend = ParquetLogBackend(target) if kind == "parquet" else PostgresLogBackend(target)
    plog = PredictionLog(backend, flush_rows=10**6, flush_seconds=3600)
    i = 0
    while True:
        f = pd.DataFrame({"date": pd.Timestamp("2024-03-05"), "ticker": [f"T{i}_{j}" for j in range(3)],
                          "pred_h5": [0.1, 0.2, 0.3]})
        acked = i % 2 == 0  # every other batch is acknowledged, the rest only enqueued
        plog.log(f, version="v", source="score", wait=acked)
        if acked:
            print(f"ACK {i}", flush=True)
        i += 1
    """
)


@pytest.mark.parametrize("kind", ["parquet", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_loses_no_acknowledged_row(kind: str, tmp_path: Path, request) -> None:
    target = str(tmp_path / "log") if kind == "parquet" else request.getfixturevalue("pg_dsn")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, target], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while len(acked) < 25 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line.split()[1]))
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: nothing is flushed on the way out
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) == 25, f"the child acknowledged only {acked}"
    backend = ParquetLogBackend(target) if kind == "parquet" else PostgresLogBackend(target)
    have = set(backend.read()["ticker"])
    lost = [f"T{i}_{j}" for i in acked for j in range(3) if f"T{i}_{j}" not in have]
    assert lost == []


def test_a_clean_exit_writes_what_a_log_left_open_buffered(tmp_path: Path) -> None:
    child = textwrap.dedent(
        """
        import sys
        import pandas as pd
        from ensemble.predlog import ParquetLogBackend, PredictionLog

        plog = PredictionLog(ParquetLogBackend(sys.argv[1]), flush_rows=10**6, flush_seconds=3600)
        for i in range(3):
            plog.log(pd.DataFrame({"date": pd.Timestamp("2024-03-05"), "ticker": [f"T{i}"], "pred_h5": [0.1]}),
                     version="v", source="serve")
        sys.exit(0)  # never closed: the interpreter's exit writes the buffer
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert sorted(ParquetLogBackend(tmp_path).read()["ticker"]) == ["T0", "T1", "T2"]
