"""Random Forest: a global sklearn forest per horizon over all (ticker, date) rows.

Shared behaviour (features, point in time, explanations, artifacts) is described in
:mod:`ensemble.models.explain`. Specific here:

- Missing features (NaN, +-inf) are imputed with the per-feature *training* medians, stored as
  fitted state (``medians_``, in ``meta.json``); a feature with no finite training value imputes 0.
- Cost: bootstrap samples of ``max_samples`` (a fraction of the rows), ``max_features`` per split,
  ``min_samples_leaf`` and ``max_depth`` bound the work so that 500 tickers x ~800 days x 100
  features fits in about a minute per horizon on two cores. No early stopping (``valid`` is not
  used: a forest does not overfit with more trees).
- Deterministic: fixed ``random_state``; predictions are accumulated tree by tree in a fixed order
  (sklearn's threaded accumulation adds trees in thread-completion order, whose float rounding can
  differ in the last bit from call to call).
- Artifact: ``random_forest_h{h}.skops`` (skops, a zip of JSON + numpy arrays, no pickle), loaded with
  an explicit trusted-type list (:data:`SKOPS_TRUSTED`) beyond skops' own safe defaults: never the
  types a file asks for.
- Explanations: the tree path decomposition (:func:`ensemble.models.explain.forest_path_contributions`),
  a per-prediction decomposition whose contributions sum to prediction minus bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ensemble.config import TrainingConfig
from ensemble.models.base import FitCallback
from ensemble.models.explain import TreeForecaster, forest_path_contributions

# Shallow, strongly regularised trees on small bootstrap samples: on the 500-ticker synthetic panel
# (100 features, 378k training rows) this fits a horizon in ~50 s on 2 cores with a higher held-out
# Rank IC (0.058 at 5 days) than 200 trees of depth 14 on 20% samples (0.051, 6 minutes a horizon).
DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": 10,
    "min_samples_leaf": 100,
    "max_samples": 0.1,  # bootstrap sample size, fraction of the training rows
    "max_features": 0.2,  # fraction of the features tried at each split
    "random_state": TrainingConfig().seed,
    "n_jobs": 2,
}

# Searched by the tuner around DEFAULTS (each range holds the default); see Forecaster.search_space.
# A trial's cost grows with max_samples, max_features and the depth: the ranges stop where a trial
# would cost several times the default's. max_features stops at 0.3: on the full synthetic panel
# (cluster/train.yaml, the 2,271 s run's best depth 8 / leaf 248 / samples 0.099), 100 trees at
# max_features 0.45 / 0.3 / 0.2 fitted a horizon in 92 / 65 / 39 s with validation Rank IC
# 0.0876 / 0.0890 / 0.0897 at 5 days and 0.0939 / 0.0970 / 0.0984 at 20: the wider range bought
# the search only noise and the refit 2.4x the cost.
SEARCH_SPACE: dict[str, tuple[str, float, float]] = {
    "max_depth": ("randint", 4, 15),  # 4..14
    "min_samples_leaf": ("lograndint", 20, 1000),
    "max_samples": ("uniform", 0.02, 0.2),
    "max_features": ("uniform", 0.05, 0.3),
}
# A trial grows a third of the trees: the forest's validation Rank IC settles well before 100
# trees, so configurations rank the same at a third of the cost (the refit grows them all).
TRIAL_OVERRIDES: dict[str, Any] = {"n_estimators": 32}

# Types outside skops' default-trusted set that a fitted RandomForestRegressor holds, found once with
# ``skops.io.get_untrusted_types(file=...)`` on a saved forest (skops 0.16, scikit-learn 1.9) and
# fixed here. A file needing anything else is refused by skops.io.load.
SKOPS_TRUSTED: list[str] = ["sklearn.tree._tree.Tree"]


class RandomForestForecaster(TreeForecaster):
    """sklearn RandomForestRegressor per horizon. Parameters: see ``DEFAULTS``."""

    name: ClassVar[str] = "random_forest"
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    artifact_suffix: ClassVar[str] = ".skops"
    artifact_magic: ClassVar[tuple[bytes, ...]] = (b"PK\x03\x04",)  # zip
    search_space: ClassVar[dict[str, tuple[str, float, float]]] = SEARCH_SPACE
    trial_overrides: ClassVar[dict[str, Any]] = TRIAL_OVERRIDES

    # -- imputation -------------------------------------------------------------------------------
    def _prepare(self, x: np.ndarray) -> None:
        med = np.zeros(x.shape[1], dtype=np.float64)
        for j in range(x.shape[1]):
            col = x[:, j]
            col = col[np.isfinite(col)]
            if col.size:
                med[j] = float(np.median(col))
        self.medians_ = med

    def _transform(self, x: np.ndarray) -> np.ndarray:
        self._check_fitted("medians_")
        nan = np.isnan(x)
        if nan.any():
            x = np.where(nan, self.medians_.astype(np.float32)[None, :], x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def _extra_meta(self) -> dict[str, Any]:
        return {"medians": self.medians_}

    def _restore_extra(self, meta: dict[str, Any]) -> None:
        self.medians_ = np.asarray(meta["medians"], dtype=np.float64)

    # -- library hooks ----------------------------------------------------------------------------
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
        from sklearn.ensemble import RandomForestRegressor

        max_samples = p["max_samples"]
        if isinstance(max_samples, float) and max_samples * len(y) < 1:
            max_samples = None  # tiny frames: full bootstrap rather than an empty sample
        forest = RandomForestRegressor(
            n_estimators=int(p["n_estimators"]),
            max_depth=None if p["max_depth"] is None else int(p["max_depth"]),
            min_samples_leaf=p["min_samples_leaf"],
            max_samples=max_samples,
            max_features=p["max_features"],
            bootstrap=True,
            random_state=int(p["random_state"]),
            n_jobs=int(p["n_jobs"]),
        )
        forest.fit(x, y)
        depth = max(t.tree_.max_depth for t in forest.estimators_)
        return forest, {"n_trees": len(forest.estimators_), "max_tree_depth": int(depth)}

    def _predict_one(self, model: Any, x: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape[0], dtype=np.float64)
        for tree in model.estimators_:  # fixed order: bit-reproducible
            out += tree.predict(x, check_input=False)
        return out / len(model.estimators_)

    def _contrib_one(self, model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return forest_path_contributions(model, x)

    def _save_one(self, model: Any, path: Path) -> None:
        import skops.io as sio

        sio.dump(model, path)

    def _load_one(self, path: Path) -> Any:
        import skops.io as sio
        from sklearn.ensemble import RandomForestRegressor

        model = sio.load(path, trusted=SKOPS_TRUSTED)
        if not isinstance(model, RandomForestRegressor):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a RandomForestRegressor")
        return model
