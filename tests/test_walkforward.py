"""Walk-forward folds: the purge, the embargo, back-to-back test windows, expanding vs rolling; and
one fold fitted through the one training path (test forecasts for its window only, point in time)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble.backtest.splits import window
from ensemble.backtest.walkforward import fit_fold, walk_forward_folds
from ensemble.features.targets import forward_log_returns, realisation_dates

H = (5, 20)


def _frame(n_tickers: int = 3, n_days: int = 400) -> pd.DataFrame:
    dates = pd.bdate_range("2021-01-04", periods=n_days)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_tickers):
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n_days)))
        rows.append(pd.DataFrame({"date": dates, "ticker": f"T{i}", "close": close}))
    prices = pd.concat(rows, ignore_index=True)
    return pd.concat([prices, forward_log_returns(prices, H)], axis=1)


def _folds(frame: pd.DataFrame, **kw: object) -> list:
    args: dict = dict(test_days=150, every=40, mode="expanding", training_days=120,
                      valid_fraction=0.25, max_horizon=max(H), embargo=5)  # fmt: skip
    args.update(kw)
    return walk_forward_folds(frame["date"], **args)


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_no_training_or_validation_label_is_realised_after_the_cutoff(mode: str) -> None:
    f = _frame()
    folds = _folds(f, mode=mode)
    assert len(folds) == 4  # 150 test dates in windows of 40
    for fold in folds:
        sp = fold.split
        assert sp.valid_end == fold.as_of and sp.train_end < sp.valid_start
        for start, end in ((sp.train_start, sp.train_end), (sp.valid_start, sp.valid_end)):
            w = window(f, start, end)
            assert w["date"].max() <= fold.as_of
            for h in H:
                known = realisation_dates(w, h)
                labelled = w[f"target_h{h}"].notna().to_numpy()
                assert labelled.any()
                assert (known[labelled] <= np.datetime64(fold.as_of)).all()
                # and only those are purged: every label realised by the window's end is kept
                orig = w[["date", "ticker"]].merge(
                    f[["date", "ticker", f"target_h{h}"]].assign(known=realisation_dates(f, h)),
                    on=["date", "ticker"], how="left",
                )  # fmt: skip
                keep = orig[f"target_h{h}"].notna().to_numpy() & (orig["known"] <= end).to_numpy()
                np.testing.assert_array_equal(labelled, keep)


def test_embargo_and_back_to_back_test_windows() -> None:
    f = _frame()
    dates = pd.DatetimeIndex(sorted(f["date"].unique()))
    for embargo in (0, 5, 9):
        folds = _folds(f, embargo=embargo)
        assert folds[0].test_start == dates[-150] and folds[-1].test_end == dates[-1]
        for fold in folds:
            i = dates.get_loc(fold.as_of)
            # the first test date is embargo + 1 trading dates after the cut-off
            assert dates.get_loc(fold.test_start) == i + embargo + 1
            assert fold.test_days == dates.get_loc(fold.test_end) - dates.get_loc(fold.test_start) + 1
        for a, b in zip(folds, folds[1:], strict=False):
            # no overlap, no gap: the next window starts on the trading date after this one ends
            assert dates.get_loc(b.test_start) == dates.get_loc(a.test_end) + 1
            assert a.test_days == 40
        covered = sum(fold.test_days for fold in folds)
        assert covered == 150


def test_expanding_starts_at_the_beginning_rolling_keeps_its_length() -> None:
    f = _frame()
    dates = pd.DatetimeIndex(sorted(f["date"].unique()))
    exp = _folds(f, mode="expanding")
    roll = _folds(f, mode="rolling")
    assert all(fold.split.train_start == dates[0] for fold in exp)
    assert [fold.split.train_days for fold in exp] == sorted({fold.split.train_days for fold in exp})
    assert all(fold.split.train_days == 120 for fold in roll)
    starts = [dates.get_loc(fold.split.train_start) for fold in roll]
    assert starts[0] > 0 and all(b > a for a, b in zip(starts, starts[1:], strict=False))
    # both modes validate on the same dates (the training job's split up to the cut-off)
    for a, b in zip(exp, roll, strict=True):
        assert (a.as_of, a.split.valid_start) == (b.as_of, b.split.valid_start)


def test_first_test_date_and_refusals() -> None:
    f = _frame()
    dates = pd.DatetimeIndex(sorted(f["date"].unique()))
    folds = _folds(f, test_days=None, first_test=dates[300] - pd.Timedelta(hours=1))
    assert folds[0].test_start == dates[300] and len(folds) == 3
    with pytest.raises(ValueError, match="validation window"):
        _folds(f, max_horizon=60)  # 25% of ~250 dates is fewer than 62: every h60 label purged
    with pytest.raises(ValueError, match="first_test or test_days"):
        walk_forward_folds(f["date"], mode="expanding", training_days=100, valid_fraction=0.2,
                           max_horizon=5, embargo=5)  # fmt: skip
    with pytest.raises(ValueError, match="history"):
        _folds(f, test_days=398, valid_fraction=0.2)


# -- one fold through the one training path ---------------------------------------------------------
@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    from ensemble.config import SyntheticConfig
    from ensemble.data.synthetic import generate_market

    return generate_market(SyntheticConfig(n_tickers=24, n_days=360, seed=5), horizons=H).prices


def _settings():
    from ensemble.config import Settings

    return Settings.model_validate({
        "horizons": list(H),
        "features": {"selection_k": 15, "sequence_length": 10},
        "training": {"models": ["xgboost", "random_forest"], "valid_fraction": 0.3, "training_days": 200},
        "models": {
            "xgboost": {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1},
            "random_forest": {"n_estimators": 10, "max_depth": 4, "n_jobs": 1},
        },
    })  # fmt: skip


def test_fit_fold_forecasts_its_test_window_only_and_is_point_in_time(market: pd.DataFrame) -> None:
    from ensemble.features import build_features

    s = _settings()
    folds = walk_forward_folds(market["date"], test_days=40, every=20, mode="expanding", training_days=200,
                               valid_fraction=0.3, max_horizon=max(H), embargo=3)  # fmt: skip
    fold = folds[0]
    feats = build_features(market, H)
    res = fit_fold(market, fold, s, features=feats)
    assert not res.failures
    test_dates = pd.DatetimeIndex(sorted(market["date"].unique()))
    expected = test_dates[(test_dates >= fold.test_start) & (test_dates <= fold.test_end)]
    for p in [*res.member_preds.values(), *res.member_scores.values(), res.ensemble, res.truth]:
        assert pd.DatetimeIndex(sorted(p["date"].unique())).equals(expected)
        assert len(p) == len(expected) * 24
    for h in H:
        w = np.array(list(res.weights[h].values()))
        assert (w >= 0).all() and np.isclose(w.sum(), 1.0)
        assert res.ensemble[f"pred_h{h}"].notna().all()

    # poison every price after the cut-off: what the fold learned (ensemble weights, calibration,
    # conformal quantiles) is unchanged; poison after the test window: its forecasts are unchanged too
    poisoned = market.copy()
    after = poisoned["date"] > fold.test_end
    poisoned.loc[after, ["open", "high", "low", "close"]] *= 3.0
    res2 = fit_fold(poisoned, fold, s)  # features rebuilt from the poisoned prices
    assert res2.ensemble_state == res.ensemble_state
    pd.testing.assert_frame_equal(res2.ensemble, res.ensemble, check_exact=True)
    for m in res.member_preds:
        pd.testing.assert_frame_equal(res2.member_preds[m], res.member_preds[m], check_exact=True)
    poisoned = market.copy()
    after = poisoned["date"] > fold.as_of
    poisoned.loc[after, ["open", "high", "low", "close"]] *= 3.0
    res3 = fit_fold(poisoned, fold, s)
    assert res3.ensemble_state == res.ensemble_state
    # (the poison did reach the test window's features: the forecasts there move)
    assert not res3.member_scores["xgboost"].equals(res.member_scores["xgboost"])
