"""LightGBM: a global gradient-boosted tree model (leaf-wise growth) per horizon over all rows.

Shared behaviour (features, point in time, explanations, artifacts) is described in
:mod:`ensemble.models.explain`. Specific here:

- NaN features are handled natively (``use_missing``; each split learns where NaN goes).
- Early stopping: with ``valid`` given, on its rows with a finite target of the horizon (l2), after
  ``early_stopping_rounds`` rounds without improvement. The booster is then rebuilt from its text
  model cut at the best iteration, so the model in memory is exactly the one saved and loaded.
- Deterministic: ``deterministic=True``, ``force_col_wise=True``, fixed ``random_state`` (bagging and
  feature fraction seeds) and ``n_jobs`` threads.
- Artifact: ``lightgbm_h{h}.txt`` (``Booster.save_model``, LightGBM's text format: no pickle).
- Explanations: ``pred_contrib=True`` (TreeSHAP; last column = expected value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ensemble.config import TrainingConfig
from ensemble.models.explain import TreeForecaster

DEFAULTS: dict[str, Any] = {
    "n_estimators": 400,  # boosting rounds (upper bound when early stopping)
    "learning_rate": 0.05,
    "num_leaves": 31,
    "max_depth": -1,  # -1: no limit (num_leaves bounds the tree)
    "min_child_samples": 100,  # min rows per leaf
    "subsample": 0.8,  # bagging_fraction, re-drawn every iteration
    "colsample": 0.8,  # feature_fraction per tree
    "reg_alpha": 0.0,
    "reg_lambda": 1.0,
    "min_split_gain": 0.0,
    "max_bin": 255,
    "objective": "regression",  # l2; or 'huber', 'regression_l1'
    "early_stopping_rounds": 50,
    "random_state": TrainingConfig().seed,
    "n_jobs": 2,
}


class LightGBMForecaster(TreeForecaster):
    """LightGBM regressor per horizon. Parameters: see ``DEFAULTS`` (sklearn-style names)."""

    name: ClassVar[str] = "lightgbm"
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    artifact_suffix: ClassVar[str] = ".txt"
    artifact_magic: ClassVar[tuple[bytes, ...]] = (b"tree\n", b"tree\r\n")

    @staticmethod
    def _booster_params(p: dict[str, Any]) -> dict[str, Any]:
        seed = int(p["random_state"])
        return {
            "objective": p["objective"],
            "metric": "l2",
            "learning_rate": float(p["learning_rate"]),
            "num_leaves": int(p["num_leaves"]),
            "max_depth": int(p["max_depth"]),
            "min_data_in_leaf": int(p["min_child_samples"]),
            "bagging_fraction": float(p["subsample"]),
            "bagging_freq": 1 if float(p["subsample"]) < 1.0 else 0,
            "feature_fraction": float(p["colsample"]),
            "lambda_l1": float(p["reg_alpha"]),
            "lambda_l2": float(p["reg_lambda"]),
            "min_gain_to_split": float(p["min_split_gain"]),
            "max_bin": int(p["max_bin"]),
            "seed": seed,
            "bagging_seed": seed,
            "feature_fraction_seed": seed,
            "data_random_seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": int(p["n_jobs"]),
            "verbosity": -1,
        }

    def _fit_one(
        self,
        h: int,
        x: np.ndarray,
        y: np.ndarray,
        xv: np.ndarray | None,
        yv: np.ndarray | None,
        p: dict[str, Any],
    ) -> tuple[Any, dict[str, Any]]:
        import lightgbm as lgb

        params = self._booster_params(p)
        dtrain = lgb.Dataset(
            x, label=y, params={"max_bin": params["max_bin"], "verbosity": -1}, free_raw_data=True
        )
        valid_sets: list[Any] = []
        callbacks: list[Any] = []
        if xv is not None and yv is not None and p["early_stopping_rounds"]:
            valid_sets = [lgb.Dataset(xv, label=yv, reference=dtrain)]
            callbacks = [
                lgb.early_stopping(int(p["early_stopping_rounds"]), first_metric_only=True, verbose=False)
            ]
        booster = lgb.train(
            params, dtrain, num_boost_round=int(p["n_estimators"]), valid_sets=valid_sets, callbacks=callbacks
        )
        info: dict[str, Any] = {"n_rounds": booster.current_iteration()}
        num_iteration = -1
        if callbacks:
            best = int(booster.best_iteration)
            info.update(best_iteration=best, best_valid_l2=float(booster.best_score["valid_0"]["l2"]))
            num_iteration = best if best > 0 else -1
        # Rebuild from the text model: the in-memory booster is then the saved one, bit for bit.
        text = booster.model_to_string(num_iteration=num_iteration)
        final = lgb.Booster(model_str=text)
        info["n_rounds"] = final.current_iteration()
        return final, info

    def _predict_kwargs(self) -> dict[str, Any]:
        return {"num_threads": int(self.resolved_params()["n_jobs"])}

    def _predict_one(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x, **self._predict_kwargs()), dtype=np.float64)

    def _contrib_one(self, model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(model.predict(x, pred_contrib=True, **self._predict_kwargs()), dtype=np.float64)
        return c[:, :-1], c[:, -1]

    def _save_one(self, model: Any, path: Path) -> None:
        model.save_model(str(path))

    def _load_one(self, path: Path) -> Any:
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path))
