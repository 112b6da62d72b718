"""The model catalogue: the one list of the platform's models, and where each one lives.

A leaf module (it imports nothing of the platform), so the typed settings can validate model names
without importing a model, and :mod:`ensemble.models` imports each class lazily from here. What a
model *is* (per ticker, sequence, GPU, tunable, iterative) is declared on its class as capability
flags (:class:`ensemble.models.base.Forecaster`); the jobs dispatch on those flags, never on names.
"""

from __future__ import annotations

# name -> (module, class), in the order the platform lists them
MODELS: dict[str, tuple[str, str]] = {
    "lstm": ("ensemble.models.lstm", "LSTMForecaster"),
    "transformer": ("ensemble.models.transformer", "TransformerForecaster"),
    "xgboost": ("ensemble.models.xgboost_model", "XGBoostForecaster"),
    "lightgbm": ("ensemble.models.lightgbm_model", "LightGBMForecaster"),
    "random_forest": ("ensemble.models.random_forest", "RandomForestForecaster"),
    "prophet": ("ensemble.models.prophet_model", "ProphetForecaster"),
}

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
