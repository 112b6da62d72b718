"""The global tree models' shared machinery and their per-prediction explanations.

XGBoost, LightGBM and Random Forest are *global cross-sectional* models: one model per horizon over
all (ticker, date) rows, each row predicted from its own features only (horizons that learn the same
return share one model: ``label_horizons`` in :data:`COMMON_DEFAULTS`). :class:`TreeForecaster`
holds what the three share (parameters, the feature matrix, the fit loop over horizons, predict,
explain, save / load); each subclass supplies the library calls.

Point in time
    A row's prediction is a function of that row's features and of fitted state (trees, and for
    the Random Forest the training medians used to impute NaN): nothing else in the frame given to
    ``predict`` is read, so a prediction at t never depends on a row dated after t.

Features
    ``feature_columns(train)`` at fit, stored in order; ``predict`` selects the same names from its
    frame (extra columns are ignored, missing ones are an error naming them). +-inf is treated as
    missing (NaN). Matrices are float32 (what the three libraries use internally). The boosters are
    given positional feature names (f0, f1, ...): real names live in ``meta.json``, so no feature
    name can trip a library's name rules.

Explanations
    :meth:`TreeForecaster.contributions` gives, per row, one additive contribution per feature plus
    a ``bias`` such that ``bias + sum(contributions) == prediction`` (up to float rounding):
    XGBoost's ``pred_contribs`` and LightGBM's ``pred_contrib`` (TreeSHAP), and for the Random Forest
    the tree path decomposition of :func:`forest_path_contributions`. :meth:`TreeForecaster.explain`
    ranks the largest absolute contributions of each row.

Artifacts: one file per horizon in the library's native, non-pickle format (``.ubj``, LightGBM
text, skops) + ``meta.json``. Before reading, the directory is checked for pickles
(:func:`refuse_pickles`) and each artifact's first bytes must match its format's signature, so
a pickle of any protocol planted under an artifact's name is refused, never read.
"""

from __future__ import annotations

import logging
import os
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from ensemble.backtest.metrics import rank_ic
from ensemble.config import DEFAULT_HORIZONS
from ensemble.models.base import (
    KEY_COLUMNS,
    FitCallback,
    Forecaster,
    UnsafeArtifactError,
    feature_columns,
    read_meta,
    target_col,
    write_meta,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BIAS_COLUMN = "bias"


def check_magic(path: Path, magics: Sequence[bytes]) -> None:
    """Raise UnsafeArtifactError unless ``path`` starts with one of the format signatures."""
    if not path.is_file():
        raise FileNotFoundError(f"artifact {path} missing")
    n = max(len(m) for m in magics)
    with path.open("rb") as fh:
        head = fh.read(n)
    if not any(head.startswith(m) for m in magics):
        raise UnsafeArtifactError(
            f"refusing to load {path}: it does not start with the expected format signature "
            f"{[m.decode('latin-1') for m in magics]} (got {head!r}); a replaced or foreign file is never read"
        )


def feature_matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """``frame[names]`` as a C-contiguous float32 matrix, +-inf -> NaN; errors name bad columns."""
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks feature columns {missing[:10]} (of {len(missing)}) seen at fit")
    bad = [
        c
        for c in names
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if bad:
        raise ValueError(f"feature columns must be numeric; not numeric: {bad[:10]}")
    x = frame[names].to_numpy(dtype=np.float32, na_value=np.nan)
    inf = np.isinf(x)
    if inf.any():
        x = np.where(inf, np.float32(np.nan), x)
    return np.ascontiguousarray(x)


def top_contributions(
    keys: pd.DataFrame, contrib: np.ndarray, names: Sequence[str], top: int
) -> pd.DataFrame:
    """Long frame (date, ticker, rank, feature, contribution): each row's ``top`` largest |contribution|.

    Ties are broken by feature order (stable sort), so the result is deterministic.
    """
    n, f = contrib.shape
    k = max(0, min(int(top), f))
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(contrib, order, axis=1)
    keys = keys.reset_index(drop=True)
    out = pd.DataFrame({c: np.repeat(keys[c].to_numpy(), k) for c in KEY_COLUMNS})
    out["rank"] = np.tile(np.arange(1, k + 1), n)
    out["feature"] = np.asarray(names, dtype=object)[order.ravel()] if n else np.array([], dtype=object)
    out["contribution"] = picked.ravel().astype(np.float64)
    return out


def forest_path_contributions(forest: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-prediction decomposition of a fitted sklearn forest regressor (RandomForest, ExtraTrees).

    The tree path decomposition (Saabas; the ``treeinterpreter`` method): along a sample's path from
    the root to its leaf, every split moves the node value from ``value[parent]`` to
    ``value[child]``; that change is credited to the parent's split feature. Per tree, ``value[root]
    + sum(credits) == value[leaf]`` = the tree's prediction exactly; averaged over the trees this
    gives ``bias + contrib.sum(1) == forest prediction`` (up to float rounding). Unlike impurity
    importances this is per prediction: it says how much each feature moved *this* row's forecast.

    Computed for all trees at once as ``decision_path (rows x nodes, sparse) @ D (nodes x features)``
    where ``D[j, feature[parent(j)]] = value[j] - value[parent(j)]``. Single-output regressors only.
    Returns ``(contrib (n, n_features), bias (n,))``.
    """
    from scipy import sparse

    trees = list(forest.estimators_)
    n_features = int(forest.n_features_in_)
    blocks = []
    bias = 0.0
    for est in trees:
        t = est.tree_
        value = t.value[:, 0, 0].astype(np.float64)
        parent = np.full(t.node_count, -1, dtype=np.int64)
        inner = np.flatnonzero(t.children_left >= 0)
        parent[t.children_left[inner]] = inner
        parent[t.children_right[inner]] = inner
        child = np.flatnonzero(parent >= 0)
        delta = value[child] - value[parent[child]]
        blocks.append(
            sparse.csr_matrix(
                (delta, (child, t.feature[parent[child]].astype(np.int64))), shape=(t.node_count, n_features)
            )
        )
        bias += value[0]
    d = sparse.vstack(blocks, format="csr")
    indicator, _ = forest.decision_path(x)
    contrib = np.asarray((indicator.astype(np.float64) @ d).todense()) / len(trees)
    return contrib, np.full(x.shape[0], bias / len(trees))


def _label_map(owner: str, value: Any) -> dict[int, int]:
    """``label_horizons`` with integer keys (JSON stores them as strings); None: {} (every horizon
    learns its own return)."""
    if value is None:
        return {}
    error = ValueError(
        f"{owner}: label_horizons must map horizons to horizons (integers >= 1), got {value!r}"
    )
    if not isinstance(value, Mapping):
        raise error
    out: dict[int, int] = {}
    for k, v in value.items():
        if not str(k).isdigit() or isinstance(v, bool) or not isinstance(v, int) or int(k) < 1 or v < 1:
            raise error
        out[int(k)] = v
    return out


# Parameters the three tree models share, beside each module's DEFAULTS.
COMMON_DEFAULTS: dict[str, Any] = {
    # horizon -> the horizon whose forward return its model learns (a horizon not listed learns its
    # own; a listed one learns the longest of the model's horizons up to the mapped one, its own when
    # none is). Horizons that learn the same return share one fitted model (fitted once, saved per
    # horizon); the ensemble's calibration maps each horizon's forecast to that horizon's return.
    # {20: 5}: chosen on validation dates only (docs/evidence.md, bench/select_defaults.py): the 5-day models
    # ranked the 20-day return better than models fitted on its overlapping, noisier labels; at 60
    # days the evidence conflicted, so the 60-day models keep their own.
    "label_horizons": {20: 5},
}


class TreeForecaster(Forecaster):
    """One tree model per horizon over all (ticker, date) rows; see the module docstring.

    Subclasses set ``name``, ``defaults`` (every parameter with its default; unknown parameters are
    refused; :data:`COMMON_DEFAULTS` are added), ``artifact_suffix`` and ``artifact_magic``, and
    implement the library hooks.
    """

    defaults: ClassVar[dict[str, Any]] = {}
    artifact_suffix: ClassVar[str] = ""
    artifact_magic: ClassVar[tuple[bytes, ...]] = ()

    @classmethod
    def param_names(cls) -> frozenset[str]:
        return frozenset(cls.defaults) | frozenset(COMMON_DEFAULTS)

    def __init__(self, horizons: Sequence[int] = DEFAULT_HORIZONS, **params: Any) -> None:
        unknown = sorted(set(params) - self.param_names())
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown parameters {unknown}; known: {sorted(self.param_names())}"
            )
        if "label_horizons" in params:
            params["label_horizons"] = _label_map(type(self).__name__, params["label_horizons"])
        super().__init__(horizons, **params)

    def resolved_params(self) -> dict[str, Any]:
        return {**COMMON_DEFAULTS, **self.defaults, **self.params}

    @property
    def threads(self) -> int:
        """Its ``n_jobs`` threads; every core of this machine for ``n_jobs`` <= 0, as scikit-learn,
        XGBoost and LightGBM read it."""
        n = int(self.resolved_params()["n_jobs"])
        return n if n > 0 else os.cpu_count() or 1

    def label(self, h: int) -> str:
        """The target column the model of horizon ``h`` learns (``label_horizons``, see
        :data:`COMMON_DEFAULTS`)."""
        to = self.resolved_params()["label_horizons"].get(int(h))
        shorter = [k for k in self.horizons if to is not None and k <= min(int(h), to)]
        return target_col(max(shorter) if shorter else int(h))

    # -- library hooks --------------------------------------------------------------------------------
    def _prepare(self, x: np.ndarray) -> None:
        """Fit any input preprocessing from the training matrix (stored as fitted state)."""

    def _transform(self, x: np.ndarray) -> np.ndarray:
        """Apply the fitted preprocessing (identity unless overridden)."""
        return x

    @abstractmethod
    def _fit_one(
        self,
        h: int,
        x: np.ndarray,
        y: np.ndarray,
        xv: np.ndarray | None,
        yv: np.ndarray | None,
        p: dict[str, Any],
        callbacks: Sequence[FitCallback] = (),
        valid_dates: np.ndarray | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Fit the model of horizon ``h``; return (model, info for meta.json). Iterative models
        report each round to ``callbacks`` (:class:`ensemble.models.base.Iteration`); ``valid_dates``
        (the date of each validation row) lets them early-stop on the validation Rank IC."""

    @abstractmethod
    def _predict_one(self, model: Any, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _contrib_one(self, model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(contributions (n, n_features), bias (n,)) with bias + contributions.sum(1) == prediction."""

    @abstractmethod
    def _save_one(self, model: Any, path: Path) -> None: ...

    @abstractmethod
    def _load_one(self, path: Path) -> Any: ...

    def _rank_ic_scorer(
        self,
        p: dict[str, Any],
        allowed: tuple[str, ...],
        valid_dates: np.ndarray | None,
        yv: np.ndarray | None,
    ) -> Any:
        """Check ``p['eval_metric']`` against ``allowed``; when it is 'rank_ic', the validation Rank IC
        of a prediction vector (what the booster's early stopping then watches), else None."""
        if p["eval_metric"] not in allowed:
            raise ValueError(
                f"{self.name}: eval_metric must be one of {list(allowed)}, got {p['eval_metric']!r}"
            )
        if p["eval_metric"] != "rank_ic" or yv is None:
            return None
        if valid_dates is None:
            raise ValueError(f"{self.name}: eval_metric='rank_ic' needs the validation rows' dates")
        dates, target = valid_dates, np.asarray(yv, dtype=np.float64)
        window = int(p.get("eval_smoothing", 1))
        if window < 1:
            raise ValueError(f"{self.name}: eval_smoothing must be >= 1, got {window}")
        history: list[float] = []

        def score(pred: np.ndarray) -> float:
            # Called once per boosting round, in order. With a window w > 1 early stopping watches the
            # mean Rank IC of the last w rounds, and no round before the w-th can be the best: on a
            # weak signal the per-round figure is noisy enough that its first rounds often peak by
            # chance and a one-tree model is kept (off by default: docs/evidence.md).
            history.append(rank_ic(dates, pred, target))
            if len(history) < window:
                return -1.0 - (window - len(history))  # below any Rank IC, and rising toward it
            return float(np.mean(history[-window:]))

        return score

    def _refit_one(
        self,
        h: int,
        xr: np.ndarray,
        yr: np.ndarray,
        n_stopped: int,
        stopped: dict[str, Any],
        p: dict[str, Any],
    ) -> tuple[Any, dict[str, Any]]:
        """The model of horizon ``h`` fitted again on the labelled rows of ``xr`` / ``yr`` with no
        validation, for the ``stopped['n_rounds']`` rounds the stopped fit kept (on ``n_stopped``
        rows) scaled by the rows gained, at most ``n_estimators``; with no early stop (no validation
        label at ``h``) for ``n_estimators``. Returns (model, info): the stopped fit's info under
        ``stopped_*`` beside the refit's."""
        ok = np.isfinite(yr)
        if not ok.any():
            raise ValueError(f"{self.name}: target {self.label(h)} has no finite value in the refit frame")
        cap = int(p["n_estimators"])
        kept = int(stopped.get("n_rounds", cap))
        rounds = cap
        if "best_iteration" in stopped:  # it stopped early: as many rounds per row seen
            rounds = min(cap, max(1, int(round(kept * ok.sum() / max(n_stopped, 1)))))
        model, info = self._fit_one(h, xr[ok], yr[ok], None, None, {**p, "n_estimators": rounds})
        before = {f"stopped_{k}": v for k, v in stopped.items()}
        return model, {**before, "stopped_n_train_rows": int(n_stopped), **info}

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, meta: dict[str, Any]) -> None:
        """Restore fitted state saved by :meth:`_extra_meta`."""

    # -- fit / predict --------------------------------------------------------------------------------
    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        *,
        callbacks: Sequence[FitCallback] = (),
        refit_on: pd.DataFrame | None = None,
    ) -> Self:
        """One model per horizon on ``train``, stopping early on ``valid`` (the model's own rule).
        ``refit_on`` (a model that ``refits``): the model of each horizon is then fitted again on
        these rows, with no validation, for the rounds it kept scaled by the labelled rows gained
        (at most ``n_estimators``), and that model is the one kept (:meth:`_refit_one`)."""
        self.check_targets(train)
        if valid is not None:
            self.check_targets(valid)
        if refit_on is not None:
            if not self.refits:
                self._refuse_refit(refit_on)
            self.check_targets(refit_on)
        p = self.resolved_params()
        names = feature_columns(train)
        if not names:
            raise ValueError(f"{self.name}: training frame has no feature columns")
        x = feature_matrix(train, names)
        self.feature_names_ = names
        self._prepare(x)
        x = self._transform(x)
        xv = self._transform(feature_matrix(valid, names)) if valid is not None else None
        xr = self._transform(feature_matrix(refit_on, names)) if refit_on is not None else None
        for cb in callbacks:
            cb.on_fit_start(self)
        models: dict[int, Any] = {}
        info: dict[int, dict[str, Any]] = {}
        fitted_on: dict[str, int] = {}  # label column -> the horizon whose model learned it
        for h in self.horizons:
            label = self.label(h)
            if label in fitted_on:  # the same return as an earlier horizon's model: share it
                first = fitted_on[label]
                models[h], info[h] = models[first], {**info[first], "fit_seconds": 0.0, "shared_with": first}
                continue
            y = train[label].to_numpy(dtype=np.float64, na_value=np.nan)
            ok = np.isfinite(y)
            if not ok.any():
                raise ValueError(f"{self.name}: target {label} has no finite value in the training frame")
            xv_h = yv_h = dv_h = None
            if valid is not None and xv is not None:
                yv_all = valid[label].to_numpy(dtype=np.float64, na_value=np.nan)
                okv = np.isfinite(yv_all)
                if okv.any():
                    xv_h, yv_h = xv[okv], yv_all[okv]
                    dv_h = valid["date"].to_numpy()[okv]
                else:
                    logger.warning(
                        "%s: no finite %s in the validation frame: no early stopping", self.name, label
                    )
            t0 = time.perf_counter()
            n_rows = int(ok.sum())
            extra: dict[str, Any] = {}
            n_valid = 0 if yv_h is None else len(yv_h)
            if refit_on is None or yv_h is not None:  # with nothing to stop on, only the refit runs
                models[h], extra = self._fit_one(h, x[ok], y[ok], xv_h, yv_h, p, callbacks, dv_h)
            if xr is not None and refit_on is not None:
                yr = refit_on[label].to_numpy(dtype=np.float64, na_value=np.nan)
                # the stopped fit's figures ({} when nothing stopped: no validation label at h)
                stopped = {**extra, "n_valid_rows": n_valid} if yv_h is not None else {}
                models[h], extra = self._refit_one(h, xr, yr, n_rows, stopped, p)
                n_rows, n_valid = int(np.isfinite(yr).sum()), 0  # the model kept saw no validation row
            seconds = time.perf_counter() - t0
            fitted_on[label] = h
            info[h] = {
                "label": label,
                "n_train_rows": n_rows,
                "n_valid_rows": n_valid,
                "fit_seconds": seconds,
                **extra,
            }
            logger.info(
                "%s h=%d: fitted on %d rows x %d features in %.1f s %s",
                self.name,
                h,
                n_rows,
                len(names),
                seconds,
                extra,
            )
        self.models_ = models
        self.fit_info_ = info
        for cb in callbacks:
            cb.on_fit_end(self)
        return self

    def _x_for(self, frame: pd.DataFrame) -> np.ndarray:
        self._check_fitted("models_")
        return self._transform(feature_matrix(frame, self.feature_names_))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        x = self._x_for(frame)
        preds = np.empty((len(frame), len(self.horizons)))
        for j, h in enumerate(self.horizons):
            preds[:, j] = self._predict_one(self.models_[h], x) if len(x) else np.zeros(0)
        return self._output(frame, preds)

    # -- explanations ---------------------------------------------------------------------------------
    def _horizon(self, horizon: int) -> int:
        self._check_fitted("models_")
        h = int(horizon)
        if h not in self.models_:
            raise ValueError(
                f"{self.name}: no model for horizon {horizon}; fitted horizons {list(self.horizons)}"
            )
        return h

    def contributions(self, frame: pd.DataFrame, horizon: int = 5) -> pd.DataFrame:
        """Keys + one column per feature + ``bias``: ``bias + sum(features) == pred_h{horizon}``."""
        h = self._horizon(horizon)
        x = self._x_for(frame)
        if len(x):
            contrib, bias = self._contrib_one(self.models_[h], x)
        else:
            contrib, bias = np.zeros((0, len(self.feature_names_))), np.zeros(0)
        out = frame.loc[:, list(KEY_COLUMNS)].reset_index(drop=True)
        values = pd.DataFrame(np.asarray(contrib, dtype=np.float64), columns=self.feature_names_)
        values[BIAS_COLUMN] = np.asarray(bias, dtype=np.float64)
        return pd.concat([out, values], axis=1)

    def explain(self, frame: pd.DataFrame, horizon: int = 5, top: int = 5) -> pd.DataFrame:
        """Each row's ``top`` features by |contribution| to pred_h{horizon}: (date, ticker, rank, feature,
        contribution), rank 1 = largest. See :meth:`contributions` for the full decomposition."""
        h = self._horizon(horizon)
        x = self._x_for(frame)
        if len(x):
            contrib, _ = self._contrib_one(self.models_[h], x)
        else:
            contrib = np.zeros((0, len(self.feature_names_)))
        return top_contributions(
            frame.loc[:, list(KEY_COLUMNS)], np.asarray(contrib), self.feature_names_, top
        )

    # -- persistence ----------------------------------------------------------------------------------
    def _artifact(self, h: int) -> str:
        return f"{self.name}_h{h}{self.artifact_suffix}"

    def save(self, directory: str | Path) -> Path:
        self._check_fitted("models_")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = {}
        for h in self.horizons:
            files[str(h)] = self._artifact(h)
            self._save_one(self.models_[h], d / files[str(h)])
        write_meta(
            d,
            {
                "model": self.name,
                "format_version": FORMAT_VERSION,
                "horizons": list(self.horizons),
                "params": self.resolved_params(),
                "feature_names": self.feature_names_,
                "artifacts": files,
                "fit_info": {str(h): v for h, v in self.fit_info_.items()},
                **self._extra_meta(),
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        d = Path(directory)
        meta = read_meta(d, cls.name)  # refuses pickles first
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{d}: unsupported {cls.name} format_version {meta.get('format_version')!r}")
        model = cls(horizons=tuple(meta["horizons"]), **meta["params"])
        model.feature_names_ = list(meta["feature_names"])
        model.fit_info_ = {int(h): v for h, v in meta.get("fit_info", {}).items()}
        model._restore_extra(meta)
        models = {}
        for h in model.horizons:
            fname = model._artifact(h)  # never a path taken from the file: no traversal
            path = d / fname
            check_magic(path, cls.artifact_magic)
            models[h] = model._load_one(path)
        model.models_ = models
        return model


__all__ = [
    "BIAS_COLUMN",
    "TreeForecaster",
    "check_magic",
    "feature_matrix",
    "forest_path_contributions",
    "top_contributions",
]
