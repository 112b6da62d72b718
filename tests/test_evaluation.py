"""Forecast evaluation on a test window (ensemble.backtest.evaluation) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ensemble.backtest.evaluation import (
    METRIC_KEYS,
    daily_coverage,
    daily_rank_ic,
    evaluate,
    metric_rows,
    rolling,
)

D1, D2, D3 = pd.to_datetime(["2024-03-01", "2024-03-04", "2024-03-05"])


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two scored dates of four tickers, plus rows that must be ignored: a NaN forecast, a ticker
    with no truth row, a date (D3) with no targets."""
    p = [0.01, 0.02, 0.03, 0.04, 0.04, 0.01, 0.02, 0.03]
    y = [0.01, 0.03, 0.02, 0.04, 0.02, -0.01, 0.00, 0.01]
    keys = [(d, t) for d in (D1, D2) for t in "ABCD"]
    preds = pd.DataFrame(
        [(d, t, v) for (d, t), v in zip(keys, p, strict=True)], columns=["date", "ticker", "pred_h5"]
    )
    truth = pd.DataFrame(
        [(d, t, v) for (d, t), v in zip(keys, y, strict=True)], columns=["date", "ticker", "target_h5"]
    )
    extra = pd.DataFrame({"date": [D1, D1, D3], "ticker": ["E", "F", "A"], "pred_h5": [np.nan, 0.5, 0.1]})
    preds = pd.concat([preds, extra], ignore_index=True)
    truth = pd.concat(
        [truth, pd.DataFrame({"date": [D1, D3], "ticker": ["E", "A"], "target_h5": [0.3, np.nan]})],
        ignore_index=True,
    )
    # intervals: +-0.015 (80%) and +-0.025 (95%) around the forecast
    for lvl, half in ((80, 0.015), (95, 0.025)):
        preds[f"lo{lvl}_h5"] = preds["pred_h5"] - half
        preds[f"hi{lvl}_h5"] = preds["pred_h5"] + half
    return preds, truth


def test_evaluate_hand_computed():
    preds, truth = _frames()
    m = evaluate(preds, truth, [5], (0.8, 0.95), min_obs=3)[5]
    assert set(METRIC_KEYS) <= set(m)
    # D1: ranks of pred 1,2,3,4 vs target 1,3,2,4: d^2 = 0+1+1+0 = 2, rho = 1 - 6 x 2 / (4 x 15) = 0.8
    #     Pearson: pred centred (-1.5,-.5,.5,1.5)/100, target centred (-1.5,.5,-.5,1.5)/100:
    #     (2.25 - .25 - .25 + 2.25) / sqrt(5 x 5) = 4/5 = 0.8
    # D2: pred (0.04, 0.01, 0.02, 0.03), target (0.02, -0.01, 0.00, 0.01) = pred - 0.02: both 1.0
    assert daily_rank_ic(preds, truth, 5, min_obs=3).loc[[D1, D2]].tolist() == pytest.approx([0.8, 1.0])
    assert m["rank_ic"] == pytest.approx(0.9)
    assert m["ic"] == pytest.approx(0.9)
    std = 0.2 / math.sqrt(2)  # sample std of (0.8, 1.0)
    assert m["icir"] == pytest.approx(0.9 / std)
    assert m["rank_ic_t"] == pytest.approx(0.9 / std * math.sqrt(2))
    assert m["rank_ic_hit"] == 1.0
    assert m["n_dates"] == 2 and m["n_obs"] == 8
    # directional accuracy on excess over the date's mean:
    # D1 pred excess signs (-,-,+,+), target excess (0.01,0.03,0.02,0.04) - 0.025: (-,+,-,+): 2 of 4
    # D2 pred excess (0.04,0.01,0.02,0.03) - 0.025: (+,-,-,+), target - 0.005: (+,-,-,+): 4 of 4
    assert m["directional_accuracy"] == pytest.approx(6 / 8)
    # RMSE: D1 errors (0, -.01, .01, 0), D2 errors all .02: (2e-4 + 16e-4) / 8 = 2.25e-4 -> 0.015
    assert m["rmse"] == pytest.approx(0.015)
    # zero forecast: D1 targets^2 (1+9+4+16)e-4, D2 (4+1+0+1)e-4: 36e-4 / 8 = 4.5e-4
    assert m["rmse_zero"] == pytest.approx(math.sqrt(4.5e-4))
    # |error| <= 0.015 on D1 only (4 of 8); <= 0.025 everywhere
    assert m["coverage80"] == pytest.approx(0.5)
    assert m["coverage95"] == pytest.approx(1.0)
    cov = daily_coverage(preds, truth, 5, 0.8)
    assert cov.name == "coverage80"
    assert cov.to_dict() == {D1: 1.0, D2: 0.0}


def test_evaluate_edges():
    preds, truth = _frames()
    # the default min_obs (10 tickers) leaves no date with an IC
    m = evaluate(preds, truth, [5])[5]
    assert math.isnan(m["rank_ic"]) and m["n_dates"] == 0 and m["n_obs"] == 8
    assert m["rmse"] == pytest.approx(0.015)  # pooled metrics do not need tickers per date
    # a zero forecast: no ranking, no direction, rmse == rmse_zero; no interval columns, no coverage
    zero = preds[["date", "ticker"]].assign(pred_h5=0.0)
    z = evaluate(zero, truth, [5], min_obs=3)[5]
    assert math.isnan(z["rank_ic"]) and math.isnan(z["directional_accuracy"])
    assert z["rmse"] == pytest.approx(z["rmse_zero"])
    assert "coverage80" not in z
    with pytest.raises(ValueError, match="pred_h20"):
        evaluate(preds, truth, [20])


def test_rolling_and_rows():
    s = pd.Series([1.0, np.nan, 3.0, 5.0], index=pd.bdate_range("2024-01-01", periods=4))
    r = rolling(s, window=2, min_periods=1)
    assert r.tolist() == [1.0, 1.0, 3.0, 4.0]
    rows = metric_rows("xgboost", {5: {"rank_ic": 0.1}, 20: {"rank_ic": 0.2}}, kind="member")
    assert rows == [
        {"model": "xgboost", "horizon": 5, "rank_ic": 0.1, "kind": "member"},
        {"model": "xgboost", "horizon": 20, "rank_ic": 0.2, "kind": "member"},
    ]
