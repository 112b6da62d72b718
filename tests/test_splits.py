from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble.backtest.splits import purge_labels, stopping_split, train_valid_split, window
from ensemble.features.targets import forward_log_returns


def _frame(n_tickers: int = 3, n_days: int = 40) -> pd.DataFrame:
    dates = pd.bdate_range("2024-01-01", periods=n_days)
    rows = [
        (d, f"T{i}", 100.0 * (1.01 + 0.001 * i) ** k) for i in range(n_tickers) for k, d in enumerate(dates)
    ]
    prices = pd.DataFrame(rows, columns=["date", "ticker", "close"])
    return pd.concat([prices, forward_log_returns(prices, [1, 5])], axis=1)


def test_split_takes_the_latest_dates_for_validation() -> None:
    f = _frame(n_days=100)
    s = train_valid_split(f["date"], training_days=60, valid_fraction=0.2)
    dates = pd.DatetimeIndex(sorted(f["date"].unique()))
    assert (s.valid_days, s.train_days) == (20, 60)
    assert s.valid_end == dates[-1] and s.valid_start == dates[80] and s.train_end == dates[79]
    assert s.train_start == dates[20]
    short = train_valid_split(f["date"], training_days=1000, valid_fraction=0.2)
    assert short.train_days == 80 and short.train_start == dates[0]
    with pytest.raises(ValueError, match="need more history"):
        train_valid_split(f["date"][:2], training_days=10, valid_fraction=0.4)


def test_purged_labels_never_look_past_the_cutoff() -> None:
    f = _frame()
    end = pd.Timestamp(sorted(f["date"].unique())[29])
    tr = window(f, None, end)
    before = f[f["date"] <= end].reset_index(drop=True)
    assert tr["date"].max() == end
    for h in (1, 5):
        col = tr[f"target_h{h}"]
        last = tr.groupby("ticker")["date"].transform(lambda d: d.rank(ascending=False, method="first"))
        # the last h rows of each ticker lose their label; every other label is kept unchanged
        assert col[last <= h].isna().all()
        kept = last > h
        np.testing.assert_array_equal(col[kept].to_numpy(), before.loc[kept, f"target_h{h}"].to_numpy())
    # poisoning the future does not move any purged label
    g = f.copy()
    g.loc[g["date"] > end, "close"] *= 10
    g[["target_h1", "target_h5"]] = forward_log_returns(g, [1, 5]).to_numpy()
    pd.testing.assert_frame_equal(purge_labels(g[g["date"] <= end].reset_index(drop=True), end).drop(columns="close"),
                                  tr.drop(columns="close"), check_exact=True)  # fmt: skip


def test_the_stopping_rows_are_the_training_tail_and_no_fitting_label_reaches_them() -> None:
    f = _frame(n_days=60)
    dates = pd.DatetimeIndex(sorted(f["date"].unique()))
    train = window(f, None, dates[49])  # a training window of 50 dates, purged at its end
    fit, stop = stopping_split(train, 0.2)
    # the last 10 training dates stop; the 40 before them fit; nothing after the window is read
    assert sorted(stop["date"].unique()) == list(dates[40:50])
    assert sorted(fit["date"].unique()) == list(dates[:40])
    pd.testing.assert_frame_equal(stop, train[train["date"] >= dates[40]].reset_index(drop=True))
    for h in (1, 5):
        col = f"target_h{h}"
        # by hand: a fitting row's h-day label is kept iff its realisation date is a fitting date
        known = fit["date"].map({d: i for i, d in enumerate(dates)}) + h <= 39
        assert fit.loc[~known, col].isna().all() and fit.loc[known, col].notna().all()
        same = train.loc[train["date"] <= dates[39]].reset_index(drop=True)
        np.testing.assert_array_equal(fit.loc[known, col].to_numpy(), same.loc[known, col].to_numpy())
        # the stopping rows keep the window's own purge: labelled on their first 10 - h dates only
        assert sorted(stop.dropna(subset=[col])["date"].unique()) == list(dates[40 : 50 - h])
    # poisoning every price from the first stopping date on changes no fitting row
    g = f.copy()
    g.loc[g["date"] >= dates[40], "close"] *= 10
    g[["target_h1", "target_h5"]] = forward_log_returns(g, [1, 5]).to_numpy()
    pd.testing.assert_frame_equal(stopping_split(window(g, None, dates[49]), 0.2)[0], fit, check_exact=True)
    for bad in (0.0, 1.0, 0.99):
        with pytest.raises(ValueError, match="stopping_split"):
            stopping_split(train, bad)


@pytest.mark.parametrize("refit", [True, False])
def test_each_member_gets_its_rows(refit: bool) -> None:
    """``fit_rows``: the members that stop early (the boosters, the sequence models) fit on the rows
    before the tail and stop on the tail, and with ``refit`` are then fitted again on the whole
    training window; the forest and Prophet fit the whole window, no stopping."""
    from ensemble.catalog import MODEL_NAMES
    from ensemble.models import get_model_class
    from ensemble.training import fit_rows

    whole, fit, stop = (pd.DataFrame({"date": [i]}) for i in range(3))
    rows = {name: fit_rows(get_model_class(name), whole, fit, stop, refit) for name in MODEL_NAMES}
    for name in ("xgboost", "lightgbm", "lstm", "transformer"):
        assert rows[name].train is fit and rows[name].valid is stop
        assert rows[name].refit_on is (whole if refit else None)
    for name in ("random_forest", "prophet"):
        assert rows[name].train is whole and rows[name].valid is None and rows[name].refit_on is None


def test_which_members_refit() -> None:
    """``training.refit_after_stopping``: the boosters by default, none without a stopping tail, and a
    model that cannot refit (it does not stop early) or an unknown one is refused, naming the setting."""
    from ensemble.config import load_settings
    from ensemble.training import refit_members

    def members(**training: object) -> frozenset[str]:
        return refit_members(load_settings(overrides={"training": training}))

    assert members() == {"xgboost", "lightgbm"}
    assert members(refit_after_stopping=["lstm", "xgboost"]) == {"lstm", "xgboost"}
    assert members(early_stopping_fraction=0.0) == frozenset()
    assert members(refit_after_stopping=[]) == frozenset()
    with pytest.raises(ValueError, match=r"training.refit_after_stopping: \['random_forest'\] cannot refit"):
        members(refit_after_stopping=["random_forest"])
    with pytest.raises(ValueError, match="training.refit_after_stopping has unknown models"):
        members(refit_after_stopping=["arima"])


def test_which_members_are_tuned() -> None:
    """``training.tuned_models``: the forest by default, any tree model when named, none when empty;
    a model that declares no search space, or an unknown one, is refused, naming the setting."""
    from ensemble.config import load_settings
    from ensemble.training import tuned_members

    def tuned(**training: object) -> frozenset[str]:
        return tuned_members(load_settings(overrides={"training": training}))

    assert tuned() == {"random_forest"}
    assert tuned(tuned_models=["xgboost", "lightgbm"]) == {"xgboost", "lightgbm"}
    assert tuned(tuned_models=[]) == frozenset()
    with pytest.raises(ValueError, match=r"training.tuned_models: \['prophet'\] cannot be tuned"):
        tuned(tuned_models=["prophet", "xgboost"])
    with pytest.raises(ValueError, match="training.tuned_models has unknown models"):
        tuned(tuned_models=["arima"])
