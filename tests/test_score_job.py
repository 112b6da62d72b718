"""jobs.score end to end on a tiny registry version: outputs on disk, the PostgreSQL
``recommendations`` table replaced (never duplicated) when a date is re-run, the CLI's tables and
errors, and the Prophet refit in the Ray fan-out (the same fit as in-process, recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ensemble.data.recommendations import RecommendationStore
from ensemble.scoring import load_version, prophet_fitted_through, prophet_refit_frame, refit_prophet, score
from jobs import score as job

# thresholds that the tiny version's small 20-day excess forecasts cross (its 5-day ones are ~0: the
# tiny members show no 5-day skill on their validation dates, so the calibration maps them to ~0)
ACTIVE = {
    "recommend": {"horizon": 20, "buy_threshold": 0.0003, "sell_threshold": -0.0003, "min_confidence": 0.0}
}


@pytest.fixture
def no_dsn(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ENSEMBLE_PG_DSN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(tmp_path)  # the prediction log's default directory lands in the test's own


@pytest.mark.postgres
def test_rerunning_a_date_leaves_the_recommendations_table_unchanged(
    tiny_version, pg_dsn: str, monkeypatch, tmp_path: Path
) -> None:
    registry, version, prep = tiny_version
    monkeypatch.setenv("ENSEMBLE_PG_DSN", pg_dsn)
    dates = sorted(prep.prices["date"].unique())
    kw = {"registry_root": registry.root, "refit": False, "overrides": ACTIVE}
    first = job.run(out=str(tmp_path / "a"), **kw)
    earlier = job.run(out=str(tmp_path / "b"), as_of=str(pd.Timestamp(dates[-3]).date()), **kw)
    store = RecommendationStore(pg_dsn)
    before = store.read()
    again = job.run(out=str(tmp_path / "c"), **kw)
    after = store.read()
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    n = first["tickers"]["scored"]
    assert first["postgres_rows"] == again["postgres_rows"] == n == earlier["tickers"]["scored"]
    assert len(after) == 2 * n and not after.duplicated(["as_of", "ticker"]).any()
    assert set(after["version"]) == {version} and set(after["action"]) == {"BUY", "HOLD", "SELL"}
    # the table holds what was written to disk
    disk = pd.read_parquet(tmp_path / "a" / "recommendations.parquet").sort_values("ticker")
    day = after[after["as_of"] == pd.Timestamp(dates[-1]).date()].sort_values("ticker")
    assert list(day["ticker"]) == list(disk["ticker"])
    assert day["weight"].tolist() == disk["weight"].tolist()
    assert day["price_target"].tolist() == disk["price_target_h20"].tolist()  # the action's horizon
    # a re-run that recommends fewer tickers replaces the date's rows: none left over
    fewer = disk.iloc[:-3]
    assert store.write(fewer) == n - 3
    assert len(store.read(as_of=dates[-1])) == n - 3 and len(store.read()) == 2 * n - 3


def test_outputs_and_the_cli_tables(tiny_version, no_dsn, tmp_path: Path, capsys) -> None:
    registry, _, prep = tiny_version
    sets = ["--set", "recommend.horizon=20", "--set", "recommend.buy_threshold=0.0003",
            "--set", "recommend.sell_threshold=-0.0003",
            "--set", "recommend.min_confidence=0"]  # fmt: skip
    argv = ["--registry", registry.root, "--no-refit", "--out", str(tmp_path), "--top", "3", *sets]
    assert job.main(argv) == 0
    out = capsys.readouterr().out
    assert "actions (h=20): BUY" in out and "every ticker scored" in out
    assert ("top buys:" in out or "highest-ranked" in out) and ("top sells:" in out or "lowest-ranked" in out)
    recs = pd.read_csv(tmp_path / "recommendations.csv")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(recs) == prep.prices["ticker"].nunique() == summary["tickers"]["scored"]
    assert summary["as_of"] == str(prep.prices["date"].max().date()) and summary["prophet_refit"] is None
    assert summary["seconds"]["total"] > 0 and sum(summary["actions"].values()) == len(recs)
    # the CLI's top buys: the BUY with the best risk-adjusted forecast is among them
    buys = recs[recs["action"] == "BUY"]
    assert len(buys) == summary["actions"]["BUY"] > 0
    best = buys.sort_values("risk_adjusted", ascending=False).iloc[0]
    assert out.split("top buys:\n", 1)[1].splitlines()[1].startswith(str(best["ticker"])), out
    assert job.main([*argv, "--ticker", str(best["ticker"])]) == 0
    one = capsys.readouterr().out
    assert "price_target_h20" in one and "top_features" in one and str(best["ticker"]) in one
    assert job.main([*argv, "--ticker", "NOPE"]) == 0
    assert "NOPE: not scored (not in the data)" in capsys.readouterr().out


def test_cli_errors_are_one_line_with_an_exit_code(tiny_version, no_dsn, tmp_path: Path, capsys) -> None:
    registry, _, _ = tiny_version
    assert (
        job.main(["--registry", registry.root, "--no-refit", "--as-of", "1999-01-04", "--out", str(tmp_path)])
        == 3
    )
    assert (
        capsys.readouterr().err.strip() == "error: no prices dated 1999-01-04 or earlier in the data source"
    )
    day = "2019-06-01"  # a Saturday inside the data: the latest trading date before it is not scored instead
    assert job.main(["--registry", registry.root, "--no-refit", "--as-of", day, "--out", str(tmp_path)]) == 3
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith("error: no prices dated 2019-06-01 to score; the latest is")
    )
    assert job.main(["--registry", str(tmp_path / "empty"), "--no-refit"]) == 2
    assert "no committed version or alias 'production'" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_prophet_refit_on_ray_is_the_local_fit_and_is_recorded(
    tiny_version, ray_local, tmp_path: Path
) -> None:
    registry, version, prep = tiny_version
    lv = load_version(registry)
    tickers = sorted(prep.prices["ticker"].unique())[:3]
    prices = prep.prices[prep.prices["ticker"].isin(tickers)].reset_index(drop=True)
    day = prices["date"].max()
    settings = job.resolve_settings(lv, None, {"scoring": {"prophet_refit_every_days": 10}})
    fresh, record = job.refresh_prophet(lv, prices, day, settings, progress=False)
    assert record is not None and record.where == "ray" and record.version == version
    assert sorted(record.refitted) == tickers and record.failed == {}
    assert {t: r["through"] for t, r in record.refitted.items()} == dict.fromkeys(tickers, str(day.date()))
    through = prophet_fitted_through(lv.models["prophet"])
    assert {t: r["before"] for t, r in record.refitted.items()} == {
        t: str(through[t].date()) for t in tickers
    }
    local = refit_prophet(lv, prophet_refit_frame(lv, prices, day, tickers))
    at = prices[prices["date"] == day]
    pd.testing.assert_frame_equal(fresh.models["prophet"].predict(at), local.predict(at), check_exact=True)
    # nothing is stale right after a refit
    again, none = job.refresh_prophet(fresh, prices, day, settings, progress=False)
    assert none is None and again is fresh
    assert score(fresh, prep.prices).degraded == {}
