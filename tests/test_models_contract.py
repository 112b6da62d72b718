"""One contract, run over all six models on a small synthetic market, through the real pipeline.

prices -> build_features -> Preprocessor (fitted on training dates) -> each model's fit/predict ->
the learned ensemble. For every model: predict shape and keys, identical predictions after save and
load, refusal of a planted pickle, and the future-poisoning check of DESIGN.md end to end: every
price after a cutoff multiplied by 10 with NaNs inserted, features rebuilt, and every prediction
(and the ensemble's) dated at or before the cutoff bit-identical.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ensemble.backtest.splits import window
from ensemble.config import MODEL_NAMES, EnsembleConfig, SyntheticConfig
from ensemble.data.synthetic import generate_market
from ensemble.features import Preprocessor, build_features
from ensemble.models import create_model, get_model_class, model_names
from ensemble.models.base import Forecaster, UnsafeArtifactError
from ensemble.models.ensemble import VOL_COLUMN, EnsembleForecaster, trailing_volatility
from ensemble.models.prophet_model import MARKET_LEVEL, market_log_level

HORIZONS = (5, 20, 60)
PRED_COLS = [f"pred_h{h}" for h in HORIZONS]
TARGET_COLS = [f"target_h{h}" for h in HORIZONS]
N_TICKERS, N_DAYS = 16, 400
TRAIN_END, VALID_END, CUTOFF = 240, 300, 330  # date indices
SMALL: dict[str, dict[str, Any]] = {
    "lstm": {"seq_len": 10, "hidden": 8, "attn_dim": 8, "max_epochs": 3, "batch_size": 128,
             "max_samples_per_epoch": 1500, "num_threads": 1, "device": "cpu"},
    "transformer": {"seq_len": 10, "d_model": 16, "nhead": 2, "layers": 1, "dim_feedforward": 32,
                    "max_epochs": 3, "batch_size": 128, "max_samples_per_epoch": 1500, "num_threads": 1,
                    "device": "cpu"},
    "xgboost": {"n_estimators": 40, "max_depth": 4, "n_jobs": 1},
    "lightgbm": {"n_estimators": 40, "num_leaves": 15, "n_jobs": 1},
    "random_forest": {"n_estimators": 20, "max_depth": 6, "n_jobs": 1},
    "prophet": {"min_history": 100},
}  # fmt: skip


def _poison(prices: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Every input after the cutoff multiplied by 10, and NaNs scattered over those rows."""
    q = prices.copy()
    late = (q["date"] > cutoff).to_numpy()
    for c in ["open", "high", "low", "close", "volume", "pe", "pb", "market_cap", "sentiment"]:
        q.loc[late, c] = q.loc[late, c] * 10.0
    rows = np.flatnonzero(late)
    rng = np.random.default_rng(1)
    for c in ["open", "close", "volume", "sentiment", "pe"]:
        q.loc[rng.choice(rows, 40, replace=False), c] = np.nan
    return q


def _model_frame(prices: pd.DataFrame, pre: Preprocessor) -> pd.DataFrame:
    """What jobs.train feeds the models: preprocessed features + targets + the raw close."""
    feats = build_features(prices, HORIZONS)
    return pre.transform(feats).merge(prices[["date", "ticker", "close"]], on=["date", "ticker"], how="left")


@pytest.fixture(scope="module")
def market() -> dict[str, Any]:
    prices = generate_market(SyntheticConfig(n_tickers=N_TICKERS, n_days=N_DAYS, n_sectors=4, seed=11)).prices
    dates = pd.DatetimeIndex(np.sort(prices["date"].unique()))
    feats = build_features(prices, HORIZONS)
    pre = Preprocessor(k=20).fit(feats, dates[TRAIN_END])
    frame = pre.transform(feats).merge(prices[["date", "ticker", "close"]], on=["date", "ticker"], how="left")
    cutoff = dates[CUTOFF]
    return {
        "prices": prices,
        "dates": dates,
        "pre": pre,
        "frame": frame,
        "train": window(frame, None, dates[TRAIN_END]),
        "valid": window(frame, dates[TRAIN_END + 1], dates[VALID_END]),
        "cutoff": cutoff,
        "poisoned": _model_frame(_poison(prices, cutoff), pre),
    }


@pytest.fixture(scope="module")
def fitted(market: dict[str, Any]) -> dict[str, Forecaster]:
    return {
        name: create_model(name, horizons=HORIZONS, **SMALL[name]).fit(market["train"], market["valid"])
        for name in MODEL_NAMES
    }


def test_all_six_models_are_registered() -> None:
    assert model_names() == list(MODEL_NAMES)
    caps = {n: get_model_class(n)(horizons=HORIZONS).capabilities for n in MODEL_NAMES}
    assert caps["prophet"]["per_ticker"] and not caps["xgboost"]["per_ticker"]
    assert caps["lstm"]["uses_sequences"] and caps["transformer"]["uses_sequences"]
    assert not any(caps[n]["uses_sequences"] for n in ("xgboost", "lightgbm", "random_forest", "prophet"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predict_shape_and_keys(name: str, fitted: dict, market: dict) -> None:
    frame = market["frame"]
    pred = fitted[name].predict(frame)
    assert list(pred.columns) == ["date", "ticker", *PRED_COLS]
    assert len(pred) == len(frame)
    assert (pred["date"].to_numpy() == frame["date"].to_numpy()).all()
    assert (pred["ticker"].to_numpy() == frame["ticker"].to_numpy()).all()
    after_train = (frame["date"] > market["dates"][TRAIN_END]).to_numpy()
    values = pred.loc[after_train, PRED_COLS].to_numpy()
    assert np.isfinite(values).all(), f"{name}: non-finite forecasts after the training window"
    assert values.std(axis=0).min() > 0, f"{name}: constant forecasts"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_gives_identical_predictions(name: str, fitted: dict, market: dict, tmp_path: Path) -> None:
    model = fitted[name]
    saved = model.save(tmp_path / name)
    loaded = get_model_class(name).load(saved)
    frame = market["frame"]
    assert np.array_equal(
        loaded.predict(frame)[PRED_COLS].to_numpy(),
        model.predict(frame)[PRED_COLS].to_numpy(),
        equal_nan=True,
    )


class _Exploit:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("how", ["extra_file", "replaced_artifact"])
def test_planted_pickle_is_refused(name: str, how: str, fitted: dict, tmp_path: Path) -> None:
    saved = fitted[name].save(tmp_path / name)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker), protocol=pickle.HIGHEST_PROTOCOL)
    if how == "extra_file":
        (saved / "model.joblib").write_bytes(payload)
    else:  # the largest artifact (weights, booster, forest, a Prophet JSON) replaced by a pickle
        victim = max((p for p in saved.iterdir() if p.name != "meta.json"), key=lambda p: p.stat().st_size)
        victim.write_bytes(payload)
    with pytest.raises(UnsafeArtifactError):
        get_model_class(name).load(saved)
    assert not marker.exists()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_future_poisoning_leaves_past_predictions_bit_identical(
    name: str, fitted: dict, market: dict
) -> None:
    clean = fitted[name].predict(market["frame"])[PRED_COLS].to_numpy()
    dirty = fitted[name].predict(market["poisoned"])[PRED_COLS].to_numpy()
    past = (market["frame"]["date"] <= market["cutoff"]).to_numpy()
    assert past.sum() > 0 and (~past).sum() > 0
    assert np.array_equal(clean[past], dirty[past], equal_nan=True)
    if name != "prophet":
        assert not np.array_equal(clean[~past], dirty[~past], equal_nan=True)  # the poison did reach them
        return
    # Prophet's forecast reads only (date, ticker): the poison can reach it through its fit only. Fit on
    # the training path's window up to the cutoff of the clean and of the poisoned frame, with the
    # market level recomputed from each price table (as jobs.train adds it) as a regressor: the same fit.
    cutoff = market["cutoff"]
    few = sorted(market["frame"]["ticker"].unique())[:3]
    fits = []
    for frame, prices in (
        (market["frame"], market["prices"]),
        (market["poisoned"], _poison(market["prices"], cutoff)),
    ):
        f = frame[frame["ticker"].isin(few)].merge(market_log_level(prices), on="date", how="left")
        model = create_model(name, horizons=HORIZONS, **SMALL[name], regressors=[MARKET_LEVEL])
        fits.append(model.fit(window(f, None, cutoff)))
    rows = market["frame"][market["frame"]["ticker"].isin(few)]
    a, b = (m.predict(rows)[PRED_COLS].to_numpy() for m in fits)
    assert fits[0].tickers_ == few and np.isfinite(a).all()
    assert np.array_equal(a, b)


def test_future_poisoning_leaves_the_learned_ensemble_and_its_past_forecasts_bit_identical(
    fitted: dict, market: dict
) -> None:
    """The platform's ensemble (EnsembleForecaster), fitted as jobs.train fits it (the members'
    forecasts of the validation dates, the labels realised by the cutoff, every labelled date as the
    history) from the clean and from the poisoned prices: the same state (weights, calibration,
    conformal quantiles), and bit-identical forecasts, intervals and confidences at or before the cutoff."""
    dates, cutoff = market["dates"], market["cutoff"]
    past = (market["frame"]["date"] <= cutoff).to_numpy()
    states, outs = [], []
    for which, prices in (("frame", market["prices"]), ("poisoned", _poison(market["prices"], cutoff))):
        frame = market[which].merge(trailing_volatility(prices), on=["date", "ticker"], how="left")
        preds = {n: m.predict(frame) for n, m in fitted.items()}
        d = frame["date"]
        in_valid = ((d > dates[TRAIN_END]) & (d <= cutoff)).to_numpy()
        truth = window(frame, dates[TRAIN_END + 1], cutoff)  # the same rows, labels purged at the cutoff
        history = window(frame, None, cutoff)[["date", "ticker", *TARGET_COLS, VOL_COLUMN]]
        ens = EnsembleForecaster(EnsembleConfig().weights, HORIZONS).fit(
            {n: p[in_valid].reset_index(drop=True) for n, p in preds.items()}, truth, history
        )
        states.append(json.dumps(ens.to_dict(), sort_keys=True))
        outs.append(ens.predict(preds, frame))
    assert states[0] == states[1]
    clean, dirty = outs
    assert len(clean.columns) > 2 + 3 * len(HORIZONS)  # forecasts, excess, intervals, confidence, counts
    for col in clean.columns[2:]:
        a, b = clean[col].to_numpy(), dirty[col].to_numpy()
        assert np.array_equal(a[past], b[past], equal_nan=True), col
    assert (clean.loc[past, "n_models_h5"] >= 5).all()  # the sequence models need no warm-up here
    assert (
        np.isfinite(clean.loc[past, "pred_h5"]).mean() > 0.9 and np.isfinite(clean.loc[past, "lo80_h5"]).any()
    )
    assert not np.array_equal(clean.loc[~past, "pred_h5"], dirty.loc[~past, "pred_h5"], equal_nan=True)
