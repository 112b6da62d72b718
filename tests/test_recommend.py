"""The recommendation engine (ensemble/recommend.py): risk metrics equal a hand computation on a known
price path, the action rule and its confidence gate, position sizes within their caps, price targets
and intervals as prices, the drivers named by the catalogue; and the backtest's realised return per
action (ensemble/backtest/evaluation.action_returns)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from ensemble.backtest.evaluation import action_returns
from ensemble.config import RecommendConfig, load_settings
from ensemble.recommend import (
    BUY,
    HOLD,
    SELL,
    decide_actions,
    position_sizes,
    recommend,
    risk_metrics,
    top_features,
)
from ensemble.scoring import ScoreResult, feature_descriptions

# a known path: A zig-zags with a crash, B trends, C is flat-ish; 30 trading dates, then poison after
DATES = pd.bdate_range("2024-01-01", periods=32)
A = [100, 102, 99, 104, 101, 97, 90, 92, 95, 94, 98, 103, 99, 96, 100, 105, 107, 104, 101, 108,
     110, 106, 103, 99, 102, 104, 100, 97, 101, 105]  # fmt: skip
B = [50 * 1.004**i * (1 + 0.01 * ((-1) ** i)) for i in range(30)]
C = [20 + 0.1 * ((i * 7) % 5) for i in range(30)]


def _prices() -> pd.DataFrame:
    rows = []
    for t, path in (("A", A), ("B", B), ("C", C)):
        for d, c in zip(DATES, [*path, path[-1] * 50, path[-1] / 50], strict=True):  # 2 poisoned days
            rows.append({"date": d, "ticker": t, "close": float(c)})
    return pd.DataFrame(rows)


def _quantile(xs: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), by hand."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


def test_risk_metrics_equal_a_hand_computation() -> None:
    window = 20
    as_of = DATES[29]
    got = risk_metrics(_prices(), as_of, window=window, level=0.95, min_obs=5).set_index("ticker")
    paths = {"A": A, "B": B, "C": C}
    closes = {t: p[-(window + 1) :] for t, p in paths.items()}
    logr = {t: [math.log(c[i] / c[i - 1]) for i in range(1, len(c))] for t, c in closes.items()}
    # the equal-weighted market: log of the mean simple return of the tickers that date
    mkt = [math.log(statistics.mean(math.exp(logr[t][i]) for t in paths)) for i in range(window)]
    for t in paths:
        r = logr[t]
        simple = [math.exp(x) - 1 for x in r]
        q = _quantile(simple, 0.05)
        peak, dd = closes[t][0], 0.0
        for c in closes[t]:
            peak = max(peak, c)
            dd = min(dd, c / peak - 1)
        mr, mm = statistics.mean(r), statistics.mean(mkt)
        cov = sum((x - mr) * (y - mm) for x, y in zip(r, mkt, strict=True)) / (window - 1)
        var_m = sum((y - mm) ** 2 for y in mkt) / (window - 1)
        row = got.loc[t]
        assert row["risk_obs"] == window
        assert row["ann_vol"] == pytest.approx(statistics.stdev(r) * math.sqrt(252), rel=1e-12)
        assert row["var"] == pytest.approx(-q, rel=1e-12)
        assert row["cvar"] == pytest.approx(-statistics.mean(x for x in simple if x <= q), rel=1e-12)
        assert row["max_drawdown"] == pytest.approx(dd, rel=1e-12)
        assert row["beta"] == pytest.approx(cov / var_m, rel=1e-10)
    assert got.loc["A", "max_drawdown"] == pytest.approx(97 / 110 - 1)  # 110 then 97 in the window
    assert got.loc["A", "var"] > 0 and got.loc["A", "cvar"] >= got.loc["A", "var"]
    # fewer returns than min_obs: NaN, never a number from too little data
    short = risk_metrics(_prices(), DATES[3], window=window, min_obs=5).set_index("ticker")
    assert short["ann_vol"].isna().all() and (short["risk_obs"] == 3).all()


def test_action_rule_thresholds_and_confidence_gate() -> None:
    cfg = RecommendConfig(buy_threshold=0.01, sell_threshold=-0.02, min_confidence=0.6)
    sig = np.array([0.01, 0.009, -0.02, -0.019, 0.05, -0.05, np.nan, 0.03])
    conf = np.array([0.6, 0.9, 0.6, 0.9, 0.59, 0.1, 0.9, np.nan])
    assert list(decide_actions(sig, conf, cfg)) == [BUY, HOLD, SELL, HOLD, HOLD, HOLD, HOLD, HOLD]
    with pytest.raises(ValueError, match="sell_threshold"):
        RecommendConfig(buy_threshold=0.0, sell_threshold=0.0)
    with pytest.raises(ValueError, match="max_weight"):
        RecommendConfig(max_weight=0.5, max_total=0.2)
    with pytest.raises(ValueError, match="recommend.horizon 7"):
        load_settings(overrides={"recommend": {"horizon": 7}})
    assert (
        load_settings().action_horizon() == 20
        and load_settings(overrides={"horizons": [4, 10]}).action_horizon() == 4
    )


def test_position_sizes_are_vol_targeted_and_capped() -> None:
    cfg = RecommendConfig(vol_target=0.02, max_weight=0.05, max_total=0.12)
    acts = np.array([BUY, BUY, BUY, HOLD, SELL, BUY], dtype=object)
    vol = np.array([0.80, 0.20, 0.10, 0.10, 0.10, np.nan])
    w = position_sizes(acts, vol, cfg)
    # raw 0.025, min(0.1, 0.05), min(0.2, 0.05); HOLD, SELL (long only) and unknown vol 0; gross 0.125 > 0.12
    np.testing.assert_allclose(w, np.array([0.025, 0.05, 0.05, 0, 0, 0]) * (0.12 / 0.125), rtol=1e-12)
    assert np.abs(w).sum() == pytest.approx(0.12) and (np.abs(w) <= cfg.max_weight).all()
    short = position_sizes(acts, vol, RecommendConfig(vol_target=0.02, max_weight=0.05, allow_short=True))
    np.testing.assert_allclose(short, [0.025, 0.05, 0.05, 0, -0.05, 0], rtol=1e-12)
    many = position_sizes(np.array([BUY] * 100, dtype=object), np.full(100, 0.05), RecommendConfig())
    assert np.abs(many).sum() == pytest.approx(1.0) and (many <= 0.05 + 1e-15).all()


def _result(as_of: pd.Timestamp) -> ScoreResult:
    frame = pd.DataFrame(
        {
            "date": as_of,
            "ticker": ["A", "B", "C"],
            "close": [A[29], B[29], C[29]],
            "ref_vol": 0.02,
            "pred_h5": [0.01, 0.0, -0.01],
            "excess_h5": [0.012, 0.001, -0.013],
            "lo80_h5": [-0.03, -0.04, -0.05],
            "hi80_h5": [0.05, 0.04, 0.03],
            "confidence_h5": [0.9, 0.9, 0.8],
            "n_models_h5": 3,
        }
    )
    contrib = pd.DataFrame(
        {
            "ticker": ["A", "A", "A", "A", "C"],
            "feature": ["rsi_14", "ret_250", "macd_12_26", "adx_14", "rsi_14"],
            "contribution": [0.001, -0.004, 0.002, 0.0001, -0.003],
        }
    )
    return ScoreResult(as_of, "v1", frame, {}, {"all": {}}, {}, contributions=contrib, explain_horizon=5)


def test_recommend_targets_intervals_actions_and_drivers() -> None:
    as_of = DATES[29]
    cfg = RecommendConfig(buy_threshold=0.01, sell_threshold=-0.01, min_confidence=0.5, risk_window=20)
    desc = feature_descriptions()
    recs = recommend(_result(as_of), _prices(), cfg, 5, descriptions=desc).set_index("ticker")
    assert recs.loc["A", "price_target_h5"] == pytest.approx(A[29] * math.exp(0.01), rel=1e-15)
    assert recs.loc["C", "price_lo80_h5"] == pytest.approx(C[29] * math.exp(-0.05), rel=1e-15)
    assert recs.loc["B", "price_hi80_h5"] == pytest.approx(B[29] * math.exp(0.04), rel=1e-15)
    assert recs["action"].to_dict() == {"A": BUY, "B": HOLD, "C": SELL}
    assert (
        recs.loc["B", "weight"] == 0 and recs.loc["C", "weight"] == 0 and 0 < recs.loc["A", "weight"] <= 0.05
    )
    risk = risk_metrics(_prices(), as_of, window=20).set_index("ticker")
    assert recs.loc["A", "ann_vol"] == risk.loc["A", "ann_vol"]  # the poisoned later days never read
    assert recs.loc["A", "risk_adjusted"] == pytest.approx(
        0.012 / (risk.loc["A", "ann_vol"] * math.sqrt(5 / 252))
    )
    assert recs.index[0] == "A" and recs.index[-1] == "C"  # best risk-adjusted first
    assert recs.loc["A", "top_features"] == (
        f"{desc['ret_250']} (-0.40%); {desc['macd_12_26']} (+0.20%); {desc['rsi_14']} (+0.10%)"
    )
    assert recs.loc["B", "top_features"] == ""
    assert top_features(None, desc).empty


def test_action_returns_split_realised_returns_by_action() -> None:
    cfg = RecommendConfig(buy_threshold=0.01, sell_threshold=-0.01, min_confidence=0.5)
    d = pd.bdate_range("2024-01-01", periods=2)
    f = pd.DataFrame(
        {
            "date": np.repeat(d, 3),
            "ticker": ["A", "B", "C"] * 2,
            "excess_h5": [0.02, 0.0, -0.02, 0.03, 0.02, -0.001],
            "pred_h5": 0.0,
            "confidence_h5": [0.9, 0.9, 0.9, 0.9, 0.4, 0.9],
        }
    )
    truth = f[["date", "ticker"]].assign(target_h5=[0.05, 0.01, -0.03, 0.02, 0.04, np.nan], target_h20=0.1)
    t = action_returns(f, truth, [5, 20], cfg, 5).set_index(["horizon", "action"])
    # h5: BUY = A d1 (0.05), A d2 (0.02); HOLD = B d1 (0.01), B d2 (0.04, gated); SELL = C d1 (-0.03)
    assert t.loc[(5, BUY), "mean_return"] == pytest.approx(0.035)
    assert t.loc[(5, HOLD), "mean_return"] == pytest.approx(0.025) and t.loc[(5, HOLD), "n_obs"] == 2
    assert t.loc[(5, SELL), "n_obs"] == 1  # C on d2 has no realised return
    m1, m2 = (0.05 + 0.01 - 0.03) / 3, (0.02 + 0.04) / 2
    assert t.loc[(5, BUY), "mean_excess"] == pytest.approx(((0.05 - m1) + (0.02 - m2)) / 2)
    assert t.loc[(5, SELL), "hit_rate"] == 0.0 and t.loc[(5, BUY), "share"] == pytest.approx(2 / 5)
    # h20: every target realised (C on d2 is a HOLD: its excess is above the sell threshold)
    assert t.loc[(20, SELL), "n_obs"] == 1 and t.loc[(20, BUY), "n_obs"] == 2
    assert t.loc[(20, BUY), "mean_excess"] == pytest.approx(0.0)
