"""Typed settings for the whole platform: every default lives here, once.

Load with :func:`load_settings` (YAML file, then environment overrides). Secrets such as the
PostgreSQL DSN are never written in YAML: they come from the environment variable named in
``PostgresConfig.dsn_env``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODEL_NAMES: tuple[str, ...] = ("lstm", "transformer", "xgboost", "lightgbm", "random_forest", "prophet")
DEFAULT_HORIZONS: tuple[int, ...] = (5, 20, 60)


class _Strict(BaseModel):
    """Unknown keys are an error: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Strict):
    n_tickers: int = Field(500, ge=2)
    n_days: int = Field(1260, ge=80)
    n_sectors: int = Field(11, ge=1, le=11)
    seed: int = 7
    start: str = "2019-01-02"
    # Strength of the planted predictive signal (1.0 = the calibrated default, 0.0 = none).
    signal_strength: float = Field(1.0, ge=0.0)


class DataConfig(_Strict):
    source: Literal["synthetic", "files", "postgres"] = "synthetic"
    path: str | None = None  # Parquet/CSV file (source=files)
    sectors_path: str | None = None  # optional ticker->sector CSV joined onto files
    tickers: list[str] | None = None  # restrict to these tickers (None = all)
    start: str | None = None
    end: str | None = None
    clean: Literal["none", "drop", "repair"] = "none"

    @model_validator(mode="after")
    def _files_need_path(self) -> DataConfig:
        if self.source == "files" and not self.path:
            raise ValueError("data.path is required when data.source is 'files'")
        return self


class PostgresConfig(_Strict):
    dsn_env: str = "ENSEMBLE_PG_DSN"  # the DSN itself is a secret: read from this variable
    table: str = "prices"

    @field_validator("table")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v.isidentifier() or not v.isascii():
            raise ValueError(f"postgres.table must be a plain SQL identifier, got {v!r}")
        return v.lower()

    def dsn(self) -> str | None:
        return os.environ.get(self.dsn_env)


class FeatureConfig(_Strict):
    selection_k: int = Field(100, ge=1)  # feature_selection_k
    sequence_length: int = Field(60, ge=5)  # window length L for the sequence models


class TrainingConfig(_Strict):
    training_stocks: int = Field(500, ge=1)
    training_days: int = Field(1000, ge=60)
    max_epochs: int = Field(50, ge=1)
    tuning_trials: int = Field(30, ge=1)
    cost_limit_usd: float = Field(5.0, ge=0.0)
    cpu_hour_usd: float = Field(0.05, ge=0.0)
    gpu_hour_usd: float = Field(1.20, ge=0.0)
    seed: int = 0
    # Which models a training run fits (default: all six).
    models: list[str] = Field(default_factory=lambda: list(MODEL_NAMES))
    # Fraction of the dates (after the training window) held out for validation; the horizon is
    # purged between train and validation.
    valid_fraction: float = Field(0.15, gt=0.0, lt=0.5)

    @field_validator("models")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(MODEL_NAMES))
        if unknown:
            raise ValueError(f"training.models has unknown models {unknown}; known: {list(MODEL_NAMES)}")
        return v


class RayConfig(_Strict):
    """How jobs.train uses Ray. Per-trial and per-worker resources default to values that fit 2 cores."""

    address: str | None = None  # None: RAY_ADDRESS if set, else start a local Ray
    storage_path: str = "artifacts/ray_results"  # Tune/Train results and checkpoints (path or URI)
    # Ray Tune (XGBoost, LightGBM, Random Forest)
    trial_cpus: float = Field(1.0, gt=0.0)
    max_concurrent_trials: int = Field(2, ge=1)
    asha_grace_period: int = Field(20, ge=1)  # boosting rounds before ASHA may stop a trial
    # Ray Train (LSTM, Transformer)
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    use_gpu: Literal["auto", "yes", "no"] = "auto"  # auto: when the cluster has a GPU
    max_failures: int = Field(2, ge=0)
    # Prophet fan-out: tickers per Ray task (None: about 4 tasks per CPU)
    prophet_chunk_size: int | None = Field(None, ge=1)
    prophet_task_cpus: float = Field(1.0, gt=0.0)


class EnsembleConfig(_Strict):
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "lstm": 0.20,
            "transformer": 0.20,
            "xgboost": 0.15,
            "lightgbm": 0.15,
            "random_forest": 0.10,
            "prophet": 0.20,
        }
    )

    @field_validator("weights")
    @classmethod
    def _known_models(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(MODEL_NAMES))
        if unknown:
            raise ValueError(f"ensemble.weights has unknown models {unknown}; known: {list(MODEL_NAMES)}")
        if any(w < 0 for w in v.values()):
            raise ValueError("ensemble.weights must be non-negative")
        if sum(v.values()) <= 0:
            raise ValueError("ensemble.weights must not all be zero")
        return v


class ServingConfig(_Strict):
    host: str = "127.0.0.1"  # never 0.0.0.0 by default
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str = "ENSEMBLE_API_KEY"


class Settings(_Strict):
    horizons: list[int] = Field(default_factory=lambda: list(DEFAULT_HORIZONS))
    data: DataConfig = Field(default_factory=DataConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    # Hyperparameter overrides per model, e.g. {"xgboost": {"max_depth": 4}}; unset keys keep each
    # model's DEFAULTS (ensemble/models/<model>.py).
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    registry_root: str = "artifacts/registry"

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, v: list[int]) -> list[int]:
        if not v or any(h < 1 for h in v) or len(set(v)) != len(v):
            raise ValueError(f"horizons must be distinct positive integers, got {v}")
        return sorted(v)

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(v) - set(MODEL_NAMES))
        if unknown:
            raise ValueError(f"models has unknown models {unknown}; known: {list(MODEL_NAMES)}")
        return v


def load_settings(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Defaults, updated by the YAML file at ``path`` (if any), then by ``overrides`` (nested dict)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {p}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config file {p} must hold a mapping at top level, got {type(loaded).__name__}")
        raw = loaded or {}
    if overrides:
        raw = _deep_merge(raw, overrides)
    return Settings.model_validate(raw)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
