"""Monitoring (ensemble/monitor.py): the join of logged forecasts with realised returns on a
hand-computable example, the rolling accuracy table, drift flagged on exactly the shifted features of
a planted stream, forecast drift, and alerts from a planted accuracy drop."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ensemble.config import MonitoringConfig
from ensemble.features.targets import forward_log_returns
from ensemble.monitor import (
    Alert,
    accuracy_table,
    build_drift_reference,
    drift_table,
    evaluate_alerts,
    forecast_drift,
    join_realised,
    psi,
    rank_ic_series,
    validation_baselines,
)
from ensemble.predlog import normalise

DATES = pd.bdate_range("2024-01-01", periods=6)
CLOSES = {  # A, B, C on DATES[0..5]
    "A": [10.0, 11.0, 12.0, 11.5, 10.0, 12.0],
    "B": [20.0, 19.0, 18.0, 19.0, 21.0, 22.0],
    "C": [5.0, 5.5, 6.5, 6.0, 6.0, 5.5],
}


def _prices() -> pd.DataFrame:
    rows = [{"date": d, "ticker": t, "close": c[i]} for t, c in CLOSES.items() for i, d in enumerate(DATES)]
    return pd.DataFrame(rows)


def _row(day: int, ticker: str, ens: float, logged: str = "2024-02-01", lo: float = -0.5, hi: float = 0.5,
         xgb: float = math.nan, h: int = 2, version: str = "v1", arm: str = "A") -> dict:  # fmt: skip
    return {"logged_at": pd.Timestamp(logged, tz="UTC"), "as_of": DATES[day], "ticker": ticker, "horizon": h,
            "version": version, "arm": arm, "source": "score", "ensemble": ens, "xgboost": xgb,
            "lo80": lo, "hi80": hi}  # fmt: skip


def _hand_log() -> pd.DataFrame:
    r = []
    # day 0: same order as realised (A .18, B -.11, C .26)
    r += [_row(0, "A", 0.01, xgb=2), _row(0, "B", -0.02, xgb=1), _row(0, "C", 0.03, xgb=3)]
    # day 1: realised A .0445, B 0, C .0870 -> forecasts ranked the other way (Rank IC -1); excess signs
    # A+ B+ C- against realised A+ B- C+: 1 of 3; A's interval misses
    r += [_row(1, "A", 0.02, lo=0.3, hi=0.4, xgb=2), _row(1, "B", 0.05, xgb=1), _row(1, "C", -0.04, xgb=3)]
    # day 2: realised A -.18, B .15, C -.08 -> same order (+1); excess signs all agree (3 of 3); B misses
    r += [_row(2, "A", -0.03, xgb=1), _row(2, "B", 0.07, lo=0.3, hi=0.4, xgb=3), _row(2, "C", -0.01, xgb=2)]
    # day 3: realised A .0426, B .1466, C -.0870. Logged twice: the first (Rank IC +1) is superseded by
    # the later one, ranked the other way (-1); excess signs C+ A+ B- against A+ B+ C-: 1 of 3; C misses
    r += [_row(3, "A", 0.01, logged="2024-01-20"), _row(3, "B", 0.02, logged="2024-01-20"),
          _row(3, "C", -0.01, logged="2024-01-20")]  # fmt: skip
    r += [_row(3, "A", 0.02, xgb=2), _row(3, "B", -0.05, xgb=3), _row(3, "C", 0.06, lo=0.3, hi=0.4, xgb=1)]
    # days 4 and 5: the horizon has not passed yet
    r += [_row(4, "A", 0.01), _row(4, "B", 0.02), _row(4, "C", 0.03)]
    return normalise(pd.DataFrame(r))


def test_join_uses_the_training_target_and_only_forecasts_whose_horizon_passed() -> None:
    joined = join_realised(_hand_log(), _prices())
    assert sorted(joined["as_of"].unique()) == list(DATES[:4])  # day 4 needs day 6
    assert len(joined) == 12  # day 3 once: the latest logged
    got = joined.set_index(["as_of", "ticker"])["realised"]
    assert got[(DATES[0], "A")] == pytest.approx(math.log(12 / 10), abs=1e-15)
    assert got[(DATES[1], "B")] == pytest.approx(0.0, abs=1e-15)
    assert got[(DATES[2], "C")] == pytest.approx(math.log(6 / 6.5), abs=1e-15)
    assert got[(DATES[3], "B")] == pytest.approx(math.log(22 / 19), abs=1e-15)
    day3 = joined[joined["as_of"] == DATES[3]].set_index("ticker")["ensemble"]
    assert day3.to_dict() == {"A": 0.02, "B": -0.05, "C": 0.06}
    # as of day 3 the prices stop there: only days 0 and 1 are realised
    early = join_realised(_hand_log(), _prices(), as_of=DATES[3])
    assert sorted(early["as_of"].unique()) == list(DATES[:2])


def test_accuracy_table_on_the_hand_computed_example() -> None:
    joined = join_realised(_hand_log(), _prices())
    acc = accuracy_table(joined, window=3, min_tickers=3).set_index("model")
    assert set(acc.index) == {"ensemble", "xgboost"}
    e = acc.loc["ensemble"]
    assert (e["version"], e["arm"], e["horizon"]) == ("v1", "A", 2)
    assert (e["first"], e["last"], e["dates"], e["rows"]) == (DATES[1], DATES[3], 3, 9)
    assert e["rank_ic"] == pytest.approx((-1 + 1 - 1) / 3)  # days 1..3 (the window)
    assert e["rank_ic_dates"] == 3
    assert e["directional_accuracy"] == pytest.approx((1 + 3 + 1) / 9)
    assert e["coverage80"] == pytest.approx(6 / 9)
    x = acc.loc["xgboost"]  # the member ranks like the realised returns on every day
    assert x["rank_ic"] == pytest.approx(1.0) and np.isnan(x["coverage80"])
    whole = accuracy_table(joined, window=10, min_tickers=3).set_index("model")
    assert whole.loc["ensemble", "rank_ic"] == pytest.approx(0.0) and whole.loc["ensemble", "dates"] == 4
    series = rank_ic_series(joined, window=2, min_tickers=3)
    ens = series[series["model"] == "ensemble"]
    assert ens["rank_ic"].round(12).tolist() == [1.0, -1.0, 1.0, -1.0]
    assert ens["rolling_rank_ic"].round(12).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_a_planted_feature_shift_is_flagged_on_exactly_the_shifted_features() -> None:
    rng = np.random.default_rng(11)

    def stream(n: int, shifted: bool) -> pd.DataFrame:
        f = pd.DataFrame({f"f{i}": rng.normal(0, 1, n) for i in range(6)})
        f["flag"] = (rng.random(n) < (0.6 if shifted else 0.3)).astype(float)  # a 0/1 feature
        f["uniform"] = rng.random(n)
        f["heavy"] = rng.standard_t(3, n)
        if shifted:
            f["f1"] += 0.8  # a level shift
            f["f4"] *= 2.5  # a volatility shift
        f.loc[rng.random(n) < 0.05, "f2"] = np.nan  # missing values are left out, not drift
        return f

    train = stream(20_000, shifted=False)
    ref = build_drift_reference(train.assign(date=pd.Timestamp("2024-01-01")), list(train.columns))
    assert ref["features"]["flag"]["edges"] == [0.0, 1.0] and len(ref["features"]["f0"]["sample"]) == 1000
    recent = stream(3_000, shifted=True)
    d = drift_table(ref, recent).set_index("subject")
    assert set(d.index[d["drift"]]) == {"f1", "f4", "flag"}
    calm = d.drop(index=["f1", "f4", "flag"])
    assert (calm["psi"] < 0.05).all() and (calm["ks"] < 0.06).all()
    assert (d.loc[["f1", "flag"], "psi"] > 0.2).all() and d.loc["f4", "ks"] > 0.1
    assert d.loc["f2", "nan_recent"] == pytest.approx(0.05, abs=0.015)
    alerts = evaluate_alerts(MonitoringConfig(), drift=d.reset_index())
    assert {a.subject for a in alerts} == {"f1", "f4", "flag"} and {a.rule for a in alerts} <= {"psi", "ks"}
    # an unshifted stream: no drift at all
    assert not drift_table(ref, stream(3_000, shifted=False))["drift"].any()
    assert psi(ref["features"]["f0"], train["f0"]) < 1e-3


def test_forecast_drift_against_the_validation_forecasts_or_the_earlier_log() -> None:
    rng = np.random.default_rng(3)
    dates = pd.bdate_range("2024-01-01", periods=40)
    rows = []
    for i, d in enumerate(dates):
        scale = 0.01 if i < 30 else 0.03  # the forecasts spread out over the last 10 dates
        for t in range(50):
            rows.append({"logged_at": pd.Timestamp("2024-03-01", tz="UTC"), "as_of": d, "ticker": f"T{t}",
                         "horizon": 5, "version": "v1", "arm": "-", "source": "serve",
                         "ensemble": rng.normal(0, scale)})  # fmt: skip
    log = normalise(pd.DataFrame(rows))
    fd = forecast_drift(log, "v1", days=10)
    assert fd["baseline"].tolist() == ["earlier log"] and bool(fd["drift"].iloc[0])
    calm = forecast_drift(log[log["as_of"] < dates[30]], "v1", days=10)
    assert not calm["drift"].any()
    valid = pd.DataFrame({"pred_h5": rng.normal(0, 0.03, 5000)})
    ref = build_drift_reference(pd.DataFrame({"x": [0.0, 1.0]}), ["x"], forecasts=valid)
    fv = forecast_drift(log, "v1", days=10, reference=ref)
    assert fv["baseline"].tolist() == ["validation"] and not fv["drift"].any()
    # a horizon the validation forecasts never reached has no reference: the earlier log is used
    empty = build_drift_reference(
        pd.DataFrame({"x": [0.0, 1.0]}), ["x"], forecasts=valid.assign(pred_h5=np.nan)
    )
    assert empty["forecasts"] == {}
    assert forecast_drift(log, "v1", days=10, reference=empty)["baseline"].tolist() == ["earlier log"]
    alerts = evaluate_alerts(MonitoringConfig(), forecasts=fd)
    assert alerts and {a.subject for a in alerts} == {"v1/forecast_h5"}
    assert {a.rule for a in alerts} <= {"forecast_psi", "forecast_ks"}


def _stream_with_an_accuracy_drop() -> tuple[pd.DataFrame, pd.DataFrame, pd.DatetimeIndex]:
    """30 tickers x 140 dates of random-walk prices; 5-day forecasts logged every date: the ensemble's
    are informative until date 90 and noise after it; the lightgbm member's stay informative."""
    rng = np.random.default_rng(5)
    dates = pd.bdate_range("2023-01-02", periods=140)
    tickers = [f"T{i:02d}" for i in range(30)]
    r = rng.normal(0, 0.02, (len(tickers), len(dates)))
    close = 100 * np.exp(np.cumsum(r, axis=1))
    prices = pd.DataFrame(
        {
            "date": np.tile(dates, len(tickers)),
            "ticker": np.repeat(tickers, len(dates)),
            "close": close.ravel(),
        }
    )
    real = forward_log_returns(prices, [5])["target_h5"].to_numpy()
    noise = rng.normal(0, 0.04, len(prices))
    good = real + noise
    after = prices["date"] >= dates[90]
    ens = np.where(after, rng.normal(0, 0.04, len(prices)), good)
    log = pd.DataFrame({"logged_at": pd.Timestamp("2024-01-01", tz="UTC"), "as_of": prices["date"],
                        "ticker": prices["ticker"], "horizon": 5, "version": "v1", "arm": "A",
                        "source": "score", "ensemble": ens, "lightgbm": good + rng.normal(0, 0.01, len(prices))})  # fmt: skip
    return normalise(log), prices, dates


def test_a_planted_accuracy_drop_raises_the_alert() -> None:
    log, prices, dates = _stream_with_an_accuracy_drop()
    cfg = MonitoringConfig(rolling_window=30, min_rank_ic=0.05, max_rank_ic_drop=0.1)
    baselines = validation_baselines("v1", {"ensemble": {"valid_rank_ic_h5": 0.4}, "lightgbm": {}})
    assert baselines == {("v1", "ensemble", 5): 0.4}
    # a validation Rank IC over fewer than two non-overlapping h-day windows is no baseline
    counted = {
        "valid_rank_ic_h5": 0.4,
        "valid_ic_dates_h5": 10,
        "valid_rank_ic_h60": 0.2,
        "valid_ic_dates_h60": 119,
    }
    assert validation_baselines("v1", {"ensemble": counted}) == {("v1", "ensemble", 5): 0.4}
    assert validation_baselines("v1", {"ensemble": counted}, min_windows=1.0) == {
        ("v1", "ensemble", 5): 0.4,
        ("v1", "ensemble", 60): 0.2,
    }

    before = accuracy_table(join_realised(log, prices, as_of=dates[85]), cfg.rolling_window)
    assert before.set_index("model").loc["ensemble", "rank_ic"] > 0.3
    assert evaluate_alerts(cfg, before, baselines=baselines) == []

    after = accuracy_table(join_realised(log, prices), cfg.rolling_window)
    ens = after.set_index("model").loc["ensemble"]
    assert ens["first"] >= dates[90] and abs(ens["rank_ic"]) < 0.1 and ens["dates"] == 30
    alerts = evaluate_alerts(cfg, after, baselines=baselines)
    rules = {a.rule for a in alerts}
    assert {"rank_ic_low", "rank_ic_drop"} <= rules <= {"rank_ic_low", "rank_ic_drop", "direction_low"}
    assert {a.subject for a in alerts} == {"v1/A/h5/ensemble"}  # the member that stayed good: no alert
    drop = next(a for a in alerts if a.rule == "rank_ic_drop")
    assert drop == Alert("rank_ic_drop", "v1/A/h5/ensemble", float(ens["rank_ic"]), pytest.approx(0.3))
    assert "rank_ic_drop: v1/A/h5/ensemble" in str(drop)


def test_coverage_and_too_few_dates() -> None:
    acc = pd.DataFrame([{"version": "v", "arm": "A", "horizon": 5, "model": "ensemble", "dates": 10,
                         "rank_ic": 0.1, "rank_ic_dates": 10, "directional_accuracy": 0.6,
                         "coverage80": 0.6, "coverage95": 0.9}])  # fmt: skip
    alerts = evaluate_alerts(MonitoringConfig(coverage_tolerance=0.1), acc)
    assert [(a.rule, a.value, a.threshold) for a in alerts] == [("coverage80_low", 0.6, pytest.approx(0.7))]
    assert evaluate_alerts(MonitoringConfig(min_dates=11), acc) == []  # too few dates to judge


def test_the_monitoring_section_is_validated() -> None:
    from pydantic import ValidationError

    from ensemble.config import describe_validation_error, load_settings

    s = load_settings(overrides={"monitoring": {"table": "Pred_Log", "psi_threshold": 0.3}})
    assert s.monitoring.table == "pred_log" and s.monitoring.psi_threshold == 0.3 and s.monitoring.log
    for bad, where in (
        ({"flush_rows": 0}, "monitoring.flush_rows"),
        ({"table": "x; drop"}, "monitoring.table"),
        ({"ks_threshold": 1.5}, "monitoring.ks_threshold"),
        ({"psi_treshold": 0.2}, "did you mean 'psi_threshold'"),
    ):
        with pytest.raises(ValidationError) as exc:
            load_settings(overrides={"monitoring": bad})
        assert where in " ".join(describe_validation_error(exc.value))
