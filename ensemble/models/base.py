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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from ensemble.config import DEFAULT_HORIZONS

logger = logging.getLogger(__name__)

KEY_COLUMNS: tuple[str, str] = ("date", "ticker")
RAW_COLUMNS: tuple[str, ...] = ("close", "sector")
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


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The feature columns of a feature frame: everything but keys, targets, raw and oracle columns."""
    skip = set(KEY_COLUMNS) | set(RAW_COLUMNS)
    return [
        c
        for c in frame.columns
        if c not in skip and not is_target(c) and not c.startswith("oracle") and not c.startswith("pred_")
    ]


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
    for f in sorted(d.rglob("*")):
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
    meta: dict[str, Any] = json.loads(p.read_text())
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


class Forecaster(ABC):
    """One interface for all six models."""

    name: ClassVar[str]
    per_ticker: ClassVar[bool] = False
    uses_sequences: ClassVar[bool] = False
    supports_gpu: ClassVar[bool] = False

    def __init__(self, horizons: Sequence[int] = DEFAULT_HORIZONS, **params: Any) -> None:
        self.horizons = tuple(int(h) for h in horizons)
        self.params = dict(params)

    # -- the protocol ---------------------------------------------------------------------------
    @abstractmethod
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> Self: ...

    @abstractmethod
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame: ...

    @abstractmethod
    def save(self, directory: str | Path) -> Path: ...

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Self: ...

    # -- shared helpers ---------------------------------------------------------------------------
    @property
    def capabilities(self) -> dict[str, bool]:
        return {
            "per_ticker": self.per_ticker,
            "uses_sequences": self.uses_sequences,
            "supports_gpu": self.supports_gpu,
        }

    def get_params(self) -> dict[str, Any]:
        return {"horizons": list(self.horizons), **self.params}

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise ModelNotFittedError(f"{self.name}: call fit() before predict() or save()")

    def _check_targets(self, frame: pd.DataFrame) -> None:
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
