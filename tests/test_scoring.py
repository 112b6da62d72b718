"""As-of scoring (ensemble/scoring.py) with a tiny trained registry version: point in time (rows after
the as-of date, even poisoned, change nothing), tickers that cannot be scored are reported with the
reason, a member that fails to load is left out and reported, one predict call per member, and the
Prophet refit swaps in fresh per-ticker models without touching the registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.registry import ModelRegistry
from ensemble.scoring import (
    ALL,
    ScoringError,
    load_version,
    per_ticker_walk_forward,
    predict_member,
    prepare_frame,
    prophet_fitted_through,
    prophet_refit_frame,
    refit_prophet,
    score,
    stale_prophet_tickers,
    with_prophet,
)


@pytest.fixture(scope="module")
def lv(tiny_version):
    registry, version, _ = tiny_version
    return load_version(registry, "production")


@pytest.fixture(scope="module")
def prices(tiny_version) -> pd.DataFrame:
    return tiny_version[2].prices


def _assert_same(a, b) -> None:
    pd.testing.assert_frame_equal(a.frame, b.frame, check_exact=True)
    assert a.skipped == b.skipped and a.degraded == b.degraded
    assert sorted(a.members) == sorted(b.members)
    for m in a.members:
        pd.testing.assert_frame_equal(a.members[m], b.members[m], check_exact=True)
    pd.testing.assert_frame_equal(a.contributions, b.contributions, check_exact=True)


def test_loaded_version_is_the_registry_version(lv, tiny_version) -> None:
    registry, version, prep = tiny_version
    assert lv.version == version and lv.degraded == {}
    assert sorted(lv.models) == sorted(registry.manifest(version)["models"])
    assert lv.horizons == (5, 20) and lv.settings.features.selection_k == 12
    assert lv.preprocessor.selected_ == prep.preprocessor.selected_


def test_scoring_is_point_in_time(lv, prices) -> None:
    dates = np.sort(prices["date"].unique())
    day = pd.Timestamp(dates[-30])
    upto = prices[prices["date"] <= day].reset_index(drop=True)
    # the source also holds later rows, poisoned: prices x 3 and NaN volumes
    later = prices["date"] > day
    poisoned = prices.copy()
    for c in ("open", "high", "low", "close"):
        poisoned.loc[later, c] = poisoned.loc[later, c] * 3.0
    poisoned.loc[later & (poisoned["ticker"] == poisoned["ticker"].iloc[0]), "volume"] = np.nan
    base = score(lv, upto, day, explain_horizon=20)
    again = score(lv, poisoned, day, explain_horizon=20)
    assert base.as_of == day and len(base.frame) == prices["ticker"].nunique()
    _assert_same(base, again)
    assert base.frame["date"].eq(day).all()
    assert (
        np.isfinite(base.frame[["pred_h5", "pred_h20", "lo80_h20", "hi95_h20", "confidence_h20"]]).all().all()
    )
    # and the default as-of date is the latest date of the prices given
    assert score(lv, upto).as_of == day


def test_short_history_and_missing_rows_are_reported_not_scored(lv, prices) -> None:
    tickers = sorted(prices["ticker"].unique())
    young, gone = tickers[0], tickers[1]
    day = prices["date"].max()
    p = prices[(prices["ticker"] != young) | (prices["date"] > prices["date"].unique()[-31])]
    p = p[(p["ticker"] != gone) | (p["date"] < day)].reset_index(drop=True)
    r = score(lv, p)
    assert r.skipped[ALL][young] == "30 trading days of history < scoring.min_history_days=60"
    assert r.skipped[ALL][gone].startswith(f"no row on {day.date()}")
    assert young not in set(r.frame["ticker"]) and gone not in set(r.frame["ticker"])
    assert len(r.frame) == len(tickers) - 2
    # with a lower bar the young ticker is scored
    low = score(lv, p, min_history_days=25)
    assert young in set(low.frame["ticker"]) and young not in low.skipped[ALL]


def test_sequence_member_leaves_out_a_ticker_shorter_than_its_window(lv, prices) -> None:
    tickers = sorted(prices["ticker"].unique())
    young = tickers[2]
    dates = prices["date"].unique()
    p = prices[(prices["ticker"] != young) | (prices["date"] > dates[-6])].reset_index(drop=True)
    frame, skipped = prepare_frame(lv, p, dates[-1], min_history_days=3)
    assert young not in skipped
    preds, left_out = predict_member(lv, "lstm", frame, dates[-1])
    assert left_out == {young: "5 rows of history < the sequence window (10)"}
    assert young not in set(preds["ticker"]) and len(preds) == len(tickers) - 1
    trees, none_left = predict_member(lv, "xgboost", frame, dates[-1])
    assert none_left == {} and young in set(trees["ticker"])


def test_a_member_that_fails_to_load_is_degraded_and_left_out(
    tiny_version, lv, prices, tmp_path: Path
) -> None:
    registry, version, _ = tiny_version
    root = tmp_path / "registry"
    shutil.copytree(registry.root, root)
    victim = root / "versions" / version / "models" / "random_forest" / "random_forest_h20.skops"
    victim.write_bytes(victim.read_bytes()[:-7] + b"damaged")
    damaged = load_version(ModelRegistry(root), version)
    assert "random_forest" not in damaged.models
    assert damaged.degraded["random_forest"].startswith("failed to load:")
    r = score(damaged, prices)
    full = score(lv, prices)
    assert r.degraded == damaged.degraded and "random_forest" not in r.members
    assert not any(c.startswith("random_forest_") for c in r.frame.columns)
    assert (r.frame["n_models_h20"] == full.frame["n_models_h20"] - 1).all()
    # the others renormalise: a different forecast, never a stand-in for the missing member (at a
    # horizon where it has weight: the ensemble's member gate may have given it none at another;
    # compared exactly, as a calibration fitted on no validation skill maps scores to nearly one value)
    h = max(lv.ensemble.horizons, key=lambda k: lv.ensemble.weights(k)["random_forest"])
    assert lv.ensemble.weights(h)["random_forest"] > 0
    assert not np.array_equal(r.frame[f"pred_h{h}"].to_numpy(), full.frame[f"pred_h{h}"].to_numpy())


def test_one_predict_call_per_member(lv, prices, monkeypatch) -> None:
    calls: dict[str, int] = {}
    for name, model in lv.models.items():
        orig = model.predict

        def counted(frame, _orig=orig, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _orig(frame, **kwargs)

        monkeypatch.setattr(model, "predict", counted)
    r = score(lv, prices)
    assert calls == dict.fromkeys(lv.models, 1) and len(r.frame) == prices["ticker"].nunique()


def test_no_prices_on_the_as_of_date_is_a_clear_error(lv, prices) -> None:
    with pytest.raises(ScoringError, match="no prices dated 2001-01-01"):
        score(lv, prices, "2001-01-01")


def test_stale_prophet_tickers_counts_trading_dates() -> None:
    dates = pd.bdate_range("2024-01-01", periods=30)
    fitted = {"A": dates[29 - 5], "B": dates[29 - 6], "C": dates[0], "D": dates[29]}
    stale = stale_prophet_tickers(fitted, dates, dates[29], every_days=5)
    assert stale == {"B": dates[23], "C": dates[0]}
    assert stale_prophet_tickers(fitted, dates, dates[29], 5, tickers=["C"]) == {"C": dates[0]}
    assert set(stale_prophet_tickers(fitted, dates, dates[29], 0)) == {"A", "B", "C"}
    # dates after the as-of date do not age a model
    assert stale_prophet_tickers(fitted, dates, dates[24], 5) == {"C": dates[0]}


def test_prophet_refit_swaps_in_fresh_models_and_leaves_the_registry_alone(tiny_version, lv, prices) -> None:
    registry, version, _ = tiny_version
    manifest = registry.manifest(version)
    day = prices["date"].max()
    through = prophet_fitted_through(lv.models["prophet"])
    assert all(d < day for d in through.values())
    two = sorted(through)[:2]
    frame = prophet_refit_frame(lv, prices, day, two)
    assert set(frame["ticker"]) == set(two) and frame["date"].max() == day
    assert frame["date"].nunique() == lv.settings.training.training_days
    assert "mkt_log_level" in frame.columns
    fresh = with_prophet(lv, refit_prophet(lv, frame))
    after = prophet_fitted_through(fresh.models["prophet"])
    assert {t: after[t] for t in two} == dict.fromkeys(two, day)
    assert {t: d for t, d in after.items() if t not in two} == {
        t: d for t, d in through.items() if t not in two
    }
    old = score(lv, prices).members["prophet"].set_index("ticker")
    new = score(fresh, prices).members["prophet"].set_index("ticker")
    rest = [t for t in old.index if t not in two]
    pd.testing.assert_frame_equal(old.loc[rest], new.loc[rest], check_exact=True)
    assert not np.allclose(old.loc[two, "pred_h20"], new.loc[two, "pred_h20"])
    # the loaded version in memory and the registry are untouched
    assert prophet_fitted_through(lv.models["prophet"]) == through
    assert registry.manifest(version) == manifest and registry.verify(version) == version


def test_per_ticker_walk_forward_refits_as_scoring_would_and_reads_no_later_price(
    tiny_version, lv, prices
) -> None:
    """The per-ticker member's forecasts of consecutive dates as scoring serves them: its models are
    refitted on a date once they are more than ``every_days`` dates stale (on the history up to that
    date only), a ticker whose refit fails keeps its older model and is tried again later, and with
    ``every_days`` 0 the stored fit forecasts every row."""
    model = lv.models["prophet"]
    days = pd.DatetimeIndex(np.sort(prices["date"].unique()))
    fitted = max(prophet_fitted_through(model).values())
    start = int(days.searchsorted(fitted)) + 1
    block = days[start : start + 30]
    frame = tiny_version[2].eval_frame  # what jobs.train's validation forecasts read
    rows = frame[frame["date"].isin(block)].reset_index(drop=True)
    assert rows["date"].nunique() == 30
    lost = sorted(model.tickers_)[0]  # its refits fail: the older model keeps forecasting it

    def fit(f: pd.DataFrame):
        return refit_prophet(lv, f[f["ticker"] != lost])

    p, refits, last = per_ticker_walk_forward(lv.settings, model, prices, rows, 12, fit)
    # stale on the 13th date after the fit (13 > 12 trading dates), then 13 dates after that refit
    assert [r["as_of"] for r in refits] == [block[12].date().isoformat(), block[25].date().isoformat()]
    assert [r["failed"] for r in refits] == [[lost], [lost]]
    assert [r["tickers"] for r in refits] == [len(model.tickers_) - 1] * 2
    after = prophet_fitted_through(last)  # the member as it stands after the last date
    assert after[lost] == prophet_fitted_through(model)[lost]
    assert {d for t, d in after.items() if t != lost} == {block[25]}
    key = ["date", "ticker"]
    p = p.sort_values(key).reset_index(drop=True)
    assert len(p) == len(rows) and p[key].equals(rows[key].sort_values(key).reset_index(drop=True))
    # each block forecast by a fit on the closes up to its first date (the lost ticker: the old fit)
    for lo, hi in ((0, 12), (12, 25), (25, 30)):
        on = rows[rows["date"].isin(block[lo:hi])]
        want = model.predict(on)
        if lo:
            frame_b = prophet_refit_frame(lv, prices, block[lo], sorted(model.tickers_))
            assert frame_b["date"].max() == block[lo]
            fresh = with_prophet(lv, fit(frame_b)).models["prophet"]
            want = fresh.predict(on)
        got = p[p["date"].isin(block[lo:hi])]
        pd.testing.assert_frame_equal(
            got.reset_index(drop=True), want.sort_values(key).reset_index(drop=True), rtol=1e-9
        )
    mid = rows[rows["date"] <= block[20]]
    old = model.predict(mid)
    assert not np.allclose(
        p[p["date"] <= block[20]].set_index(key).sort_index()["pred_h20"],
        old.set_index(key).sort_index()["pred_h20"],
    )
    # point in time: every price after block[20] poisoned changes none of the forecasts up to it
    bad = prices.copy()
    late = bad["date"] > block[20]
    bad.loc[late, ["open", "high", "low", "close"]] *= 10.0
    q, _, _ = per_ticker_walk_forward(lv.settings, model, bad, mid, 12, fit)
    pd.testing.assert_frame_equal(
        q.sort_values(key).reset_index(drop=True),
        p[p["date"] <= block[20]].reset_index(drop=True),
        rtol=1e-9,  # two runs of the same fit agree to ~1e-12, not always to the last bit
    )
    # 0: no refit, the stored fit's forecasts
    z, none, same = per_ticker_walk_forward(lv.settings, model, prices, rows, 0, fit)
    assert none == [] and same is model
    pd.testing.assert_frame_equal(z, model.predict(rows), check_exact=True)

    # a refit that raises: the older models keep forecasting, the refit is recorded and tried again
    def broken(f: pd.DataFrame):
        raise RuntimeError("cluster down")

    b, failed, kept = per_ticker_walk_forward(lv.settings, model, prices, rows, 12, broken)
    assert [r["as_of"] for r in failed] == [r["as_of"] for r in refits] and kept is model
    assert all("cluster down" in r["error"] and len(r["failed"]) == len(model.tickers_) for r in failed)
    pd.testing.assert_frame_equal(
        b.sort_values(key).reset_index(drop=True),
        model.predict(rows).sort_values(key).reset_index(drop=True),
        rtol=1e-9,  # predicted block by block, not in one call: equal to ~1e-15, not to the last bit
    )
