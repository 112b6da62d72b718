"""The retraining gate's pure parts (ensemble/retrain.py): the walk-forward window's arithmetic, the
scoring of each window date on the prices up to it only, and the decision, including a production
version that has seen part of the window. The whole job, through the service, is in test_serving."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ensemble import retrain

DATES = pd.bdate_range("2024-01-01", periods=40)
TICKERS = [f"T{i}" for i in range(12)]


def _prices() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    r = rng.normal(0, 0.02, (len(TICKERS), len(DATES)))
    return pd.DataFrame({
        "date": np.tile(DATES, len(TICKERS)),
        "ticker": np.repeat(TICKERS, len(DATES)),
        "close": (100 * np.exp(np.cumsum(r, axis=1))).ravel(),
    })  # fmt: skip


def test_the_window_arithmetic() -> None:
    # 40 dates, window 10, horizon 5: the cutoff is date 24 (0-based); dates 25..34 have a 5-day
    # return realised by date 39
    cutoff = retrain.cutoff_for(DATES, window=10, horizon=5)
    assert cutoff == DATES[24]
    got = retrain.window_dates(DATES, cutoff, 10, 5)
    assert got == list(DATES[25:35])
    assert retrain.window_dates(DATES, DATES[30], 10, 5) == list(DATES[31:35])  # fewer are realised
    with pytest.raises(ValueError, match="cannot hold a window of 40"):
        retrain.cutoff_for(DATES, window=40, horizon=5)


def _fake_score(
    record: list[tuple[pd.Timestamp, pd.Timestamp]], skill: dict[str, float], prices: pd.DataFrame
):
    """scoring.score stand-in: forecasts = skill x the realised 5-day return + noise, and a record of
    the last price date each call was given."""
    truth = retrain.realised_forward_returns(prices, [5]).set_index(["date", "ticker"])["target_h5"]
    rng = np.random.default_rng(0)

    def score(lv: Any, upto: pd.DataFrame, day: pd.Timestamp) -> Any:
        record.append((day, upto["date"].max()))
        t = truth.xs(day, level="date").reindex(TICKERS).to_numpy()
        p = skill[lv.version] * np.nan_to_num(t) + rng.normal(0, 0.01, len(TICKERS))
        return SimpleNamespace(frame=pd.DataFrame({"ticker": TICKERS, "pred_h5": p}))

    return score


def _lv(version: str) -> Any:
    return SimpleNamespace(version=version, horizons=(5,))


def _gate(
    monkeypatch: pytest.MonkeyPatch, skill: dict[str, float], production_through: pd.Timestamp
) -> tuple[Any, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """The gate of candidate 'cand' against production 'prod' over a 10-date window (horizon 5),
    with forecasts of the given skill; and the (as-of date, last price date) of every scoring call."""
    prices = _prices()
    calls: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    monkeypatch.setattr(retrain, "score", _fake_score(calls, skill, prices))
    cutoff = retrain.cutoff_for(DATES, 10, 5)
    d = retrain.gate(_lv("cand"), _lv("prod"), prices, cutoff, 10, production_through=production_through)
    return d, calls


def test_each_date_is_scored_on_the_prices_up_to_it_and_the_better_version_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d, calls = _gate(monkeypatch, {"cand": 1.0, "prod": 0.0}, DATES[20])
    assert calls and all(last == day for day, last in calls)  # nothing after the as-of date is read
    assert {day for day, _ in calls} == set(DATES[25:35])
    assert d.promote and d.window["dates"] == 10 and d.candidate_metrics["rank_ic_h5"] > 0.9
    assert abs(d.production_metrics["rank_ic_h5"]) < 0.5
    # the worse candidate is kept out
    d, _ = _gate(monkeypatch, {"cand": 0.0, "prod": 1.0}, DATES[20])
    assert not d.promote and "does not beat" in d.reason


def test_production_that_saw_the_window_is_compared_on_the_dates_after_its_data_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d, calls = _gate(monkeypatch, {"cand": 1.0, "prod": 0.0}, DATES[28])
    assert d.window["first"] == str(DATES[29].date()) and d.window["dates"] == 6 and d.promote
    assert {day for day, _ in calls} == set(DATES[29:35])
    assert any("trained with data through" in n for n in d.notes)
    # production trained through the window's end: nothing unseen to compare on, no promotion
    d, calls = _gate(monkeypatch, {"cand": 1.0, "prod": 0.0}, DATES[39])
    assert not d.promote and d.reason.startswith("not compared: 0 window dates") and calls == []
    # no production yet: the candidate is promoted
    d = retrain.gate(_lv("cand"), None, _prices(), retrain.cutoff_for(DATES, 10, 5), 10)
    assert d.promote and d.production is None
