"""XGBoost, LightGBM and Random Forest behind the Forecaster protocol, on a frame with a planted signal."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _frames import attainable_rank_ic, make_feature_frame, mean_rank_ic  # noqa: E402

from ensemble.backtest.metrics import rank_ic  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.features.targets import forward_log_returns  # noqa: E402
from ensemble.models import get_model_class  # noqa: E402
from ensemble.models.base import UnsafeArtifactError, pred_col  # noqa: E402
from ensemble.models.explain import BIAS_COLUMN, feature_matrix  # noqa: E402

HORIZONS = (5, 20, 60)
PRED_COLS = [f"pred_h{h}" for h in HORIZONS]
SMALL = {
    "xgboost": {"n_estimators": 80, "learning_rate": 0.1, "max_depth": 4, "n_jobs": 1},
    "lightgbm": {
        "n_estimators": 80,
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_child_samples": 40,
        "n_jobs": 1,
    },
    "random_forest": {"n_estimators": 40, "min_samples_leaf": 20, "max_samples": 0.5, "n_jobs": 1},
}
NAMES = list(SMALL)
SKILL_SHARE = 0.5  # a model must reach at least this share of the best Rank IC attainable on the test rows


def split(frame: pd.DataFrame, purge: int = 60) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """train: first 70% of dates minus the last ``purge`` (their labels reach the test period); test: the rest."""
    dates = np.sort(frame["date"].unique())
    cut = int(len(dates) * 0.7)
    train = frame[frame["date"] < dates[cut - purge]].reset_index(drop=True)
    test = frame[frame["date"] >= dates[cut]].reset_index(drop=True)
    return train, test, pd.Timestamp(dates[cut - purge - 1])


def relabel(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its targets recomputed from its closes (as the feature pipeline makes them)."""
    targets = [c for c in frame.columns if c.startswith("target_h")]
    return frame.assign(**forward_log_returns(frame, [int(c.removeprefix("target_h")) for c in targets]))


def poison_after(frame: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Every feature and close after ``cutoff`` x10, NaNs among them, and the targets recomputed from
    the poisoned closes (so the labels of the last rows before the cutoff carry the poison too)."""
    out = frame.copy()
    after = (out["date"] > cutoff).to_numpy()
    feats = [c for c in out.columns if c.startswith("f")]
    out.loc[after, [*feats, "close"]] *= 10.0
    rows = np.flatnonzero(after)
    out.loc[rows[::5], ["close", *feats[:3]]] = np.nan
    return relabel(out)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_feature_frame(n_tickers=30, n_days=260, n_features=8, seed=0)


@pytest.fixture(scope="module")
def data(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    return split(frame)


@pytest.fixture(scope="module")
def fitted(data: tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]) -> dict[str, object]:
    train, _, _ = data
    return {name: get_model_class(name)(**SMALL[name]).fit(train) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_predict_shape_keys_and_order(name: str, fitted: dict, data: tuple) -> None:
    _, test, _ = data
    model = fitted[name]
    pred = model.predict(test)
    assert list(pred.columns) == ["date", "ticker", *PRED_COLS]
    assert len(pred) == len(test)
    pd.testing.assert_frame_equal(pred[["date", "ticker"]], test[["date", "ticker"]].reset_index(drop=True))
    assert np.isfinite(pred[PRED_COLS].to_numpy()).all()
    # row-wise: a shuffled frame gives the same prediction per row, in the shuffled order
    perm = np.random.default_rng(1).permutation(len(test))
    shuffled = model.predict(test.iloc[perm])
    assert np.array_equal(shuffled[PRED_COLS].to_numpy(), pred[PRED_COLS].to_numpy()[perm])
    assert shuffled["ticker"].tolist() == test["ticker"].iloc[perm].tolist()


@pytest.mark.parametrize("name", NAMES)
def test_learns_planted_signal(name: str, fitted: dict, data: tuple) -> None:
    _, test, _ = data
    best, source = attainable_rank_ic(test, horizon=5)
    ic = mean_rank_ic(test, fitted[name].predict(test)["pred_h5"], horizon=5)
    assert ic >= SKILL_SHARE * best, (
        f"{name}: mean Rank IC {ic:.3f} on the test period, below {SKILL_SHARE:.0%} of the {best:.3f} "
        f"that {source} alone reaches on the same rows"
    )


@pytest.mark.parametrize("name", NAMES)
def test_save_load_identical_predictions(name: str, fitted: dict, data: tuple, tmp_path: Path) -> None:
    _, test, _ = data
    model = fitted[name]
    model.save(tmp_path)
    loaded = type(model).load(tmp_path)
    assert loaded.feature_names_ == model.feature_names_
    assert loaded.resolved_params() == model.resolved_params()
    assert np.array_equal(
        loaded.predict(test)[PRED_COLS].to_numpy(), model.predict(test)[PRED_COLS].to_numpy()
    )
    c1, c2 = loaded.contributions(test.head(50)), model.contributions(test.head(50))
    assert np.allclose(c1.iloc[:, 2:].to_numpy(), c2.iloc[:, 2:].to_numpy(), rtol=0, atol=1e-12)


class _Marker:
    """Unpickling this creates the file ``path`` (a stand-in for arbitrary code execution)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("name", NAMES)
def test_planted_pickle_refused(name: str, protocol: int, fitted: dict, tmp_path: Path) -> None:
    model = fitted[name]
    d = model.save(tmp_path / "m")
    marker = tmp_path / "pwned"
    artifact = d / model._artifact(5)
    assert artifact.exists()
    artifact.write_bytes(pickle.dumps(_Marker(marker), protocol=protocol))
    with pytest.raises(UnsafeArtifactError):
        type(model).load(d)
    assert not marker.exists()


@pytest.mark.parametrize("name", NAMES)
def test_planted_pickle_as_meta_refused(name: str, fitted: dict, tmp_path: Path) -> None:
    model = fitted[name]
    d = model.save(tmp_path / "m")
    marker = tmp_path / "pwned"
    (d / "meta.json").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(UnsafeArtifactError):
        type(model).load(d)
    (d / "meta.json").write_bytes(pickle.dumps(_Marker(marker), protocol=0))
    with pytest.raises(ValueError):  # not JSON: refused by the JSON parser, never unpickled
        type(model).load(d)
    assert not marker.exists()


@pytest.mark.parametrize("name", NAMES)
def test_future_poisoning_leaves_past_predictions_bit_identical(
    name: str, fitted: dict, frame: pd.DataFrame, data: tuple
) -> None:
    _, _, cutoff = data
    model = fitted[name]  # fitted on rows dated <= cutoff
    feats = model.feature_names_
    poisoned = frame.copy()
    after = poisoned["date"] > cutoff
    poisoned.loc[after, [*feats, "close"]] *= 10.0
    rng = np.random.default_rng(3)
    for c in feats[:3]:
        poisoned.loc[after & (rng.random(len(poisoned)) < 0.3), c] = np.nan
    poisoned.loc[after, [c for c in poisoned.columns if c.startswith("target_h")]] = np.nan
    clean_pred = model.predict(frame)
    dirty_pred = model.predict(poisoned)
    past = (frame["date"] <= cutoff).to_numpy()
    assert past.sum() > 0 and (~past).sum() > 0
    assert np.array_equal(
        clean_pred.loc[past, PRED_COLS].to_numpy(), dirty_pred.loc[past, PRED_COLS].to_numpy()
    )
    assert not np.array_equal(
        clean_pred.loc[~past, PRED_COLS].to_numpy(), dirty_pred.loc[~past, PRED_COLS].to_numpy()
    )


@pytest.mark.parametrize("name", NAMES)
def test_future_poisoning_before_the_fit_leaves_the_model_bit_identical(
    name: str, frame: pd.DataFrame, data: tuple
) -> None:
    """The training path's window (ensemble.backtest.splits.window: rows dated <= its end, labels
    realised after it purged) of a frame poisoned after that end gives the same model."""
    _, test, cutoff = data
    frame, poisoned = relabel(frame), poison_after(frame, cutoff)
    before = (frame["date"] <= cutoff).to_numpy()
    # the poison reaches the rows a fit could see: labels dated <= cutoff that look past it
    assert not np.array_equal(
        frame.loc[before, "target_h5"], poisoned.loc[before, "target_h5"], equal_nan=True
    )
    cls = get_model_class(name)
    clean = cls(**SMALL[name]).fit(window(frame, None, cutoff))
    dirty = cls(**SMALL[name]).fit(window(poisoned, None, cutoff))
    # the same forecasts for clean rows and for rows with holes (NaNs: the fitted imputation state)
    for rows in (test, poisoned):
        assert np.array_equal(
            clean.predict(rows)[PRED_COLS].to_numpy(), dirty.predict(rows)[PRED_COLS].to_numpy()
        )


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_future_poisoning_after_the_validation_window_leaves_early_stopping_unchanged(
    name: str, frame: pd.DataFrame, data: tuple
) -> None:
    """Early stopping watches a validation window (cutoff, valid_end]; everything after valid_end
    poisoned leaves the chosen round and the model as they were."""
    _, test, cutoff = data
    dates = np.sort(frame["date"].unique())
    valid_start = dates[np.searchsorted(dates, np.datetime64(cutoff), side="right")]
    valid_end = dates[np.searchsorted(dates, np.datetime64(cutoff)) + 40]
    frame, poisoned = relabel(frame), poison_after(frame, valid_end)
    params = {**SMALL[name], "n_estimators": 300, "learning_rate": 0.3, "early_stopping_rounds": 10}
    fits = [
        get_model_class(name)(**params).fit(window(f, None, cutoff), valid=window(f, valid_start, valid_end))
        for f in (frame, poisoned)
    ]
    info = [
        {h: {k: v for k, v in i.items() if k != "fit_seconds"} for h, i in m.fit_info_.items()} for m in fits
    ]
    assert info[0] == info[1]
    assert info[0][5]["n_valid_rows"] > 0 and info[0][5]["n_rounds"] < 300  # early stopping did act
    assert np.array_equal(
        fits[0].predict(test)[PRED_COLS].to_numpy(), fits[1].predict(test)[PRED_COLS].to_numpy()
    )


@pytest.mark.parametrize("horizon", HORIZONS)
@pytest.mark.parametrize("name", NAMES)
def test_contributions_sum_to_prediction(name: str, horizon: int, fitted: dict, data: tuple) -> None:
    _, test, _ = data
    model = fitted[name]
    rows = test.iloc[::7]
    contrib = model.contributions(rows, horizon=horizon)
    assert list(contrib.columns) == ["date", "ticker", *model.feature_names_, BIAS_COLUMN]
    total = contrib[model.feature_names_].to_numpy().sum(axis=1) + contrib[BIAS_COLUMN].to_numpy()
    pred = model.predict(rows)[f"pred_h{horizon}"].to_numpy()
    # xgboost works in float32; the others in float64
    np.testing.assert_allclose(total, pred, rtol=0, atol=1e-6 if name == "xgboost" else 1e-12)
    # contributions are per prediction: they differ between rows
    assert contrib[model.feature_names_].std().max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_explain_ranks_top_contributions(name: str, fitted: dict, data: tuple) -> None:
    _, test, _ = data
    model = fitted[name]
    rows = test.iloc[:40]
    top = 3
    ex = model.explain(rows, horizon=5, top=top)
    assert list(ex.columns) == ["date", "ticker", "rank", "feature", "contribution"]
    assert len(ex) == top * len(rows)
    assert ex["rank"].tolist() == list(range(1, top + 1)) * len(rows)
    assert ex["ticker"].tolist() == np.repeat(rows["ticker"].to_numpy(), top).tolist()
    contrib = model.contributions(rows, horizon=5)
    for i, (_, g) in enumerate(ex.groupby(np.arange(len(ex)) // top)):
        full = contrib.iloc[i][model.feature_names_].astype(float)
        assert (
            g["feature"].tolist()
            == full.abs().sort_values(ascending=False, kind="stable").index[:top].tolist()
        )
        np.testing.assert_allclose(g["contribution"].to_numpy(), full[g["feature"]].to_numpy())
    # the planted signal feature f0 is the most common top driver of the 5-day forecast
    wide = model.explain(test, horizon=5, top=1)
    assert wide["feature"].value_counts().idxmax() == "f0"


@pytest.mark.parametrize("name", NAMES)
def test_refit_is_deterministic(name: str, fitted: dict, data: tuple) -> None:
    train, test, _ = data
    again = get_model_class(name)(**SMALL[name]).fit(train)
    assert np.array_equal(
        again.predict(test)[PRED_COLS].to_numpy(), fitted[name].predict(test)[PRED_COLS].to_numpy()
    )


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_early_stopping_on_valid(name: str, data: tuple, tmp_path: Path) -> None:
    train, test, _ = data
    params = {**SMALL[name], "n_estimators": 300, "learning_rate": 0.3, "early_stopping_rounds": 10}
    model = get_model_class(name)(**params).fit(train, valid=test)
    for h in HORIZONS:
        info = model.fit_info_[h]
        assert info["n_valid_rows"] == int(test[model.label(h)].notna().sum())
        assert info["n_rounds"] == info["best_iteration"] + (1 if name == "xgboost" else 0) < 300
    loaded = type(model).load(model.save(tmp_path))
    assert np.array_equal(
        loaded.predict(test)[PRED_COLS].to_numpy(), model.predict(test)[PRED_COLS].to_numpy()
    )


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_refit_on_fits_again_for_the_rounds_it_stopped_at(name: str, data: tuple, tmp_path: Path) -> None:
    """With ``refit_on``, each horizon's booster stops on ``valid`` as without it, and the model kept
    is then fitted on ``refit_on`` alone for the rounds it stopped at, scaled by the labelled rows
    gained: the same as a fit of those rows for that many rounds, with no validation."""
    train, test, _ = data
    dates = np.sort(train["date"].unique())
    fit = train[train["date"] < dates[int(len(dates) * 0.8)]].reset_index(drop=True)
    params = {**SMALL[name], "n_estimators": 300, "learning_rate": 0.3, "early_stopping_rounds": 10}
    cls = get_model_class(name)
    stopped = cls(**params).fit(fit, valid=test)
    model = cls(**params).fit(fit, valid=test, refit_on=train)
    assert cls.refits
    for h in HORIZONS:
        info, before = model.fit_info_[h], stopped.fit_info_[h]
        label = model.label(h)
        n_fit, n_all = int(fit[label].notna().sum()), int(train[label].notna().sum())
        assert info["stopped_n_rounds"] == before["n_rounds"] < 300
        assert info["stopped_best_iteration"] == before["best_iteration"]
        assert info["stopped_n_train_rows"] == n_fit and info["n_train_rows"] == n_all > n_fit
        assert info["n_rounds"] == min(300, round(before["n_rounds"] * n_all / n_fit))
        assert info["stopped_n_valid_rows"] == before["n_valid_rows"] > 0 and info["n_valid_rows"] == 0
        once = cls(**{**params, "n_estimators": info["n_rounds"]}).fit(train[train[label].notna()])
        assert np.array_equal(
            model.predict(test)[pred_col(h)].to_numpy(), once.predict(test)[pred_col(h)].to_numpy()
        )
    assert not np.array_equal(
        model.predict(test)[PRED_COLS].to_numpy(), stopped.predict(test)[PRED_COLS].to_numpy()
    )
    # a horizon with no label to stop on: only the fit of the whole rows, for n_estimators rounds
    blind = cls(**params).fit(fit, valid=test.assign(target_h60=np.nan), refit_on=train)
    assert not {"stopped_n_rounds", "stopped_n_valid_rows"} & set(blind.fit_info_[60])
    assert blind.fit_info_[60]["n_rounds"] == 300 and blind.fit_info_[60]["n_valid_rows"] == 0
    assert blind.fit_info_[60]["n_train_rows"] == int(train[model.label(60)].notna().sum())
    loaded = cls.load(model.save(tmp_path))
    assert loaded.fit_info_ == model.fit_info_
    assert np.array_equal(
        loaded.predict(test)[PRED_COLS].to_numpy(), model.predict(test)[PRED_COLS].to_numpy()
    )


def test_a_model_that_does_not_refit_refuses_refit_on(data: tuple) -> None:
    train, test, _ = data
    cls = get_model_class("random_forest")
    assert not cls.refits
    with pytest.raises(ValueError, match="random_forest: does not refit"):
        cls(**SMALL["random_forest"]).fit(train, refit_on=train)


def _first_rounds(booster: object, x: np.ndarray, k: int) -> np.ndarray:
    """The prediction of a fitted booster's first ``k`` rounds (LightGBM or XGBoost, their own API)."""
    if hasattr(booster, "num_trees"):  # lightgbm.Booster
        return np.asarray(booster.predict(x, num_iteration=k), dtype=np.float64)
    import xgboost as xgb

    return np.asarray(booster[:k].predict(xgb.DMatrix(x, missing=np.nan)), dtype=np.float64)


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_rank_ic_early_stopping_watches_the_mean_of_the_last_rounds(name: str, data: tuple) -> None:
    train, test, _ = data
    params = {**SMALL[name], "n_estimators": 300, "learning_rate": 0.3, "early_stopping_rounds": 10}
    window = 40
    raw = get_model_class(name)(**params, eval_metric="rank_ic").fit(train, valid=test)
    smooth = get_model_class(name)(**params, eval_metric="rank_ic", eval_smoothing=window).fit(
        train, valid=test
    )
    raw_best = [raw.fit_info_[h]["best_iteration"] for h in HORIZONS]
    assert min(raw_best) < window  # each round's own Rank IC peaks early here: the window matters
    for h in HORIZONS:
        info = smooth.fit_info_[h]
        best = info["best_iteration"] + (1 if name == "xgboost" else 0)  # rounds kept (xgb counts from 0)
        assert best >= window  # no round before the window's end can be the best
        # what was watched: the mean of the validation Rank IC of the window's rounds, the model
        # truncated after each of them (per-round predictions from the kept trees)
        ok = test[smooth.label(h)].notna().to_numpy()
        rows, booster = test[ok], smooth.models_[h]
        x = feature_matrix(rows, smooth.feature_names_)
        per_round = [
            rank_ic(rows["date"].to_numpy(), _first_rounds(booster, x, k), rows[smooth.label(h)].to_numpy())
            for k in range(best - window + 1, best + 1)
        ]
        assert info["best_valid_rank_ic"] == pytest.approx(np.mean(per_round), abs=1e-6)  # xgb logs 6 digits
    with pytest.raises(ValueError, match="eval_smoothing"):
        get_model_class(name)(**params, eval_metric="rank_ic", eval_smoothing=0).fit(train, valid=test)


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_nan_features_handled_natively(name: str, data: tuple) -> None:
    train, test, _ = data
    train = train.copy()
    train.loc[train.index % 5 == 0, "f3"] = np.nan
    model = get_model_class(name)(**SMALL[name]).fit(train)
    holed = test.copy()
    holed["f0"] = np.nan
    holed.loc[holed.index % 2 == 0, "f1"] = np.inf
    pred = model.predict(holed)[PRED_COLS].to_numpy()
    assert np.isfinite(pred).all()


def test_random_forest_imputes_train_medians(fitted: dict, data: tuple) -> None:
    train, test, _ = data
    model = fitted["random_forest"]
    feats = model.feature_names_
    expected = np.nanmedian(train[feats].to_numpy(dtype=np.float32), axis=0)
    np.testing.assert_allclose(model.medians_, expected, rtol=1e-6)
    holed = test.head(30).copy()
    holed[["f0", "f2"]] = np.nan
    filled = holed.copy()
    filled["f0"] = np.float32(model.medians_[feats.index("f0")])
    filled["f2"] = np.float32(model.medians_[feats.index("f2")])
    assert np.array_equal(
        model.predict(holed)[PRED_COLS].to_numpy(), model.predict(filled)[PRED_COLS].to_numpy()
    )


@pytest.mark.parametrize("name", NAMES)
def test_errors_are_clear(name: str, fitted: dict, data: tuple) -> None:
    _, test, _ = data
    cls = get_model_class(name)
    with pytest.raises(TypeError, match="unknown parameters"):
        cls(n_trees_typo=3)
    with pytest.raises(ValueError, match="f4"):
        fitted[name].predict(test.drop(columns=["f4"]))
    with pytest.raises(ValueError, match="target_h60"):
        cls().fit(test.drop(columns=["target_h60"]))
    with pytest.raises(ValueError, match="horizon"):
        fitted[name].explain(test, horizon=7)
    assert cls.name == name and cls.per_ticker is False and cls.uses_sequences is False


@pytest.mark.parametrize("name", NAMES)
def test_label_horizons_set_the_return_each_horizon_learns(name: str, data: tuple, tmp_path: Path) -> None:
    train, test, _ = data
    cls = get_model_class(name)
    valid = test if name != "random_forest" else None
    short = cls(**SMALL[name], label_horizons={20: 5, 60: 5}).fit(train, valid)
    # the longer horizons learn the 5-day return: one model, shared, whatever their own labels hold
    garbled = train.assign(target_h20=np.random.default_rng(3).normal(size=len(train)), target_h60=np.nan)
    again = cls(**SMALL[name], label_horizons={20: 5, 60: 5}).fit(garbled, valid)
    alone = cls(**SMALL[name], horizons=(5,)).fit(train, valid).predict(test)
    p, q = short.predict(test), again.predict(test)
    for h in HORIZONS:
        assert short.label(h) == "target_h5"
        assert np.array_equal(p[f"pred_h{h}"].to_numpy(), alone["pred_h5"].to_numpy())
        assert np.array_equal(p[f"pred_h{h}"].to_numpy(), q[f"pred_h{h}"].to_numpy())
    assert short.fit_info_[20]["shared_with"] == 5 and short.fit_info_[60]["label"] == "target_h5"
    loaded = cls.load(short.save(tmp_path))  # meta.json stores the keys as strings
    assert loaded.resolved_params()["label_horizons"] == {20: 5, 60: 5}
    assert np.array_equal(loaded.predict(test)[PRED_COLS].to_numpy(), p[PRED_COLS].to_numpy())
    # the default: the 20-day model learns the 5-day return, the 60-day model its own
    default = cls(**SMALL[name]).fit(train, valid)
    assert [default.label(h) for h in HORIZONS] == ["target_h5", "target_h5", "target_h60"]
    d = default.predict(test)
    assert np.array_equal(d["pred_h20"].to_numpy(), d["pred_h5"].to_numpy())
    assert not np.array_equal(d["pred_h60"].to_numpy(), d["pred_h5"].to_numpy())
    own = cls(**SMALL[name], label_horizons={}).fit(train, valid).predict(test)
    assert not np.array_equal(own["pred_h20"].to_numpy(), own["pred_h5"].to_numpy())
    assert cls(label_horizons=None).resolved_params()["label_horizons"] == {}
    # only the model's own horizons' returns are learned: none up to 5 days here, so its own
    assert [cls(horizons=(20, 60), label_horizons={20: 5}).label(h) for h in (20, 60)] == [
        "target_h20",
        "target_h60",
    ]
    assert cls(label_horizons={60: 30}).label(60) == "target_h20"  # the longest up to 30 days
    for bad in ({20: 0}, {20: 2.5}, {"x": 5}, {20: True}, [20, 5], 5):
        with pytest.raises(ValueError, match="label_horizons must map horizons to horizons"):
            cls(**SMALL[name], label_horizons=bad)


@pytest.mark.parametrize("name", NAMES)
def test_threads_are_the_n_jobs_the_fit_runs_on(name: str) -> None:
    """What the cost meter bills a tree model's fit and forecasts for: its ``n_jobs`` threads, every
    core for ``n_jobs`` <= 0 (as the libraries read it); a model without threads of its own, one."""
    cls = get_model_class(name)
    assert cls().threads == cls.defaults["n_jobs"]
    assert cls(n_jobs=3).threads == 3
    assert cls(n_jobs=-1).threads == cls(n_jobs=0).threads == (os.cpu_count() or 1)
    assert get_model_class("lstm")().threads == get_model_class("prophet")().threads == 1
