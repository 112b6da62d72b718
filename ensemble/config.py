"""Typed settings for the whole platform: every default lives here, once.

Load with :func:`load_settings` (YAML file, then ``--set KEY=VALUE`` overrides parsed by
:func:`parse_overrides`). Secrets such as the PostgreSQL DSN are never written in YAML: they come from
the environment variable named in ``PostgresConfig.dsn_env``.

Everything is checked when the settings are loaded, before any data is read or Ray started: unknown
keys, values out of range, ensemble weights (finite, non-negative, only for trained models) and the
hyperparameters under ``models:`` (each model's own parameter names). A problem with the file or an
override raises :class:`ConfigError`; a value the schema refuses raises pydantic's ``ValidationError``,
which :func:`describe_validation_error` renders one line per problem.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ensemble.catalog import MODEL_NAMES

DEFAULT_HORIZONS: tuple[int, ...] = (5, 20, 60)


class ConfigError(ValueError):
    """The configuration cannot be read: a missing or unreadable file, invalid YAML, a bad ``--set``."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file does not exist."""


def _check_model_names(setting: str, names: Iterable[str]) -> None:
    """Raise ValueError, naming ``setting``, unless every name is a model of the catalogue."""
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"{setting} has unknown models {unknown}; known: {list(MODEL_NAMES)}")


class _Strict(BaseModel):
    """Unknown keys are an error: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Strict):
    n_tickers: int = Field(500, ge=2)  # tickers in the generated market
    n_days: int = Field(1260, ge=80)  # trading days in the generated market
    n_sectors: int = Field(11, ge=1, le=11)  # sectors (at most the 11 GICS sectors)
    seed: int = 7  # generator seed (same seed, same market)
    start: str = "2019-01-02"  # first trading date
    # Strength of the planted predictive signal (1.0 = the calibrated default, 0.0 = none).
    signal_strength: float = Field(1.0, ge=0.0)


class DataConfig(_Strict):
    source: Literal["synthetic", "files", "postgres"] = "synthetic"  # where prices come from
    path: str | None = None  # Parquet/CSV file (source=files)
    sectors_path: str | None = None  # optional ticker->sector CSV joined onto files
    tickers: list[str] | None = None  # restrict to these tickers (None = all)
    start: str | None = None  # first date to load, YYYY-MM-DD (None: all)
    end: str | None = None  # last date to load, YYYY-MM-DD (None: all)
    # contract violations: none = refuse, drop = drop rows, repair = fix (reported)
    clean: Literal["none", "drop", "repair"] = "none"

    @model_validator(mode="after")
    def _files_need_path(self) -> DataConfig:
        if self.source == "files" and not self.path:
            raise ValueError("data.path is required when data.source is 'files'")
        return self


class PostgresConfig(_Strict):
    dsn_env: str = "ENSEMBLE_PG_DSN"  # the DSN itself is a secret: read from this variable
    table: str = "prices"  # the prices table

    @field_validator("table")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v.isidentifier() or not v.isascii():
            raise ValueError(f"postgres.table must be a plain SQL identifier, got {v!r}")
        return v.lower()

    def dsn(self) -> str | None:
        return os.environ.get(self.dsn_env)


CrossSection = Literal["none", "demean", "zscore", "rank", "rank_gauss"]  # ensemble.features.normalize


class FeatureConfig(_Strict):
    selection_k: int = Field(100, ge=1)  # feature_selection_k
    sequence_length: int = Field(60, ge=5)  # window length L for the sequence models
    # Per-date normalisation of the selected features ('none': train-fitted robust scaling)
    cs_norm: CrossSection = "none"


class TrainingConfig(_Strict):
    training_stocks: int = Field(500, ge=1)  # tickers sampled for training
    training_days: int = Field(1000, ge=60)  # trading dates of training before the validation dates
    max_epochs: int = Field(50, ge=1)  # most epochs of a sequence model (early stopping ends sooner)
    tuning_trials: int = Field(30, ge=1)  # Ray Tune trials per tree model
    # Tree tuning trials fit on every N-th training date (the tuning rows and the refit keep every date):
    # adjacent dates share most of their features and overlapping labels, so the trials rank
    # configurations alike at 1/N of the rows (bench/train.py prints each model's validation Rank IC).
    tuning_date_stride: int = Field(2, ge=1)
    cost_limit_usd: float = Field(5.0, ge=0.0)  # no trial is launched once the cost estimate would pass this
    cpu_hour_usd: float = Field(0.05, ge=0.0)  # price of one CPU-hour for the cost estimate
    gpu_hour_usd: float = Field(1.20, ge=0.0)  # price of one GPU-hour for the cost estimate
    seed: int = 0  # seed of every model and of the tuning
    # Which models a training run fits (default: all six).
    models: list[str] = Field(default_factory=lambda: list(MODEL_NAMES))
    # Fraction of the dates (after the training window) held out for validation; the horizon is
    # purged between train and validation.
    valid_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    # The last fraction of the training dates on which the members that stop early (the boosters, the
    # sequence models) stop, and the tree models are tuned; they fit on the dates before it (labels
    # purged between). So the validation dates stay out of sample for every member, and the
    # ensemble's weights, score calibration and intervals learn on honest forecasts. 0: members
    # early-stop and tune on the validation dates themselves (their forecasts there have then seen
    # its labels, which flatters them to the ensemble).
    early_stopping_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    # The members that stop early and are then fitted again on the whole training window, for the
    # rounds (boosters, scaled by the rows gained) or epochs (sequence models, a fresh module) they
    # stopped at: they stop on the tail, but the model kept has seen the newest training dates too.
    # No validation label is read either way. The boosters only: refitted, their validation Rank IC
    # rose in 8 of 12 cells (2 models x 3 horizons x the synthetic market and the S&P 500 sample's
    # training years), the sequence models' fell in 8 of 12 (docs/evidence.md). []: keep every stopped fit.
    refit_after_stopping: list[str] = Field(default_factory=lambda: ["xgboost", "lightgbm"])
    # The tree models that are tuned (tuning_trials Ray Tune trials each, fitted before the stopping
    # tail and scored on it, the best refitted); the other tree models fit their module's DEFAULTS.
    # The forest only: tuned, its validation Rank IC rose in 15 of 18 cells (3 origins x 3 horizons x
    # the synthetic market and the S&P 500 sample's training years, +0.009 on average); the boosters'
    # rose in 12 of 36 (6 unchanged, +0.0004), for most of the tuning's cost (docs/evidence.md).
    tuned_models: list[str] = Field(default_factory=lambda: ["random_forest"])
    # The per-ticker member (Prophet) forecasts the validation dates the way scoring serves it
    # (ensemble.scoring.per_ticker_walk_forward): on each validation date, its models fitted through a
    # date more than this many trading dates before it are first refitted on the history up to it,
    # as scoring.prophet_refit_every_days does when scoring. So the ensemble's weights, gate and
    # calibration judge the forecasts that are served, not one fit stale by up to the whole
    # validation window. Each refit is one more fit per ticker. 0: the one fit through the training
    # end forecasts every validation date (and, in the walk-forward folds, every test date too).
    prophet_valid_refit_every_days: int = Field(21, ge=0)
    # The last date whose information training may use (YYYY-MM-DD; None: the last date of the data).
    # Later rows may be present: they change nothing (labels realised after it are purged).
    as_of: str | None = None
    # What the models learn: the forward return normalised per date (ensemble.features.normalize;
    # 'none': the raw return). rank_gauss (with the boosters early-stopping on validation Rank IC) had
    # the best validation Rank IC over the synthetic market and the S&P 500 sample's training years
    # (bench/select_defaults.py: +0.052 mean against +0.036 for the raw return, no test dates used).
    target: CrossSection = "rank_gauss"

    @field_validator("as_of", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> str | None:
        if v is None:
            return None
        try:  # YAML reads 2020-06-30 as a date already
            return datetime.date.fromisoformat(str(v)).isoformat()
        except ValueError:
            raise ValueError(f"training.as_of must be a date YYYY-MM-DD, got {v!r}") from None

    @field_validator("models")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"training.models must name at least one model of {list(MODEL_NAMES)}")
        _check_model_names("training.models", v)
        return v

    @field_validator("tuned_models")
    @classmethod
    def _known_tuned(cls, v: list[str]) -> list[str]:
        _check_model_names("training.tuned_models", v)
        return v

    @field_validator("refit_after_stopping")
    @classmethod
    def _known_refits(cls, v: list[str]) -> list[str]:
        _check_model_names("training.refit_after_stopping", v)
        return v


class RayConfig(_Strict):
    """How jobs.train uses Ray. Per-trial and per-worker resources default to values that fit 2 cores."""

    address: str | None = None  # None: RAY_ADDRESS if set, else start a local Ray
    storage_path: str = "artifacts/ray_results"  # Tune/Train results and checkpoints (path or URI)
    # Ray Tune (XGBoost, LightGBM, Random Forest)
    trial_cpus: float = Field(1.0, gt=0.0)
    max_concurrent_trials: int = Field(2, ge=1)  # trials running at once
    asha_grace_period: int = Field(20, ge=1)  # boosting rounds before ASHA may stop a trial
    # Ray Train (LSTM, Transformer)
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(2.0, gt=0.0)  # torch threads per worker; 2 fills a 2-core box
    use_gpu: Literal["auto", "yes", "no"] = "auto"  # auto: when the cluster has a GPU
    max_failures: int = Field(2, ge=0)  # Ray Train restarts from the latest checkpoint after a worker fails
    # Prophet fan-out: tickers per Ray task (None: about 4 tasks per CPU)
    prophet_chunk_size: int | None = Field(None, ge=1)
    prophet_task_cpus: float = Field(1.0, gt=0.0)  # CPUs each Prophet task reserves

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: object) -> object:
        # YAML 1.1 reads a bare yes / no (in a file or a --set value) as a boolean
        return ("yes" if v else "no") if isinstance(v, bool) else v


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
    )  # per member, the prior of the learned weights (mode: learned) or the weights (fixed)
    # learned: weights fitted on the members' validation forecasts, shrunk toward `weights` (the
    # prior); fixed: `weights` as given (ensemble/models/ensemble.py)
    mode: Literal["learned", "fixed"] = "learned"
    # learned: a member whose validation Rank IC is below 0 by more than one standard error
    # (significant) or at all (negative) gets prior weight 0 at that horizon; none: the prior as given
    member_gate: Literal["none", "negative", "significant"] = "significant"
    # central coverage of the prediction intervals
    interval_levels: list[float] = Field(default_factory=lambda: [0.8, 0.95])

    @field_validator("interval_levels")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        if not v or any(not (0.0 < a < 1.0) for a in v) or len(set(v)) != len(v):
            raise ValueError(f"ensemble.interval_levels must be distinct numbers in (0, 1), got {v}")
        return sorted(v)

    @field_validator("weights")
    @classmethod
    def _known_models(cls, v: dict[str, float]) -> dict[str, float]:
        _check_model_names("ensemble.weights", v)
        bad = {k: w for k, w in v.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"ensemble.weights must be finite and non-negative, got {bad}")
        if sum(v.values()) <= 0:
            raise ValueError("ensemble.weights must not all be zero")
        return v


class BacktestConfig(_Strict):
    """The walk-forward backtest (``python -m jobs.backtest``; ensemble/backtest/walkforward.py)."""

    mode: Literal["expanding", "rolling"] = "expanding"  # rolling: the last training.training_days
    every: int = Field(63, ge=1)  # retrain every N trading dates (one fold per test window)
    embargo: int = Field(5, ge=0)  # trading dates between a fold's cut-off and its first test date
    first_test: str | None = None  # first test date (YYYY-MM-DD); None: the last `test_days` dates
    test_days: int = Field(504, ge=1)  # about two years of trading dates
    seeds: int = Field(3, ge=1)  # sequence members averaged over seeds training.seed + 0..seeds-1
    cost_bps: float = Field(10.0, ge=0.0)  # transaction cost per unit of turnover, basis points
    quantile: float = Field(0.1, gt=0.0, le=0.5)  # long the top, short the bottom quantile
    top_k: int | None = Field(None, ge=1)  # or the top / bottom k tickers
    hold: int = Field(1, ge=1)  # rebalance every `hold` trading dates
    fold_cpus: float = Field(1.0, gt=0.0)  # CPUs each fold's Ray task reserves
    rolling_window: int = Field(63, ge=2)  # dates of the report's rolling Rank IC and coverage
    out_dir: str = "artifacts/backtest"  # the report goes to <out_dir>/<timestamp>/

    @field_validator("first_test", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> str | None:
        if v is None:
            return None
        try:
            return datetime.date.fromisoformat(str(v)).isoformat()
        except ValueError:
            raise ValueError(f"backtest.first_test must be a date YYYY-MM-DD, got {v!r}") from None


class ScoringConfig(_Strict):
    """As-of scoring (``python -m jobs.score``; ensemble/scoring.py)."""

    # Per-ticker Prophet models fitted through a date more than this many trading dates before the
    # as-of date are refitted on the latest history before scoring (0: refit every time)
    prophet_refit_every_days: int = Field(21, ge=0)
    # A ticker with fewer trading dates of history up to the as-of date is not scored at all
    min_history_days: int = Field(60, ge=20)
    out_dir: str = "artifacts/scores"  # Parquet/CSV go to <out_dir>/<as_of>/
    table: str = "recommendations"  # the PostgreSQL table (when a DSN is configured)

    @field_validator("table")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v.isidentifier() or not v.isascii():
            raise ValueError(f"scoring.table must be a plain SQL identifier, got {v!r}")
        return v.lower()


class RecommendConfig(_Strict):
    """The recommendation rules (ensemble/recommend.py): actions, position sizes, risk metrics."""

    # The forecast horizon the action and the position size use (None: the middle one of
    # `horizons`, 20 of 5, 20, 60); must be one of `horizons`
    horizon: int | None = Field(None, ge=1)
    # BUY when the expected log return over `horizon` is >= buy_threshold, SELL when <= sell_threshold,
    # either only when the forecast's confidence is >= min_confidence; otherwise HOLD. `signal`: the
    # thresholds apply to the expected return in excess of the universe's ('excess', the part the
    # models rank on) or to the whole expected return ('return', which includes the market's drift)
    signal: Literal["excess", "return"] = "excess"
    buy_threshold: float = 0.005  # BUY at or above this expected log return
    sell_threshold: float = -0.005  # SELL at or below this expected log return
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)  # below this confidence: HOLD
    # Position size: vol_target / the name's annualised volatility, capped at max_weight per name;
    # if the gross weight passes max_total, every weight is scaled down to it
    vol_target: float = Field(0.02, gt=0.0)
    max_weight: float = Field(0.05, gt=0.0, le=1.0)  # largest weight of one name
    max_total: float = Field(1.0, gt=0.0)  # largest gross weight of the book
    allow_short: bool = False  # a SELL holds a negative weight (else 0: out of the name)
    risk_window: int = Field(252, ge=20)  # trading days of returns behind vol, VaR, CVaR, drawdown, beta
    var_level: float = Field(0.95, gt=0.5, lt=1.0)  # confidence level of VaR and CVaR
    top_features: int = Field(3, ge=0)  # features named behind each forecast

    @model_validator(mode="after")
    def _thresholds(self) -> RecommendConfig:
        if not (math.isfinite(self.buy_threshold) and math.isfinite(self.sell_threshold)):
            raise ValueError("recommend: buy_threshold and sell_threshold must be finite")
        if self.sell_threshold >= self.buy_threshold:
            raise ValueError(
                f"recommend.sell_threshold ({self.sell_threshold}) must be below buy_threshold "
                f"({self.buy_threshold})"
            )
        if self.max_weight > self.max_total:
            raise ValueError(
                f"recommend.max_weight ({self.max_weight}) must not exceed max_total ({self.max_total})"
            )
        return self


class MonitoringConfig(_Strict):
    """Monitoring (issue 15): the prediction log (ensemble/predlog.py), accuracy tracking, drift and
    alert thresholds (ensemble/monitor.py, ``python -m jobs.monitor``)."""

    # The prediction log: PostgreSQL table `table` when the DSN variable (postgres.dsn_env) is set,
    # else Parquet part files under `log_dir`. jobs.score logs every forecast it scores when `log` is on
    log: bool = True
    log_dir: str = "artifacts/predlog"  # Parquet part files of the prediction log (no DSN)
    table: str = "prediction_log"  # PostgreSQL table of the prediction log (with a DSN)
    flush_rows: int = Field(1000, ge=1)  # the background writer flushes at this many buffered rows...
    flush_seconds: float = Field(5.0, gt=0.0)  # ...or when the oldest buffered row is this old
    max_buffer_rows: int = Field(1_000_000, ge=1)  # rows beyond it are refused (logged), never blocking
    fsync: bool = True  # Parquet: fsync each part file and its directory before acknowledging
    # Accuracy: the last `rolling_window` as-of dates whose horizon has passed; a date needs
    # `min_tickers` tickers for a Rank IC; a table row needs `min_dates` dates before it can alert
    rolling_window: int = Field(63, ge=2)
    min_tickers: int = Field(10, ge=2)  # tickers a date needs for a Rank IC
    min_dates: int = Field(5, ge=1)  # dates a row needs before it can alert
    min_rank_ic: float = 0.0  # alert when the rolling Rank IC falls below it
    max_rank_ic_drop: float | None = Field(0.05, ge=0.0)  # ... or this far below the version's validation
    baseline_windows: float = Field(2.0, ge=0.0)  # ...Rank IC, if measured over >= this many h-day windows
    # alert when the rolling directional accuracy falls below it
    min_directional_accuracy: float = Field(0.5, ge=0.0, le=1.0)
    coverage_tolerance: float = Field(0.10, ge=0.0, le=1.0)  # alert when coverage < level - tolerance
    # Drift: the model inputs of the last `drift_days` trading dates against the training reference
    # stored with the version (features: the version's selected features, or these)
    drift_days: int = Field(21, ge=1)
    # features watched for drift (None: the version's selected features)
    drift_features: list[str] | None = None
    drift_bins: int = Field(10, ge=2)  # quantile bins of the reference (PSI)
    drift_sample: int = Field(1000, ge=100)  # reference values kept per feature (KS)
    psi_threshold: float = Field(0.2, gt=0.0)  # PSI at or above it is drift
    ks_threshold: float = Field(0.1, gt=0.0, le=1.0)  # so is a KS statistic at or above it
    out_dir: str = "artifacts/monitor"  # jobs.monitor writes <out_dir>/<as_of>.json

    @field_validator("table")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v.isidentifier() or not v.isascii():
            raise ValueError(f"monitoring.table must be a plain SQL identifier, got {v!r}")
        return v.lower()


class ServingConfig(_Strict):
    host: str = "127.0.0.1"  # never 0.0.0.0 by default
    port: int = Field(8000, ge=1, le=65535)  # the service's port
    api_key_env: str = "ENSEMBLE_API_KEY"  # the environment variable holding the admin API key


class Settings(_Strict):
    # forecast horizons in trading days
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
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    registry_root: str = "artifacts/registry"  # the model registry: a path or a URI

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, v: list[int]) -> list[int]:
        if not v or any(h < 1 for h in v) or len(set(v)) != len(v):
            raise ValueError(f"horizons must be distinct positive integers, got {v}")
        return sorted(v)

    def action_horizon(self) -> int:
        """The horizon recommendations act on: ``recommend.horizon``, else the middle horizon."""
        h = self.recommend.horizon
        return h if h is not None else self.horizons[(len(self.horizons) - 1) // 2]

    @model_validator(mode="after")
    def _action_horizon(self) -> Settings:
        if self.recommend.horizon is not None and self.recommend.horizon not in self.horizons:
            raise ValueError(
                f"recommend.horizon {self.recommend.horizon} is not one of the horizons {self.horizons}"
            )
        return self

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        _check_model_names("models", v)
        from ensemble.models import get_model_class  # lazy: ensemble.models imports this module

        for name, params in v.items():
            known = get_model_class(name).param_names()
            for key in sorted(set(params) - known):
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"models.{name}: unknown hyperparameter {key!r}{hint}; known: {sorted(known)}"
                )
        return v

    @model_validator(mode="after")
    def _weights_for_trained_models(self) -> Settings:
        trained = self.training.models
        if "weights" in self.ensemble.model_fields_set:  # set by the user: must name trained models
            untrained = sorted(set(self.ensemble.weights) - set(trained))
            if untrained:
                raise ValueError(
                    f"ensemble.weights names {untrained}, which training.models {trained} does not train"
                )
        elif set(self.ensemble.weights) - set(trained):  # the defaults: keep the trained models'
            kept = {k: w for k, w in self.ensemble.weights.items() if k in trained}
            self.ensemble = self.ensemble.model_copy(update={"weights": kept})
        return self


def load_settings(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Defaults, updated by the YAML file at ``path`` (if any), then by ``overrides`` (nested dict).

    Raises :class:`ConfigError` when the file cannot be read as a YAML mapping and pydantic's
    ``ValidationError`` when a value is refused.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ConfigFileNotFoundError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p} must hold a mapping at top level, got {type(loaded).__name__}"
            )
        raw = loaded or {}
    if overrides:
        raw = _deep_merge(raw, overrides)
    return Settings.model_validate(raw)


def with_overrides(settings: Settings, overrides: dict[str, Any] | None) -> Settings:
    """``settings`` updated by ``overrides`` (a nested dict, e.g. from :func:`parse_overrides`), validated
    again (e.g. a registry version's stored settings with a command line's ``--set``)."""
    if not overrides:
        return settings
    return Settings.model_validate(_deep_merge(settings.model_dump(mode="json"), overrides))


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["training.tuning_trials=5", "ray.use_gpu=no"]`` -> nested dict (values parsed as YAML).

    A later item wins over an earlier one for the same key; an item that would descend into a key
    an earlier item set to a plain value (``training=5`` then ``training.seed=1``) is refused.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"--set expects KEY=VALUE with a dotted KEY (e.g. training.tuning_trials=5), got {item!r}"
            )
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"--set {key}: {raw!r} is not a valid YAML value: {_yaml_problem(exc)}"
            ) from None
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                section = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"--set {key}: {section!r} was set to {child!r} by an earlier --set, not a section "
                    "that can hold keys"
                )
            node = child
        node[parts[-1]] = value
    return out


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: ``training.tuning_trials: Input should be greater than or equal to 1 (got 0)``.

    Locations are dotted paths from the top of the settings (``synthetic.n_tickers`` also for an
    error raised by ``SyntheticConfig`` alone); an unknown key lists the keys its section has.
    """
    root = _model_by_title(exc.title)
    section = _SECTIONS.get(exc.title)
    prefix: tuple[str, ...] = () if root is Settings else (section or exc.title,)
    lines = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        where = ".".join(str(part) for part in loc)
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            parent = _section_class(root, err["loc"][:-1]) if root is not None else None
            known = sorted(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            msg = "unknown setting" + (f" (did you mean {close[0]!r}?)" if close else "")
            msg += f"; known: {known}" if known else ""
        elif err["type"] not in ("missing", "value_error") and not isinstance(err["input"], dict | BaseModel):
            shown = repr(err["input"])
            msg += f" (got {shown[:57] + '...' if len(shown) > 60 else shown})"
        lines.append(msg if not where or msg.startswith(where) else f"{where}: {msg}")
    return lines


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line, column)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _section_class(cls: type[BaseModel], path: Iterable[str | int]) -> type[BaseModel] | None:
    """The settings class at dotted ``path`` below ``cls`` (None where the path leaves the classes)."""
    for part in path:
        field = cls.model_fields.get(str(part))
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


# Section classes by name -> their key in Settings ("SyntheticConfig" -> "synthetic").
_SECTIONS: dict[str, str] = {
    f.annotation.__name__: name
    for name, f in Settings.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
}


def _model_by_title(title: str) -> type[BaseModel] | None:
    if title == Settings.__name__:
        return Settings
    section = _SECTIONS.get(title)
    return _section_class(Settings, [section]) if section else None


# -- the configuration reference (README) -------------------------------------------------------------
def _field_comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment written beside the field in this file (its trailing
    comment, else the comment lines just above it): the settings' descriptions, kept in one place."""
    import ast
    import io
    import tokenize

    source = Path(__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    trailing: dict[int, str] = {}  # a comment after code on its line
    comments: dict[int, str] = {}  # a line that is only a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, text = tok.start[0], tok.string.lstrip("#").strip()
            own_line = lines[row - 1].lstrip().startswith("#")
            (comments if own_line else trailing)[row] = text
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            text = trailing.get(stmt.end_lineno or stmt.lineno, "")
            if not text:
                above: list[str] = []
                line = stmt.lineno - 1
                while line in comments:
                    above.insert(0, comments[line])
                    line -= 1
                text = " ".join(above)
            out[(node.name, stmt.target.id)] = text
    return out


def config_reference() -> str:
    """Every setting of :class:`Settings` as a Markdown table: its dotted key, its default and what
    it means (the comment beside it in this file). README's configuration reference is this output
    (``python -m ensemble.config``; a test keeps them equal)."""
    import json

    notes = _field_comments()
    rows = ["| setting | default | meaning |", "|---|---|---|"]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def walk(section: BaseModel, prefix: str) -> None:
        cls = type(section).__name__
        for name in type(section).model_fields:
            value = getattr(section, name)
            key = f"{prefix}{name}"
            if isinstance(value, BaseModel):
                walk(value, f"{key}.")
                continue
            default = json.dumps(value, default=str)
            rows.append(f"| `{key}` | `{cell(default)}` | {cell(notes.get((cls, name), ''))} |")

    walk(Settings(), "")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
