"""Look-ahead during training, end to end: poison every price after ``training.as_of`` (x10, NaNs)
and run the whole training path (features, the preprocessor's selection and scaling, Prophet per
ticker on Ray, the sequence models on Ray Train with early stopping, the trees tuned on Ray Tune with
Optuna + ASHA and refitted with early stopping, the ensemble). Every artifact of the poisoned version
must forecast the dates up to ``as_of`` bit-identically to the clean version's, every fitted state it
stores (preprocessor, ensemble) must be equal, and so must the tuning outcomes and the validation
metrics: nothing a training run fits may look past the last date it is allowed to use.

Tuning runs one trial at a time (``ray.max_concurrent_trials: 1``) so that Optuna's suggestions and
ASHA's decisions depend only on the trials' results, never on their timing."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_train_job import TINY

from ensemble.config import MODEL_NAMES, load_settings
from ensemble.cost import CostMeter
from ensemble.data.synthetic import generate_market
from ensemble.features.pipeline import feature_columns
from ensemble.models.base import KEY_COLUMNS, pred_col
from ensemble.models.ensemble import EnsembleForecaster
from ensemble.registry import ModelRegistry
from jobs.train import Prepared, prepare_data, run

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PRICE_COLS = ["open", "high", "low", "close"]
INPUT_COLS = [*PRICE_COLS, "volume", "pe", "pb", "market_cap", "dividend_yield", "sentiment"]
TREES = ["xgboost", "lightgbm", "random_forest"]  # every one tuned here (the default tunes the forest only)


def _poison(prices: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every input dated after ``as_of`` multiplied by 10, and NaNs scattered over its prices."""
    q = prices.copy()
    late = (q["date"] > as_of).to_numpy()
    for c in INPUT_COLS:
        q.loc[late, c] = q.loc[late, c] * 10.0
    rows = np.flatnonzero(late)
    rng = np.random.default_rng(0)
    for c in PRICE_COLS:
        q.loc[rng.choice(rows, len(rows) // 20, replace=False), c] = np.nan
    return q


def _settings(tmp_path: Path, as_of: str) -> Any:
    cfg = copy.deepcopy(TINY)
    # every tree model tuned: the tuning of each is guarded
    cfg["training"].update({"as_of": as_of, "tuning_trials": 2, "tuned_models": TREES})
    cfg["ray"].update({"max_concurrent_trials": 1, "storage_path": str(tmp_path / "ray_results")})
    return load_settings(overrides=cfg)


def _train(settings: Any, prices: pd.DataFrame, root: Path) -> tuple[Prepared, dict[str, Any]]:
    tr = settings.training
    meter = CostMeter(tr.cpu_hour_usd, tr.gpu_hour_usd, tr.cost_limit_usd)
    prep = prepare_data(settings, meter, prices=prices)
    summary = run(settings, registry_root=str(root), promote=False, progress=False, prepared=prep)
    return prep, summary


def _same_numbers(a: Any, b: Any) -> bool:
    """Equal nested dicts / lists / floats, NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_numbers(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def test_poisoning_every_price_after_as_of_changes_no_fitted_artifact(ray_local, tmp_path: Path) -> None:
    settings = _settings(tmp_path, "2000-01-03")  # as_of replaced below, once the dates are known
    clean_prices = generate_market(settings.synthetic, horizons=tuple(settings.horizons)).prices
    dates = pd.DatetimeIndex(sorted(clean_prices["date"].unique()))
    as_of = dates[int(len(dates) * 0.8)]  # well before the end: 20% of the dates lie after it
    settings = _settings(tmp_path, as_of.date().isoformat())
    horizons = list(settings.horizons)
    poisoned_prices = _poison(clean_prices, as_of)

    clean, s_clean = _train(settings, clean_prices, tmp_path / "clean")
    dirty, s_dirty = _train(settings, poisoned_prices, tmp_path / "poisoned")

    # not vacuous: the poisoned run was given, and computed features from, different data after as_of
    assert not s_clean["degraded"] and not s_dirty["degraded"], (s_clean["degraded"], s_dirty["degraded"])
    assert clean.fingerprint != dirty.fingerprint
    feats = feature_columns(clean.eval_frame)
    late_c = clean.eval_frame[clean.eval_frame["date"] > as_of]
    late_d = dirty.eval_frame[dirty.eval_frame["date"] > as_of]
    assert len(late_c) > 0 and late_c[list(KEY_COLUMNS)].equals(late_d[list(KEY_COLUMNS)])
    assert not np.array_equal(late_c[feats].to_numpy(), late_d.reindex(columns=feats).to_numpy())
    assert late_d["close"].isna().any()

    # every difference is collected, so that a leak names every artifact it reaches
    leaks: list[str] = []
    # the ensemble's universe history (its interval and expected-return calibration): the labels
    # realised by as_of, the same in both runs; a label whose window passes as_of is NaN in both
    hist_c, hist_d = clean.label_history(), dirty.label_history()
    if not hist_c.equals(hist_d):
        leaks.append("label history (the ensemble's calibration history) differs")
    assert hist_c["date"].max() == as_of
    for h in horizons:
        realised_by = dates[dates.get_loc(as_of) - h]
        late_labels = hist_c.loc[hist_c["date"] > realised_by, f"target_h{h}"]
        assert len(late_labels) > 0 and late_labels.isna().all(), h
        assert hist_c.loc[hist_c["date"] <= realised_by, f"target_h{h}"].notna().any(), h
    reg_c, reg_d = ModelRegistry(tmp_path / "clean"), ModelRegistry(tmp_path / "poisoned")
    v_c, v_d = s_clean["version"], s_dirty["version"]
    assert reg_c.manifest(v_c)["data_fingerprint"] != reg_d.manifest(v_d)["data_fingerprint"]
    if s_clean["split"] != s_dirty["split"]:
        leaks.append(f"split: {s_clean['split']} != {s_dirty['split']}")
    # the fitted state stored beside the models: the preprocessor's selection, medians and scaling,
    # and whatever else a version keeps (an ensemble's learned state); "training" holds wall times
    extras = sorted(set(reg_c.manifest(v_c)["extras"]) - {"training"})
    assert "preprocessor" in extras and extras == sorted(set(reg_d.manifest(v_d)["extras"]) - {"training"})
    for extra in extras:
        if not _same_numbers(reg_c.load_extra(v_c, extra), reg_d.load_extra(v_d, extra)):
            leaks.append(f"extra {extra!r}: the fitted state differs")

    # every artifact, loaded back from the registry, forecasts the clean frame's dates <= as_of
    # bit-identically (the training rows, then the validation rows with their sequence history)
    frame = pd.concat([clean.train, clean.eval_frame]).drop_duplicates(list(KEY_COLUMNS), keep="last")
    frame = frame[frame["date"] <= as_of]
    frame = frame.sort_values(["ticker", "date"], kind="mergesort").reset_index(drop=True)
    assert frame["date"].max() == as_of
    models_c, models_d = reg_c.load_version(v_c), reg_d.load_version(v_d)
    assert sorted(models_c) == sorted(models_d) == sorted(MODEL_NAMES)

    def compare(name: str, pc: pd.DataFrame, pd_: pd.DataFrame, hs: list[int] = horizons) -> None:
        assert pc[list(KEY_COLUMNS)].equals(frame[list(KEY_COLUMNS)]), name
        assert pd_[list(KEY_COLUMNS)].equals(frame[list(KEY_COLUMNS)]), name
        for h in hs:
            a, b = pc[pred_col(h)].to_numpy(), pd_[pred_col(h)].to_numpy()
            assert np.isfinite(a).mean() > 0.5, (name, h)  # forecasts to compare, not NaN == NaN
            if not np.array_equal(a, b, equal_nan=True):
                leaks.append(f"{name} h{h}: {int((a != b).sum())} of {len(a)} forecasts differ")

    preds_c: dict[str, pd.DataFrame] = {}
    preds_d: dict[str, pd.DataFrame] = {}
    for name in MODEL_NAMES:
        preds_c[name] = models_c[name].predict(frame)
        try:
            preds_d[name] = models_d[name].predict(frame)
        except (KeyError, ValueError) as exc:  # e.g. fitted on other selected features
            leaks.append(f"{name}: {exc}")
            continue
        compare(name, preds_c[name], preds_d[name])
    if preds_d.keys() == preds_c.keys():  # the learned ensemble: weights, calibration, intervals
        ens_c = EnsembleForecaster.from_dict(reg_c.load_extra(v_c, "ensemble"))
        ens_d = EnsembleForecaster.from_dict(reg_d.load_extra(v_d, "ensemble"))
        out_c, out_d = ens_c.predict(preds_c, frame), ens_d.predict(preds_d, frame)
        # the horizons whose labels the tiny validation window holds (the others forecast NaN)
        usable = [h for h in horizons if ens_c.usable_[h]]
        assert usable and usable == [h for h in horizons if ens_d.usable_[h]], (ens_c.usable_, ens_d.usable_)
        compare("ensemble", out_c, out_d, usable)
        if not out_c.equals(out_d):
            leaks.append("ensemble: its excess returns, intervals or confidence differ")

    # the same tuning outcomes (Optuna's trials, ASHA's decisions, the best trial) and validation metrics
    tuned = sorted(n for n, d in s_clean["details"].items() if "best_params" in d)
    assert tuned == ["lightgbm", "random_forest", "xgboost"]
    for name in tuned:
        dc, dd = s_clean["details"][name], s_dirty["details"][name]
        assert dc["trials_run"] == 2 and dc["stop_reason"] is None, (name, dc)
        for key in ("trials_run", "best_params", "best_score"):
            if not _same_numbers(dc[key], dd[key]):
                leaks.append(f"{name} tuning {key}: {dc[key]} != {dd[key]}")
    for name, m in s_clean["metrics"].items():
        if not _same_numbers(m, s_dirty["metrics"][name]):
            leaks.append(f"{name} validation metrics: {m} != {s_dirty['metrics'][name]}")
    assert not leaks, "look-ahead during training:\n" + "\n".join(leaks)
    # and the validation window did end at as_of (the premise of the test)
    assert pd.Timestamp(s_clean["split"]["valid_end"]) == as_of


def _member_settings(tmp_path: Path, fraction: float, models: list[str], **training: Any) -> Any:
    """TINY with one tuning trial at a time (every tree model tuned), ``models`` only, stopping on
    the training tail's ``fraction`` of dates (0: on the validation dates), and ``training`` settings on top."""
    cfg = copy.deepcopy(TINY)
    cfg["training"].update(
        tuning_trials=1,
        tuned_models=TREES,
        models=models,
        early_stopping_fraction=fraction,
        **training,
    )
    cfg["ray"].update({"max_concurrent_trials": 1, "storage_path": str(tmp_path / "ray_results")})
    return load_settings(overrides=cfg)


def test_no_member_reads_a_validation_label(ray_local, tmp_path: Path) -> None:
    """The members learn nothing from the validation dates, on which the ensemble learns its weights,
    score calibration and intervals: poisoning every price after the training window's end changes
    the validation rows (features and labels) and leaves every tree member jobs.train stores
    (tuned on Ray Tune; the boosters refitted stopping on the training tail, then fitted again on
    the whole training window; the forest on the whole window) bit-identical, and so are the tuning
    outcomes. With ``training.early_stopping_fraction`` 0 the
    boosters stop, and every tuning trial is scored, on the validation dates, and the same poisoning
    moves them: the check can fail."""
    s = _member_settings(tmp_path, 0.15, TREES)
    clean_prices = generate_market(s.synthetic, horizons=tuple(s.horizons)).prices
    clean = prepare_data(s, CostMeter(0.0, 0.0, 0.0), prices=clean_prices)
    train_end = clean.split.train_end
    poisoned_prices = _poison(clean_prices, train_end)
    frame = clean.train  # forecast on the training dates: the same features in both runs
    horizons = list(s.horizons)

    def changed(settings: Any, root: Path) -> list[str]:
        """The stored members whose training-date forecasts, or whose tuning outcome (the trial's
        score on its tuning rows, the parameters chosen), differ between clean and poisoned prices."""
        out = []
        models, details = {}, {}
        for label, prices in (("clean", clean_prices), ("poisoned", poisoned_prices)):
            prep, summary = _train(settings, prices, root / label)
            assert summary["split"]["train_end"] == str(train_end.date()) and not summary["degraded"]
            models[label] = ModelRegistry(root / label).load_version(summary["version"])
            details[label] = summary["details"]
            if label == "poisoned":  # not vacuous: the validation rows the members could read moved
                feats = feature_columns(prep.valid)
                assert not np.array_equal(
                    clean.valid[feats].to_numpy(), prep.valid[feats].to_numpy(), equal_nan=True
                )
        for name in ("xgboost", "lightgbm"):  # each stored booster is the fit again on the whole window
            again = settings.training.early_stopping_fraction > 0
            assert all(
                ("stopped_n_train_rows" in i) == again for i in models["clean"][name].fit_info_.values()
            )
        for name in settings.training.models:
            a, b = models["clean"][name].predict(frame), models["poisoned"][name].predict(frame)
            if not all(np.array_equal(a[pred_col(h)], b[pred_col(h)], equal_nan=True) for h in horizons):
                out.append(name)
            for key in ("best_score", "best_params"):
                if not _same_numbers(details["clean"][name][key], details["poisoned"][name][key]):
                    out.append(f"{name} {key}")
        return out

    assert changed(s, tmp_path / "tail") == []
    moved = changed(_member_settings(tmp_path, 0.0, TREES), tmp_path / "validation")
    # the boosters stop on the validation dates; every tuning trial is scored there
    assert {"xgboost best_score", "lightgbm best_score", "random_forest best_score"} <= set(moved), moved


def test_a_refitted_sequence_member_reads_no_validation_label(ray_local, tmp_path: Path) -> None:
    """The sequence refit (``training.refit_after_stopping``: the LSTM on Ray Train stops on the
    training tail, then a fresh module trains on the whole training window for the best epochs):
    poisoning every price after the training window's end leaves its forecasts, its stopped fit's
    validation losses and its refit record bit-identical. With ``early_stopping_fraction`` 0 it
    stops on the validation dates and the same poisoning moves those losses: the check can fail."""
    s = _member_settings(tmp_path, 0.15, ["lstm"], refit_after_stopping=["lstm"])
    clean_prices = generate_market(s.synthetic, horizons=tuple(s.horizons)).prices
    clean = prepare_data(s, CostMeter(0.0, 0.0, 0.0), prices=clean_prices)
    poisoned_prices = _poison(clean_prices, clean.split.train_end)
    frame = clean.train.sort_values(["ticker", "date"], kind="mergesort").reset_index(drop=True)

    def fits(settings: Any, root: Path) -> dict[str, Any]:
        out = {}
        for label, prices in (("clean", clean_prices), ("poisoned", poisoned_prices)):
            _, summary = _train(settings, prices, root / label)
            assert not summary["degraded"], summary["degraded"]
            out[label] = ModelRegistry(root / label).load_version(summary["version"])["lstm"]
        return out

    def figures(model: Any) -> list[dict[str, Any]]:
        """The refit record (if any) and the stopped fit's epochs (with their validation losses),
        wall times left out."""
        records = [model.refit_] if model.refit_ else []
        return [{k: v for k, v in r.items() if k != "seconds"} for r in [*records, *model.history_]]

    m = fits(s, tmp_path / "tail")
    assert m["clean"].refit_ and m["poisoned"].refit_  # the stored module is the refit
    assert any("valid_loss" in r for r in m["clean"].history_), m["clean"].history_
    assert _same_numbers(figures(m["clean"]), figures(m["poisoned"]))
    a, b = m["clean"].predict(frame), m["poisoned"].predict(frame)
    for h in s.horizons:
        assert np.isfinite(a[pred_col(h)]).mean() > 0.5, h  # forecasts to compare, not NaN == NaN
        assert np.array_equal(a[pred_col(h)], b[pred_col(h)], equal_nan=True), h
    m0 = fits(_member_settings(tmp_path, 0.0, ["lstm"]), tmp_path / "validation")
    assert not _same_numbers(figures(m0["clean"]), figures(m0["poisoned"]))
