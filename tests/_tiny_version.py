"""A tiny trained registry version for the scoring and recommendation tests: every model family
(trees, a sequence model, Prophet per ticker) and the learned ensemble, fitted in-process (no Ray) on
a small synthetic market through the one data path (``ensemble.training.prepare_data``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ensemble.config import Settings, load_settings
from ensemble.cost import CostMeter
from ensemble.models import get_model_class
from ensemble.models.base import Forecaster
from ensemble.models.ensemble import VOL_COLUMN, EnsembleForecaster
from ensemble.monitor import training_reference
from ensemble.registry import ModelRegistry
from ensemble.training import Prepared, prepare_data

TINY: dict[str, Any] = {
    "horizons": [5, 20],
    "synthetic": {"n_tickers": 24, "n_days": 300, "seed": 5},
    "features": {"selection_k": 12, "sequence_length": 10},
    "training": {
        "training_stocks": 24,
        "training_days": 160,
        "valid_fraction": 0.3,
        "max_epochs": 2,
        "models": ["lstm", "xgboost", "lightgbm", "random_forest", "prophet"],
    },
    "models": {
        "xgboost": {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1},
        "lightgbm": {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1},
        "random_forest": {"n_estimators": 10, "max_depth": 4, "n_jobs": 1},
        "lstm": {
            "seq_len": 10,
            "hidden": 8,
            "batch_size": 128,
            "max_samples_per_epoch": 1000,
            "num_threads": 1,
        },
        "prophet": {"min_history": 100, "n_changepoints": 5, "regressors": ["mkt_log_level"]},
    },
    "scoring": {"min_history_days": 60},
}


def tiny_settings(**overrides: Any) -> Settings:
    return load_settings(overrides={**TINY, **overrides})


def train_tiny_version(root: Path, settings: Settings | None = None) -> tuple[ModelRegistry, str, Prepared]:
    """Fit every configured model and the ensemble, store them as one version, make it production."""
    settings = settings or tiny_settings()
    tr = settings.training
    meter = CostMeter(tr.cpu_hour_usd, tr.gpu_hour_usd, tr.cost_limit_usd)
    prep = prepare_data(settings, meter)
    models: dict[str, Forecaster] = {}
    preds: dict[str, pd.DataFrame] = {}
    for name in tr.models:
        cls = get_model_class(name)
        model = cls(horizons=settings.horizons, **settings.models.get(name, {}))
        models[name] = prep.member_rows(cls).fit(model)
        p = model.predict(prep.eval_frame)
        preds[name] = p[p["date"] >= prep.split.valid_start].reset_index(drop=True)
    hs = settings.horizons
    truth = prep.valid[["date", "ticker", *[f"target_h{h}" for h in hs], VOL_COLUMN]]
    ec = settings.ensemble
    ens = EnsembleForecaster(
        ec.weights, hs, mode=ec.mode, levels=ec.interval_levels, gate=ec.member_gate
    ).fit(preds, truth)
    registry = ModelRegistry(root)
    version = registry.create_version(
        models,
        metrics={"ensemble": {f"valid_rank_ic_h{hs[0]}": 0.0}},
        config=settings.model_dump(mode="json"),
        data_fingerprint=prep.fingerprint,
        extras={
            "preprocessor": prep.preprocessor.to_dict(),
            "ensemble": ens.to_dict(),
            "drift_reference": training_reference(settings, prep.train, prep.preprocessor.selected_),
            "training": {"split": prep.split.as_dict(), "degraded": {}},
        },
    )
    registry.set_alias("production", version, "tests")
    return registry, version, prep
