"""Prophet per ticker behind the Forecaster protocol."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _frames import make_feature_frame  # noqa: E402

from ensemble.backtest.splits import window  # noqa: E402
from ensemble.models import get_model_class  # noqa: E402
from ensemble.models.base import UnsafeArtifactError  # noqa: E402
from ensemble.models.prophet_model import MARKET_LEVEL, ProphetForecaster, market_log_level, quiet_stan  # noqa: E402

HORIZONS = (5, 20, 60)
PRED_COLS = [f"pred_h{h}" for h in HORIZONS]
SHORT = "T003"  # keeps only its first 30 rows


def poison_after(frame: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Every close and feature after ``cutoff`` x10, and a third of those rows NaN."""
    out = frame.copy()
    after = (out["date"] > cutoff).to_numpy()
    cols = ["close", *[c for c in frame.columns if c.startswith("f")]]
    out.loc[after, cols] *= 10.0
    out.loc[after & (np.arange(len(out)) % 3 == 0), cols] = np.nan
    return out


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    f = make_feature_frame(n_tickers=4, n_days=260, n_features=4, seed=2)
    first = f["date"].drop_duplicates().sort_values().iloc[29]
    return f[(f["ticker"] != SHORT) | (f["date"] <= first)].reset_index(drop=True)


@pytest.fixture(scope="module")
def data(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    dates = np.sort(frame["date"].unique())
    cut = int(len(dates) * 0.7)
    train = frame[frame["date"] < dates[cut - 60]].reset_index(drop=True)
    test = frame[frame["date"] >= dates[cut]].reset_index(drop=True)
    # the short ticker has no test rows of its own: give it some (features/close are irrelevant here)
    extra = test[test["ticker"] == "T000"].head(10).assign(ticker=SHORT)
    test = pd.concat([test, extra], ignore_index=True)
    return train, test, pd.Timestamp(dates[cut - 61])


@pytest.fixture(scope="module")
def fitted(data: tuple) -> ProphetForecaster:
    train, _, _ = data
    return ProphetForecaster().fit(train)


def test_registry_and_capabilities() -> None:
    assert get_model_class("prophet") is ProphetForecaster
    assert ProphetForecaster.per_ticker is True
    with pytest.raises(TypeError, match="unknown parameters"):
        ProphetForecaster(mcmc=10)


def test_short_ticker_fails_others_fit(fitted: ProphetForecaster) -> None:
    assert fitted.tickers_ == ["T000", "T001", "T002"]
    assert list(fitted.failed_) == [SHORT]
    assert "30 rows" in fitted.failed_[SHORT] and "min_history" in fitted.failed_[SHORT]


def test_predict_shape_finite_and_nan_for_unfitted(fitted: ProphetForecaster, data: tuple) -> None:
    _, test, _ = data
    frame = pd.concat([test, test.head(5).assign(ticker="NEVER_SEEN")], ignore_index=True)
    pred = fitted.predict(frame)
    assert list(pred.columns) == ["date", "ticker", *PRED_COLS]
    pd.testing.assert_frame_equal(pred[["date", "ticker"]], frame[["date", "ticker"]])
    values = pred[PRED_COLS].to_numpy()
    fitted_rows = pred["ticker"].isin(fitted.tickers_).to_numpy()
    assert np.isfinite(values[fitted_rows]).all()
    assert np.isnan(values[~fitted_rows]).all() and (~fitted_rows).sum() == 15


def test_forecast_is_fitted_curve_difference(fitted: ProphetForecaster, data: tuple) -> None:
    """pred_h(t) = yhat(t + h business days) - yhat(t), from the model fitted once on train."""
    _, test, _ = data
    rows = test[test["ticker"] == "T001"].iloc[[0, 17, 40]]
    pred = fitted.predict(rows)
    model = fitted.models_["T001"]
    for h in HORIZONS:
        t = pd.DatetimeIndex(rows["date"])
        with quiet_stan():
            yhat_t = model.predict(pd.DataFrame({"ds": t}))["yhat"].to_numpy()
            yhat_th = model.predict(pd.DataFrame({"ds": t + pd.offsets.BDay(h)}))["yhat"].to_numpy()
        np.testing.assert_allclose(pred[f"pred_h{h}"].to_numpy(), yhat_th - yhat_t, rtol=1e-9, atol=1e-12)
    # the forecast is in log-return units: the 60-day change is far from the 5-day one
    assert not np.allclose(pred["pred_h60"], pred["pred_h5"])


def test_save_load_identical_predictions(fitted: ProphetForecaster, data: tuple, tmp_path: Path) -> None:
    _, test, _ = data
    fitted.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "meta.json",
        *[f"prophet_{i:05d}.json" for i in range(3)],
    ]
    loaded = ProphetForecaster.load(tmp_path)
    assert loaded.failed_ == fitted.failed_ and loaded.tickers_ == fitted.tickers_
    a, b = loaded.predict(test)[PRED_COLS].to_numpy(), fitted.predict(test)[PRED_COLS].to_numpy()
    assert np.array_equal(a, b, equal_nan=True)


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_planted_pickle_refused(fitted: ProphetForecaster, protocol: int, tmp_path: Path) -> None:
    d = fitted.save(tmp_path / "m")
    marker = tmp_path / "pwned"
    (d / "prophet_00001.json").write_bytes(pickle.dumps(_Marker(marker), protocol=protocol))
    with pytest.raises(UnsafeArtifactError):
        ProphetForecaster.load(d)
    assert not marker.exists()


def test_meta_cannot_point_outside(fitted: ProphetForecaster, tmp_path: Path) -> None:
    import json

    d = fitted.save(tmp_path / "m")
    meta = json.loads((d / "meta.json").read_text())
    meta["files"]["T000"] = "../elsewhere.json"
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unexpected file"):
        ProphetForecaster.load(d)


def test_future_poisoning_before_the_fit_leaves_every_forecast_bit_identical(
    fitted: ProphetForecaster, frame: pd.DataFrame, data: tuple
) -> None:
    """Prophet's forecast reads only (date, ticker): the poison can reach it through its fit only. The
    training path hands the fit its window (ensemble.backtest.splits.window: rows dated <= its end);
    a frame poisoned after that end gives the same models, so the same forecasts on every date."""
    _, _, cutoff = data  # ``fitted`` was fitted on the clean rows dated <= cutoff
    poisoned = poison_after(frame, cutoff)
    dirty = ProphetForecaster().fit(window(poisoned, None, cutoff))
    assert dirty.tickers_ == fitted.tickers_ and dirty.failed_ == fitted.failed_
    clean = fitted.predict(frame)[PRED_COLS].to_numpy()
    assert np.isfinite(clean[frame["ticker"].isin(fitted.tickers_).to_numpy()]).all()
    assert np.array_equal(dirty.predict(frame)[PRED_COLS].to_numpy(), clean, equal_nan=True)
    # and the forecast at a date up to the cutoff ignores the poisoned rows handed to predict
    past = (frame["date"] <= cutoff).to_numpy()
    assert np.array_equal(dirty.predict(poisoned)[PRED_COLS].to_numpy()[past], clean[past], equal_nan=True)


def test_missing_close_is_a_clear_error(data: tuple) -> None:
    train, _, _ = data
    with pytest.raises(ValueError, match="close"):
        ProphetForecaster().fit(train.drop(columns=["close"]))


def test_a_failing_fit_is_reported_not_fatal(data: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test, _ = data
    sub = train[train["ticker"].isin(["T000", "T001"])]
    real = ProphetForecaster._new_model
    calls = {"n": 0}

    def flaky(self: ProphetForecaster):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the second ticker's model breaks at fit
            m = real(self)
            m.fit = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("optimizer exploded"))
            return m
        return real(self)

    monkeypatch.setattr(ProphetForecaster, "_new_model", flaky)
    model = ProphetForecaster().fit(sub)
    assert model.tickers_ == ["T000"]
    assert model.failed_ == {"T001": "fit failed: RuntimeError: optimizer exploded"}
    pred = model.predict(test[test["ticker"].isin(["T000", "T001"])])
    is_t1 = (pred["ticker"] == "T001").to_numpy()
    assert np.isnan(pred.loc[is_t1, PRED_COLS].to_numpy()).all()
    assert np.isfinite(pred.loc[~is_t1, PRED_COLS].to_numpy()).all()


def test_merge_of_chunk_fits_equals_one_fit(fitted: ProphetForecaster, data: tuple) -> None:
    train, test, _ = data
    a = ProphetForecaster().fit(train[train["ticker"].isin(["T000", SHORT])])
    b = ProphetForecaster().fit(train[train["ticker"].isin(["T001", "T002"])])
    merged = ProphetForecaster.merge([a, b])
    assert merged.tickers_ == fitted.tickers_ and merged.failed_ == fitted.failed_
    assert np.array_equal(
        merged.predict(test)[PRED_COLS].to_numpy(), fitted.predict(test)[PRED_COLS].to_numpy(), equal_nan=True
    )
    with pytest.raises(ValueError, match="more than one part"):
        ProphetForecaster.merge([a, a])


# -- extra regressors ---------------------------------------------------------------------------------
def test_market_log_level_is_the_cumulative_equal_weighted_return_and_point_in_time() -> None:
    dates = pd.bdate_range("2021-01-04", periods=4)
    prices = pd.DataFrame(
        {
            "date": np.r_[dates, dates],
            "ticker": ["A"] * 4 + ["B"] * 4,
            "close": [10.0, 11.0, 11.0, 9.9, 20.0, 20.0, np.nan, 22.0],
        }
    )
    level = market_log_level(prices)
    assert list(level.columns) == ["date", MARKET_LEVEL]
    # day 2: mean(+10%, 0%) ; day 3: only A has a return (B has no close) ; day 4: A -10%, B +10%:
    # B's NaN close is left out as if absent (the feature panel's rule), so B returns against day 2
    daily = np.log1p([0.0, 0.05, 0.0, 0.0])
    assert np.allclose(level[MARKET_LEVEL].to_numpy(), np.cumsum(daily))
    poisoned = prices.copy()
    late = poisoned["date"] > dates[1]
    poisoned.loc[late, "close"] *= 10.0
    assert np.array_equal(
        market_log_level(poisoned)[MARKET_LEVEL].to_numpy()[:2], level[MARKET_LEVEL].to_numpy()[:2]
    )


@pytest.fixture(scope="module")
def with_market(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.merge(market_log_level(frame), on="date", how="left")


def test_market_regressor_changes_the_fit_and_keeps_the_contract(
    fitted: ProphetForecaster, with_market: pd.DataFrame, data: tuple, tmp_path: Path
) -> None:
    _, _, cutoff = data
    train = with_market[with_market["date"] <= cutoff].reset_index(drop=True)
    test = with_market[with_market["date"] > cutoff].reset_index(drop=True)
    model = ProphetForecaster(regressors=[MARKET_LEVEL]).fit(train)
    assert model.tickers_ == fitted.tickers_ and model.regressors == [MARKET_LEVEL]
    assert all(m.extra_regressors.keys() == {MARKET_LEVEL} for m in model.models_.values())
    p_reg = model.predict(test)
    p_plain = fitted.predict(test)
    fitted_rows = test["ticker"].isin(model.tickers_).to_numpy()
    assert np.isfinite(p_reg.loc[fitted_rows, PRED_COLS].to_numpy()).all()
    # the regressor takes its part of the log price out of the trend: the forecasts change
    assert not np.allclose(
        p_reg.loc[fitted_rows, PRED_COLS].to_numpy(), p_plain.loc[fitted_rows, PRED_COLS].to_numpy()
    )
    # prediction needs no regressor values (held at their value at t, they cancel)
    assert np.array_equal(
        model.predict(test.drop(columns=[MARKET_LEVEL]))[PRED_COLS].to_numpy(),
        p_reg[PRED_COLS].to_numpy(),
        equal_nan=True,
    )
    loaded = ProphetForecaster.load(model.save(tmp_path / "m"))
    assert loaded.regressors == [MARKET_LEVEL]
    assert np.array_equal(
        loaded.predict(test)[PRED_COLS].to_numpy(), p_reg[PRED_COLS].to_numpy(), equal_nan=True
    )
    # the fit on the training window of prices poisoned after the cutoff (and so of the market level,
    # recomputed from them as jobs.train does) is the same fit: the regressor is point in time
    poisoned = poison_after(with_market.drop(columns=[MARKET_LEVEL]), cutoff)
    poisoned = poisoned.merge(market_log_level(poisoned), on="date", how="left")
    past = (with_market["date"] <= cutoff).to_numpy()
    level = (with_market[MARKET_LEVEL].to_numpy(), poisoned[MARKET_LEVEL].to_numpy())
    assert np.array_equal(level[0][past], level[1][past]) and not np.allclose(
        level[0][~past], level[1][~past]
    )
    refit = ProphetForecaster(regressors=[MARKET_LEVEL]).fit(window(poisoned, None, cutoff))
    assert np.array_equal(
        refit.predict(with_market)[PRED_COLS].to_numpy(),
        model.predict(with_market)[PRED_COLS].to_numpy(),
        equal_nan=True,
    )


def test_regressor_errors_name_the_column(data: tuple) -> None:
    train, _, _ = data
    with pytest.raises(ValueError, match="regressor column.*mkt_log_level"):
        ProphetForecaster(regressors=[MARKET_LEVEL]).fit(train)
    with pytest.raises(TypeError, match="regressors must be a list"):
        ProphetForecaster(regressors="mkt_log_level")
    with pytest.raises(ValueError, match="cannot be a regressor"):
        ProphetForecaster(regressors=["close"])
