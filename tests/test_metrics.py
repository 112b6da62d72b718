"""IC / Rank IC per date, their summary and the scalar tuning metric (ensemble.backtest.metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

from ensemble.backtest.metrics import (
    SUMMARY_KEYS,
    daily_rank_ic,
    ic_by_date,
    ic_frame,
    ic_summary,
    rank_ic,
    rank_ic_by_date,
)

D = pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"])
NAN = np.nan


def _hand() -> pd.DataFrame:
    """Five dates: ties and a NaN prediction; a NaN target; one ticker only; a constant prediction;
    two usable tickers of four."""
    rows = [
        (D[0], "A", 1.0, 0.5), (D[0], "B", 2.0, 0.1), (D[0], "C", 2.0, 0.3), (D[0], "D", NAN, 9.0),
        (D[0], "E", 5.0, 0.2),
        (D[1], "A", 0.3, NAN), (D[1], "B", 0.1, 1.0), (D[1], "C", 0.2, 3.0), (D[1], "D", 0.4, 2.0),
        (D[2], "A", 1.0, 2.0),
        (D[3], "A", 7.0, 1.0), (D[3], "B", 7.0, 2.0), (D[3], "C", 7.0, 3.0),
        (D[4], "A", 1.0, 1.0), (D[4], "B", NAN, 2.0), (D[4], "C", 3.0, NAN), (D[4], "D", 2.0, 5.0),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["date", "ticker", "pred", "target"])


def _scipy_by_date(df: pd.DataFrame, corr, min_obs: int) -> pd.Series:
    out = {}
    for d, g in df.groupby("date"):
        g = g.dropna(subset=["pred", "target"])
        if len(g) >= min_obs and g["pred"].nunique() > 1 and g["target"].nunique() > 1:
            out[d] = corr(g["pred"], g["target"])[0]
    return pd.Series(out, dtype=float)


def test_rank_ic_and_ic_by_date_match_scipy_on_a_hand_example() -> None:
    df = _hand()
    ric = rank_ic_by_date(df, "pred", "target", min_obs=2)
    # D2 has one ticker, D3 a constant prediction: no IC; D4 keeps its two complete rows
    assert list(ric.index) == [D[0], D[1], D[4]]
    assert ric.name == "rank_ic"
    np.testing.assert_allclose(ric, _scipy_by_date(df, spearmanr, 2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ric[D[1]], 0.5, atol=1e-12)  # ranks (1,2,3) vs (1,3,2) over B, C, D
    ic = ic_by_date(df, "pred", "target", min_obs=2)
    assert ic.name == "ic"
    np.testing.assert_allclose(ic, _scipy_by_date(df, pearsonr, 2), rtol=0, atol=1e-12)
    # the minimum counts usable rows (both values finite): D0 has 4, D1 3, D4 2
    assert list(rank_ic_by_date(df, "pred", "target", min_obs=4).index) == [D[0]]


def test_rank_ic_is_the_mean_over_dates_and_zero_when_no_date_has_enough_tickers() -> None:
    df = _hand()
    expected = float(_scipy_by_date(df, spearmanr, 3).mean())  # D0 and D1
    got = rank_ic(df["date"].to_numpy(), df["pred"].to_numpy(), df["target"].to_numpy(), min_obs=3)
    assert got == pytest.approx(expected, abs=1e-12)
    # the default minimum (10 tickers) leaves no date: the documented neutral 0.0, never NaN
    assert rank_ic(df["date"].to_numpy(), df["pred"].to_numpy(), df["target"].to_numpy()) == 0.0
    assert rank_ic_by_date(df, "pred", "target").empty


def test_daily_rank_ic_of_arrays_is_the_hand_example_by_date() -> None:
    df = _hand()
    got = daily_rank_ic(df["date"].to_numpy(), df["pred"].to_numpy(), df["target"].to_numpy(), min_obs=2)
    assert list(got.index) == [D[0], D[1], D[4]]  # the dates without an IC left out
    np.testing.assert_allclose(got, _scipy_by_date(df, spearmanr, 2), rtol=0, atol=1e-12)
    assert daily_rank_ic(df["date"].to_numpy(), df["pred"].to_numpy(), df["target"].to_numpy()).empty


def test_row_order_does_not_matter_and_a_random_panel_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    n = 600
    df = pd.DataFrame(
        {
            "date": pd.bdate_range("2024-01-01", periods=40)[rng.integers(0, 40, n)],
            "ticker": [f"T{i}" for i in range(n)],
            "pred": rng.normal(size=n).round(1),  # rounded: ties
            "target": rng.normal(size=n),
        }
    )
    df.loc[rng.random(n) < 0.1, "pred"] = NAN
    df.loc[rng.random(n) < 0.1, "target"] = NAN
    ric = rank_ic_by_date(df, "pred", "target", min_obs=5)
    np.testing.assert_allclose(ric, _scipy_by_date(df, spearmanr, 5), rtol=0, atol=1e-12)
    shuffled = df.sample(frac=1.0, random_state=1)
    pd.testing.assert_series_equal(rank_ic_by_date(shuffled, "pred", "target", min_obs=5), ric, atol=1e-14)


def test_ic_frame_covers_every_date_and_column_with_a_row_mask_and_an_array_target() -> None:
    df = _hand().assign(neg=lambda f: -f["pred"])
    y = df["target"].to_numpy()
    rows = (df["date"] != D[0]).to_numpy()
    table = ic_frame(df, ["pred", "neg"], y, rows=rows, min_obs=2)
    assert list(table.index) == list(D[1:]) and list(table.columns) == ["pred", "neg"]
    ref = rank_ic_by_date(df[rows], "pred", "target", min_obs=2)
    pd.testing.assert_series_equal(table["pred"].dropna(), ref, check_names=False)
    np.testing.assert_allclose(table["neg"].dropna(), -ref)
    assert table.loc[[D[2], D[3]]].isna().all().all()
    with pytest.raises(ValueError, match="rows has shape"):
        ic_frame(df, ["pred"], "target", rows=rows[:3])
    with pytest.raises(ValueError, match="min_obs must be >= 2"):
        rank_ic_by_date(df, "pred", "target", min_obs=1)


def test_ic_summary_has_one_key_set_for_a_series_and_a_table() -> None:
    ic = pd.Series([0.1, 0.3, -0.1, NAN])
    s = ic_summary(ic)
    assert tuple(s) == SUMMARY_KEYS
    assert s["ic_mean"] == pytest.approx(0.1)
    assert s["ic_std"] == pytest.approx(0.2)
    assert s["icir"] == pytest.approx(0.5)
    assert s["ic_t"] == pytest.approx(0.5 * np.sqrt(3))
    assert s["ic_hit"] == pytest.approx(2 / 3)
    assert s["ic_dates"] == 3 and isinstance(s["ic_dates"], int)
    table = ic_summary(pd.DataFrame({"a": ic, "b": [NAN, 0.2, NAN, NAN]}))
    assert list(table.columns) == list(SUMMARY_KEYS)
    np.testing.assert_allclose(table.loc["a"].to_numpy(dtype=float), [s[k] for k in SUMMARY_KEYS])
    # one date: a mean and a hit rate, no spread; no date: nothing but the count
    one = table.loc["b"]
    assert one["ic_mean"] == pytest.approx(0.2) and one["ic_hit"] == 1.0 and one["ic_dates"] == 1
    assert np.isnan(one[["ic_std", "icir", "ic_t"]].to_numpy(dtype=float)).all()
    empty = ic_summary(pd.Series([], dtype=float))
    assert empty["ic_dates"] == 0 and all(np.isnan(empty[k]) for k in SUMMARY_KEYS[:-1])
