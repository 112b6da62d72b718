from __future__ import annotations

import numpy as np
import pandas as pd

from ensemble.backtest.metrics import forecast_metrics
from ensemble.combine import weighted_mean


def _pred(values: list[float], order: list[int] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(
        {"date": pd.to_datetime(["2024-01-02"] * 3), "ticker": ["A", "B", "C"], "pred_h5": values}
    )
    return df.iloc[order].reset_index(drop=True) if order else df


def test_weighted_mean_renormalises_over_models_with_a_forecast() -> None:
    a = _pred([1.0, 2.0, np.nan])
    b = _pred([3.0, np.nan, np.nan], order=[2, 1, 0])  # other row order: aligned on keys
    out = weighted_mean(
        {"a": a, "b": b, "zero": _pred([9.0, 9.0, 9.0])}, {"a": 1.0, "b": 3.0, "zero": 0.0}, [5]
    )
    np.testing.assert_allclose(out["pred_h5"].to_numpy()[:2], [(1 * 1 + 3 * 3) / 4, 2.0])
    assert np.isnan(out["pred_h5"].iloc[2])  # nobody covers C: no invented number
    assert out["n_models_h5"].tolist() == [2, 1, 0]


def test_forecast_metrics_sign_follows_the_ranking() -> None:
    dates = pd.bdate_range("2024-01-01", periods=30)
    rng = np.random.default_rng(0)
    rows = [(d, f"T{i}", float(rng.normal())) for d in dates for i in range(20)]
    t = pd.DataFrame(rows, columns=["date", "ticker", "target_h5"])
    good = t.rename(columns={"target_h5": "pred_h5"})
    bad = good.assign(pred_h5=-good["pred_h5"])
    assert forecast_metrics(good, t, [5])["rank_ic_h5"] == 1.0
    assert forecast_metrics(bad, t, [5], prefix="valid_")["valid_rank_ic_h5"] == -1.0


def test_a_row_missing_from_the_first_model_is_combined_from_the_models_that_forecast_it() -> None:
    a = _pred([1.0, 2.0, 5.0]).iloc[[0, 2]].reset_index(drop=True)  # A and C: no forecast for B
    b = _pred([3.0, 4.0, np.nan], order=[1, 0, 2])  # B, A, C
    c = _pred([7.0, 6.0, 9.0]).iloc[[1]].reset_index(drop=True)  # B only
    out = weighted_mean({"a": a, "b": b, "c": c}, {"a": 1.0, "b": 3.0, "c": 2.0}, [5])
    # the first model's rows in its order, then the row only later models forecast
    assert list(zip(out["ticker"], out["date"], strict=True)) == [
        ("A", pd.Timestamp("2024-01-02")),
        ("C", pd.Timestamp("2024-01-02")),
        ("B", pd.Timestamp("2024-01-02")),
    ]
    np.testing.assert_allclose(out["pred_h5"], [(1 * 1 + 3 * 3) / 4, 5.0, (3 * 4 + 2 * 6) / 5])
    assert out["n_models_h5"].tolist() == [2, 1, 2]
