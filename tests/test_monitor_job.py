"""jobs.monitor and the jobs.score hook end to end: scoring logs every forecast it scores (durable
before the job returns, off with ``monitoring.log=false``), and jobs.monitor reads the log and the
prices back into the accuracy table, the drift tables (the version's stored training reference) and
the alerts, prints them, writes them as JSON and exits 0 (nonzero only on errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.config import load_settings
from ensemble.data.sources import load_prices
from ensemble.features.targets import forward_log_returns
from ensemble.predlog import NO_ARM, ParquetLogBackend, PredictionLog, normalise
from jobs import monitor as monitor_job
from jobs import score as score_job

SMALL = [
    "--set",
    "synthetic.n_tickers=20",
    "--set",
    "synthetic.n_days=120",
    "--set",
    "monitoring.rolling_window=20",
]


@pytest.fixture
def no_dsn(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ENSEMBLE_PG_DSN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(tmp_path)  # default output directories land in the test's own directory


def test_monitor_cli_without_a_version_reports_accuracy_and_exits_0(no_dsn, tmp_path: Path, capsys) -> None:
    s = load_settings(overrides={"synthetic": {"n_tickers": 20, "n_days": 120}})
    prices, _ = load_prices(s)
    real = forward_log_returns(prices, [5])["target_h5"].to_numpy()
    rng = np.random.default_rng(0)
    last = prices["date"] >= sorted(prices["date"].unique())[-40]
    rows = pd.DataFrame({"logged_at": pd.Timestamp.now(tz="UTC"), "as_of": prices["date"], "ticker": prices["ticker"],
                         "horizon": 5, "version": "v-old", "arm": "A", "source": "serve",
                         "ensemble": real + rng.normal(0, 0.02, len(prices))})[last]  # fmt: skip
    with PredictionLog(ParquetLogBackend(tmp_path / "log")) as plog:
        plog.log_records(normalise(rows))
    argv = ["--registry", str(tmp_path / "empty"), "--log", str(tmp_path / "log"), *SMALL]
    assert monitor_job.main([*argv, "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    (acc,) = report["accuracy"]
    assert (acc["version"], acc["arm"], acc["horizon"], acc["model"]) == ("v-old", "A", 5, "ensemble")
    assert acc["dates"] == 20 and acc["rank_ic"] > 0.3  # the last 20 realised dates of 35
    assert report["drift"] is None and report["alerts"] == []
    assert "no production version in the registry: no drift check" in report["notes"]
    assert "v-old/A/h5/ensemble" not in out and "ensemble" in out and "alerts: 0" in out
    assert report["log"]["rows"] == int(last.sum()) and report["log"]["scored"] == 35 * 20
    # a planted accuracy drop, seen as of a later date: an alert, still exit 0
    assert (
        monitor_job.main([*argv, "--set", "monitoring.min_rank_ic=0.99", "--out", str(tmp_path / "a.json")])
        == 0
    )
    alerts = json.loads((tmp_path / "a.json").read_text())["alerts"]
    assert [(a["rule"], a["subject"]) for a in alerts] == [("rank_ic_low", "v-old/A/h5/ensemble")]
    # default output: monitoring.out_dir/<as_of>.json under the working directory
    assert monitor_job.main(argv) == 0
    assert (tmp_path / "artifacts" / "monitor" / f"{report['as_of']}.json").is_file()
    # an empty log: empty tables, exit 0
    assert (
        monitor_job.main(["--registry", str(tmp_path / "empty"), "--log", str(tmp_path / "none"), *SMALL])
        == 0
    )
    assert "no logged forecast has a realised return yet" in capsys.readouterr().out
    # an explicit version that does not exist is an error
    assert monitor_job.main([*argv, "--version", "nope"]) == 2
    assert "no committed version or alias 'nope'" in capsys.readouterr().err


def test_score_logs_every_forecast_and_monitor_reads_it_back(
    tiny_version, no_dsn, tmp_path: Path, capsys
) -> None:
    registry, version, prep = tiny_version
    dates = sorted(prep.prices["date"].unique())
    log = tmp_path / "log"
    days = [pd.Timestamp(d) for d in dates[-40:-24:5]]
    for d in days:
        out = tmp_path / "scores" / str(d.date())
        s = score_job.run(registry_root=registry.root, as_of=str(d.date()), out=str(out), refit=False,
                          progress=False, log_dir=str(log))  # fmt: skip
        n = s["tickers"]["scored"]
        assert s["prediction_log"]["rows"] == 2 * n  # horizons 5 and 20, durable when run() returns
        got = ParquetLogBackend(log).read(start=d, end=d)
        recs = pd.read_parquet(out / "recommendations.parquet").set_index("ticker")
        for h in (5, 20):
            at = got[got["horizon"] == h].set_index("ticker").sort_index()
            assert list(at.index) == sorted(recs.index)
            np.testing.assert_array_equal(at["ensemble"], recs.loc[at.index, f"exp_ret_h{h}"])
        assert (
            set(got["version"]) == {version}
            and set(got["source"]) == {"score"}
            and set(got["arm"]) == {NO_ARM}
        )
        assert {"lstm", "xgboost", "lightgbm", "random_forest", "prophet", "lo80", "hi95"} <= set(got.columns)
    assert len(ParquetLogBackend(log).parts()) == len(days)
    off = score_job.run(registry_root=registry.root, out=str(tmp_path / "off"), refit=False, progress=False,
                        log_dir=str(tmp_path / "off-log"), overrides={"monitoring": {"log": False}})  # fmt: skip
    assert off["prediction_log"] is None and not (tmp_path / "off-log").exists()

    argv = ["--registry", registry.root, "--log", str(log), "--set", "monitoring.drift_days=2"]
    assert monitor_job.main([*argv, "--out", str(tmp_path / "m.json")]) == 0
    out_text = capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    acc = pd.DataFrame(report["accuracy"])
    assert set(acc["horizon"]) == {5, 20} and set(acc["version"]) == {version} and set(acc["arm"]) == {NO_ARM}
    assert {"ensemble", "lstm", "xgboost", "lightgbm", "random_forest", "prophet"} <= set(acc["model"])
    assert (acc["dates"] == len(days)).all() and acc["rank_ic"].notna().all()
    ens = acc[acc["model"] == "ensemble"]
    assert (
        ens["coverage80"].between(0, 1).all()
        and acc.loc[acc["model"] != "ensemble", "coverage80"].isna().all()
    )
    drift = pd.DataFrame(report["drift"])
    assert sorted(drift["subject"]) == sorted(prep.preprocessor.selected_)
    assert (
        drift["psi"].ge(0).all() and drift["ks"].between(0, 1).all() and (drift["n_recent"] == 2 * 24).all()
    )
    fd = pd.DataFrame(report["forecast_drift"])
    assert sorted(fd["subject"]) == ["forecast_h20", "forecast_h5"] and set(fd["baseline"]) == {"earlier log"}
    assert "accuracy (rolling window)" in out_text and f"input drift of version {version}" in out_text
    assert report["version"] == version and report["notes"] == []


def test_monitor_cli_config_errors_are_one_line_exit_2(no_dsn, tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "jobs.monitor", "--registry", str(tmp_path), "--set", "monitoring.flush_rows=0"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: monitoring.flush_rows: Input should be greater than or equal to 1 (got 0)"
    ]
