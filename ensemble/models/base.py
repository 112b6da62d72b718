"""The Forecaster protocol shared by all six models, and the helpers they share.

A *feature frame* is a long table keyed by (``date``, ``ticker``), sorted by (ticker, date), holding
feature columns (floats), optionally target columns ``target_h{h}`` (forward log returns) and
optionally the raw columns ``close`` and ``sector`` (carried for per-ticker models and grouping,
never used as features). ``predict`` returns one row per (date, ticker) of its input with columns
``pred_h{h}`` for each horizon: the forecast forward log return.

sklearn conventions: ``__init__`` stores parameters only; fitted state ends in ``_``.

Artifacts are safe native formats only (JSON metadata plus each library's own format). Nothing
is ever read with pickle: :func:`refuse_pickles` rejects a directory holding a pickle file (by
name or by content) before any load.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from ensemble.config import DEFAULT_HORIZONS
from ensemble.features.targets import KEY_COLUMNS as KEY_COLUMNS
from ensemble.features.targets import RAW_COLUMNS as RAW_COLUMNS
from ensemble.features.targets import feature_columns as feature_columns

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pck", ".dill")


class UnsafeArtifactError(RuntimeError):
    """An artifact directory holds something that would be unpickled: refused."""


class ModelNotFittedError(RuntimeError):
    pass


def target_col(h: int) -> str:
    return f"target_h{h}"


def pred_col(h: int) -> str:
    return f"pred_h{h}"


def is_target(col: str) -> bool:
    return col.startswith("target_h")


def _looks_like_pickle(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(2)
    # protocol 2+ pickles start with PROTO (0x80) then the protocol number
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def refuse_pickles(directory: str | Path) -> None:
    """Raise UnsafeArtifactError if any file in ``directory`` is a pickle by suffix or by content.

    torch ``.pt`` files are zip archives that contain a pickle; they are loaded only with
    ``torch.load(weights_only=True)``, which refuses arbitrary objects, so they pass here.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory not found: {d}")
    inside = d.resolve()
    for f in sorted(d.rglob("*")):
        if f.is_symlink() and not f.resolve().is_relative_to(inside):
            raise UnsafeArtifactError(
                f"refusing to load {f}: a symbolic link leading outside {d} (to {f.resolve()})"
            )
        if not f.is_file():
            continue
        if f.suffix.lower() in _PICKLE_SUFFIXES or _looks_like_pickle(f):
            raise UnsafeArtifactError(f"refusing to load {f}: pickle files are never loaded (unsafe format)")


def write_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p = d / META_FILE
    p.write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
    return p


def read_meta(directory: str | Path, expected_name: str) -> dict[str, Any]:
    refuse_pickles(directory)
    p = Path(directory) / META_FILE
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: not a saved model directory")
    try:
        meta = json.loads(p.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); a damaged model directory") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{p}: expected a JSON object, found {type(meta).__name__}")
    if meta.get("model") != expected_name:
        raise ValueError(f"{directory} holds model {meta.get('model')!r}, not {expected_name!r}")
    return meta


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, pd.Timestamp):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class Iteration:
    """What an iterative fit reports after each boosting round or epoch (see :class:`FitCallback`).

    ``horizon``: the horizon being fitted (tree models fit one model per horizon), None when one
    model fits every horizon (the sequence models). ``iteration``: 1-based round / epoch.
    ``metrics``: what the model measured this iteration (e.g. ``valid_rmse`` for the boosters,
    ``train_loss`` / ``valid_loss`` for the sequence models). ``predict_valid(k)``: the validation
    predictions of the model cut at ``k`` iterations (boosters only; None elsewhere). ``state()``:
    everything needed to resume the fit from this iteration (sequence models only; see
    ``ensemble.models.sequence.SequenceForecaster``).
    """

    model: str
    horizon: int | None
    iteration: int
    metrics: dict[str, float]
    predict_valid: Callable[[int], Any] | None = None
    state: Callable[[], dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FitCallback:
    """Hooks into a Forecaster's own ``fit`` (the one training path: Ray Tune trials and Ray Train
    workers pass a callback instead of copying the training loop). Every hook is optional.

    ``on_iteration`` is called after each boosting round / epoch; returning True ends the fit after
    that iteration, as early stopping would (the model keeps its best validated iteration so far
    where it tracks one: the sequence models, LightGBM, XGBoost with early stopping).
    """

    def on_fit_start(self, model: Forecaster) -> None:
        """Called once, before the first iteration."""

    def on_iteration(self, model: Forecaster, it: Iteration) -> bool:
        return False

    def on_fit_end(self, model: Forecaster) -> None:
        """Called once, after the fitted state is set."""


def notify(callbacks: Sequence[FitCallback], model: Forecaster, it: Iteration) -> bool:
    """Call every callback's ``on_iteration``; True when any asks to stop."""
    stop = False
    for cb in callbacks:
        stop = bool(cb.on_iteration(model, it)) or stop
    return stop


class Forecaster(ABC):
    """One interface for all six models."""

    name: ClassVar[str]
    per_ticker: ClassVar[bool] = False
    uses_sequences: ClassVar[bool] = False
    supports_gpu: ClassVar[bool] = False
    # Fits in rounds / epochs that it reports to FitCallback.on_iteration (a tuner may prune on them)
    iterative: ClassVar[bool] = False
    # Reads ``valid`` in ``fit`` to stop early (the round / epoch it keeps): the training path gives
    # it the tail of the training window (``training.early_stopping_fraction``), never the validation
    # dates the ensemble learns on (ensemble.training.Prepared.member_rows)
    early_stops: ClassVar[bool] = False
    # Given ``refit_on`` in ``fit``: after stopping on ``valid``, fits again on those rows (the whole
    # training window) for the rounds or epochs it stopped at, and keeps that model (the training
    # path asks it of the members named in ``training.refit_after_stopping``)
    refits: ClassVar[bool] = False
    # The hyperparameter search space, beside the model's defaults, in plain terms (no Ray here):
    # name -> (kind, low, high), kind one of 'uniform', 'loguniform' (floats), 'randint',
    # 'lograndint' (integers, high exclusive). Empty: the model is not tuned.
    search_space: ClassVar[dict[str, tuple[str, float, float]]] = {}
    # Parameters a tuning *trial* uses unless pinned in the settings (e.g. fewer trees): cheaper
    # trials that rank configurations the same way; the refit of the best one uses the full model.
    trial_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, horizons: Sequence[int] = DEFAULT_HORIZONS, **params: Any) -> None:
        self.horizons = tuple(int(h) for h in horizons)
        self.params = dict(params)

    @property
    def threads(self) -> int:
        """The CPU threads this model's fit and forecasts run on, as the cost meter bills them: one,
        unless the model says otherwise (the tree models: their ``n_jobs``)."""
        return 1

    # -- the protocol ---------------------------------------------------------------------------
    @abstractmethod
    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        *,
        callbacks: Sequence[FitCallback] = (),
        refit_on: pd.DataFrame | None = None,
    ) -> Self: ...

    def _refuse_refit(self, refit_on: pd.DataFrame | None) -> None:
        """Raise unless ``refit_on`` is None: for ``fit`` of a model that does not refit."""
        if refit_on is not None:
            raise ValueError(f"{self.name}: does not refit after stopping (Forecaster.refits is False)")

    @abstractmethod
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame: ...

    @abstractmethod
    def save(self, directory: str | Path) -> Path: ...

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Self: ...

    # -- shared helpers ---------------------------------------------------------------------------
    @classmethod
    def tunable(cls) -> bool:
        return bool(cls.search_space)

    @property
    def capabilities(self) -> dict[str, bool]:
        return {
            "per_ticker": self.per_ticker,
            "uses_sequences": self.uses_sequences,
            "supports_gpu": self.supports_gpu,
            "iterative": self.iterative,
            "early_stops": self.early_stops,
            "refits": self.refits,
            "tunable": self.tunable(),
        }

    @classmethod
    def param_names(cls) -> frozenset[str]:
        """The hyperparameter names ``__init__`` accepts besides ``horizons`` (any other is refused);
        the settings check ``models:`` against it when they are loaded."""
        raise NotImplementedError(f"{cls.__name__} does not declare its parameter names")

    def get_params(self) -> dict[str, Any]:
        return {"horizons": list(self.horizons), **self.params}

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise ModelNotFittedError(f"{self.name}: call fit() before predict() or save()")

    def check_targets(self, frame: pd.DataFrame) -> None:
        """Raise ValueError unless ``frame`` has a target column for every horizon of the model."""
        missing = [target_col(h) for h in self.horizons if target_col(h) not in frame.columns]
        if missing:
            raise ValueError(f"{self.name}: training frame lacks target columns {missing}")

    def _output(self, frame: pd.DataFrame, preds: np.ndarray) -> pd.DataFrame:
        """Assemble predict()'s result: keys of ``frame`` + one pred column per horizon."""
        out = frame.loc[:, list(KEY_COLUMNS)].reset_index(drop=True)
        preds = np.asarray(preds, dtype=float).reshape(len(out), len(self.horizons))
        for j, h in enumerate(self.horizons):
            out[pred_col(h)] = preds[:, j]
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
