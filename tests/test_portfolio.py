"""The portfolio simulator (ensemble.backtest.portfolio) against hand-computed books: timing (t's
score earns t+1's return), drift, turnover, costs, rebalancing, and the empyrical statistics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ensemble.backtest.portfolio import daily_returns, equal_weight, long_short

D = pd.bdate_range("2024-01-01", periods=5)  # d1..d5
C = 10 / 1e4  # 10 bps


def _two_tickers() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (simple) and scores of tickers A and B over d1..d5.
    Scores: A above B on d1, d2; B above A on d3, d4, d5."""
    ret = {"A": [0.00, 0.02, -0.01, 0.04, 0.01], "B": [0.00, -0.01, 0.03, 0.00, 0.02]}
    score = {"A": [2.0, 2.0, 1.0, 1.0, 1.0], "B": [1.0, 1.0, 2.0, 2.0, 2.0]}
    returns = pd.DataFrame(
        [(d, t, ret[t][i]) for i, d in enumerate(D) for t in "AB"], columns=["date", "ticker", "ret_1d"]
    )
    scores = pd.DataFrame(
        [(d, t, score[t][i]) for i, d in enumerate(D) for t in "AB"], columns=["date", "ticker", "s"]
    )
    return scores, returns


def test_hand_computed_two_ticker_book_daily_rebalance():
    scores, returns = _two_tickers()
    res = long_short(scores, returns, score_col="s", top_k=1, hold=1, cost_bps=10)
    # d1: nothing held yet -> gross 0; trade to (A +0.5, B -0.5): turnover |0.5| + |-0.5| = 1
    # d2: gross = 0.5 x 0.02 + (-0.5) x (-0.01) = 0.015
    #     drifted: A 0.5 x 1.02 / 1.015 = 0.51/1.015, B -0.5 x 0.99 / 1.015 = -0.495/1.015
    #     back to (0.5, -0.5): (0.51 - 0.5075)/1.015 + (0.5075 - 0.495)/1.015 = 0.015/1.015
    # d3: gross = 0.5 x (-0.01) - 0.5 x 0.03 = -0.02
    #     drifted: A 0.495/0.98, B -0.515/0.98; flip to (A -0.5, B +0.5):
    #     (0.495 + 0.49)/0.98 + (0.515 + 0.49)/0.98 = 1.99/0.98
    # d4: gross = -0.5 x 0.04 + 0.5 x 0.00 = -0.02
    #     drifted: A -0.52/0.98, B 0.5/0.98; back to (-0.5, 0.5): 0.03/0.98 + 0.01/0.98 = 0.04/0.98
    # d5: gross = -0.5 x 0.01 + 0.5 x 0.02 = 0.005; the last date: no trade
    gross = [0.0, 0.015, -0.02, -0.02, 0.005]
    turnover = [1.0, 0.015 / 1.015, 1.99 / 0.98, 0.04 / 0.98, 0.0]
    net = [g - C * t for g, t in zip(gross, turnover, strict=True)]
    assert list(res.returns.index) == list(D)
    np.testing.assert_allclose(res.gross.to_numpy(), gross, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.turnover.to_numpy(), turnover, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.cost.to_numpy(), [C * t for t in turnover], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.returns.to_numpy(), net, rtol=0, atol=1e-15)
    # the book after each close: d4 traded back to (-0.5, 0.5); d5 drifted, not traded:
    # A -0.5 x 1.01 / 1.005, B 0.5 x 1.02 / 1.005
    assert res.weights is not None
    np.testing.assert_allclose(res.weights.loc[D[3]].to_numpy(), [-0.5, 0.5])
    np.testing.assert_allclose(res.weights.loc[D[4]].to_numpy(), [-0.505 / 1.005, 0.51 / 1.005])

    # statistics on the net series, by hand (252 periods a year)
    r = np.array(net)
    wealth = np.cumprod(1 + r)  # 0.999, 1.01397.., 0.99163.., 0.97176.., 0.97662..
    mean, std = r.mean(), math.sqrt(((r - r.mean()) ** 2).sum() / 4)  # sample std, ddof 1
    s = res.stats()
    assert s["ann_return"] == pytest.approx(wealth[-1] ** (252 / 5) - 1, rel=1e-12)
    assert s["ann_vol"] == pytest.approx(std * math.sqrt(252), rel=1e-12)
    assert s["sharpe"] == pytest.approx(mean / std * math.sqrt(252), rel=1e-12)
    # peak after d2 (wealth 0.999 x 1.014985..), trough after d4
    assert s["max_drawdown"] == pytest.approx(wealth[3] / wealth[1] - 1, rel=1e-12)
    assert s["max_drawdown"] == pytest.approx(0.97176 / 1.01397 - 1, abs=2e-5)
    assert s["turnover"] == pytest.approx(sum(turnover) / 5, rel=1e-12)
    assert s["hit_rate"] == pytest.approx(2 / 5)  # d2 and d5 are up
    assert s["total_return"] == pytest.approx(wealth[-1] - 1, rel=1e-12)
    assert s["days"] == 5
    np.testing.assert_allclose(res.equity().to_numpy(), wealth - 1, rtol=1e-12)


def test_hand_computed_two_ticker_book_hold_two_days():
    scores, returns = _two_tickers()
    res = long_short(scores, returns, score_col="s", top_k=1, hold=2, cost_bps=10)
    # trades on d1, d3 (d5 is the last date: none)
    # d1: turnover 1 as before
    # d2: gross 0.015, weights drift to (0.51/1.015, -0.495/1.015), no trade
    # d3: gross = (0.51 x (-0.01) + (-0.495) x 0.03) / 1.015 = -0.01995/1.015
    #     1 + gross = 0.99505/1.015; drifted: A 0.51 x 0.99 / 0.99505 = 0.5049/0.99505,
    #     B -0.495 x 1.03 / 0.99505 = -0.50985/0.99505; to (-0.5, 0.5), with 0.5 = 0.497525/0.99505:
    #     (0.5049 + 0.497525)/0.99505 + (0.50985 + 0.497525)/0.99505 = 2.0098/0.99505
    # d4: gross -0.02 (book (-0.5, 0.5)); no trade; drifted (-0.52/0.98, 0.5/0.98)
    # d5: gross = (-0.52 x 0.01 + 0.5 x 0.02)/0.98 = 0.0048/0.98
    gross = [0.0, 0.015, -0.01995 / 1.015, -0.02, 0.0048 / 0.98]
    turnover = [1.0, 0.0, 2.0098 / 0.99505, 0.0, 0.0]
    np.testing.assert_allclose(res.gross.to_numpy(), gross, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.turnover.to_numpy(), turnover, rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        res.returns.to_numpy(), [g - C * t for g, t in zip(gross, turnover, strict=True)], rtol=0, atol=1e-15
    )


def test_equal_weight_hand_computed():
    _, returns = _two_tickers()
    res = equal_weight(returns, cost_bps=10)
    # d1: buy (0.5, 0.5): turnover 1; d2: gross (0.02 - 0.01)/2 = 0.005, drifted (0.51, 0.495)/1.005,
    # back to halves: (0.51 - 0.5025 + 0.5025 - 0.495)/1.005 = 0.015/1.005
    assert res.gross.iloc[1] == pytest.approx(0.005, abs=1e-15)
    np.testing.assert_allclose(res.turnover.to_numpy()[:2], [1.0, 0.015 / 1.005], atol=1e-15)
    assert res.turnover.iloc[-1] == 0.0  # no trade on the last date
    np.testing.assert_allclose(res.gross.to_numpy()[2:], [0.01, 0.02, 0.015], atol=1e-15)


def test_costs_reduce_returns_by_exactly_cost_times_turnover():
    scores, returns = _random(seed=1)
    free = long_short(scores, returns, score_col="s", quantile=0.1, cost_bps=0)
    paid = long_short(scores, returns, score_col="s", quantile=0.1, cost_bps=25)
    pd.testing.assert_series_equal(free.gross, paid.gross)
    pd.testing.assert_series_equal(free.turnover, paid.turnover)
    assert (paid.turnover > 0).sum() > 50
    np.testing.assert_allclose(free.returns - paid.returns, 25e-4 * paid.turnover, rtol=0, atol=1e-16)
    assert paid.stats()["ann_return"] < free.stats()["ann_return"]


def _random(seed: int, n_tickers: int = 40, n_days: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    """iid returns; the score ``s`` is noise."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2023-01-02", periods=n_days)
    tick = [f"T{i:02d}" for i in range(n_tickers)]
    idx = pd.MultiIndex.from_product([dates, tick], names=["date", "ticker"])
    returns = pd.DataFrame({"ret_1d": rng.normal(0, 0.02, len(idx))}, index=idx).reset_index()
    scores = pd.DataFrame({"s": rng.normal(size=len(idx))}, index=idx).reset_index()
    return scores, returns


def test_score_on_t_earns_the_return_of_t_plus_1():
    _, returns = _random(seed=2)
    wide = returns.pivot(index="date", columns="ticker", values="ret_1d")
    # a "score" that is tomorrow's return (impossible in practice): the simulator credits it on t+1,
    # so each day's gross return is exactly half the top-4 minus half the bottom-4 mean of that day
    cheat = wide.shift(-1).stack().rename("s").reset_index()
    res = long_short(cheat, returns, score_col="s", quantile=0.1, cost_bps=0)
    srt = np.sort(wide.to_numpy(), axis=1)
    spread = 0.5 * srt[:, -4:].mean(axis=1) - 0.5 * srt[:, :4].mean(axis=1)
    np.testing.assert_allclose(res.gross.to_numpy()[1:], spread[1:], rtol=0, atol=1e-15)
    assert res.gross.iloc[0] == 0.0
    # a score that is today's return (known at t's close) earns nothing special on iid returns:
    # were the same-day return credited, the mean gross would be ``spread.mean()`` (~ +3.5% a day)
    same_day = returns.rename(columns={"ret_1d": "s"})
    honest = long_short(same_day, returns, score_col="s", quantile=0.1, cost_bps=0)
    assert spread.mean() > 0.03
    assert abs(honest.gross.mean()) < 0.003
    # and it is exactly the t-book applied to t+1's returns
    w = honest.weights
    assert w is not None
    expected = (w.shift(1).fillna(0.0) * wide.loc[w.index, w.columns]).sum(axis=1)
    np.testing.assert_allclose(honest.gross.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-15)


def test_future_rows_change_nothing_before_the_cutoff():
    scores, returns = _random(seed=3)
    cut = scores["date"].unique()[60]
    res = long_short(scores, returns, score_col="s", quantile=0.1, cost_bps=10)
    s2, r2 = scores.copy(), returns.copy()
    s2.loc[s2["date"] > cut, "s"] = -s2.loc[s2["date"] > cut, "s"] * 3 + 1
    r2.loc[r2["date"] > cut, "ret_1d"] = np.nan
    poisoned = long_short(s2, r2, score_col="s", quantile=0.1, cost_bps=10)
    before = res.returns.index <= cut
    np.testing.assert_array_equal(res.returns[before].to_numpy(), poisoned.returns[before].to_numpy())
    np.testing.assert_array_equal(res.turnover[before].to_numpy(), poisoned.turnover[before].to_numpy())


def test_quantile_selection_and_weights():
    scores, returns = _random(seed=4, n_tickers=25, n_days=10)
    res = long_short(scores, returns, score_col="s", quantile=0.1, cost_bps=0)  # k = floor(2.5) = 2
    d0 = scores["date"].min()
    day = scores[scores["date"] == d0].sort_values("s")
    w = res.weights.loc[d0] if res.weights is not None else None
    assert w is not None
    np.testing.assert_allclose(w[day["ticker"].iloc[-2:]].to_numpy(), [0.25, 0.25])
    np.testing.assert_allclose(w[day["ticker"].iloc[:2]].to_numpy(), [-0.25, -0.25])
    assert (w != 0).sum() == 4 and w.sum() == pytest.approx(0.0) and w.abs().sum() == pytest.approx(1.0)
    # top_k overrides the quantile; a date with a NaN score ranks only the scored tickers
    s = scores.copy()
    s.loc[s.index[:20], "s"] = np.nan
    res5 = long_short(s, returns, score_col="s", top_k=5, cost_bps=0)
    assert res5.weights is not None
    assert (res5.weights.loc[d0] != 0).sum() == 0  # 5 scored tickers < 2 x 5: no trade on d0
    assert (res5.weights.iloc[1] != 0).sum() == 10


def test_daily_returns_are_simple_and_point_in_time():
    prices = pd.DataFrame(
        {
            "date": list(D[:3]) * 2,
            "ticker": ["A"] * 3 + ["B"] * 3,
            "close": [10.0, 11.0, 9.9, 5.0, 5.0, 5.5],
        }
    )
    r = daily_returns(prices)
    np.testing.assert_allclose(r["ret_1d"].to_numpy(), [np.nan, 0.1, -0.1, np.nan, 0.0, 0.1], atol=1e-15)


def test_bad_inputs_are_refused():
    scores, returns = _two_tickers()
    with pytest.raises(ValueError, match="not trading dates"):
        long_short(scores.assign(date=scores["date"] + pd.Timedelta(hours=1)), returns, score_col="s")
    with pytest.raises(ValueError, match="duplicate"):
        long_short(pd.concat([scores, scores]), returns, score_col="s")
    with pytest.raises(ValueError, match="hold"):
        long_short(scores, returns, score_col="s", hold=0)
    with pytest.raises(ValueError, match="lacks"):
        long_short(scores, returns, score_col="nope")
