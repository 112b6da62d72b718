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

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ensemble.config import TrainingConfig
from ensemble.models.base import FitCallback, Iteration, notify
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
    # what early stopping watches on the validation rows: 'rank_ic' (the mean per-date Spearman
    # correlation, what the platform is judged on; about 30 ms a round on 100k rows) or 'l2'
    "eval_metric": "rank_ic",  # chosen on validation (bench/select_defaults.py)
    # with 'rank_ic': the number of rounds whose mean Rank IC early stopping watches (1: each round's own)
    "eval_smoothing": 1,
    "random_state": TrainingConfig().seed,
    "n_jobs": 2,
}

# Searched by the tuner around DEFAULTS (each range holds the default); see Forecaster.search_space.
SEARCH_SPACE: dict[str, tuple[str, float, float]] = {
    "learning_rate": ("loguniform", 0.01, 0.2),
    "num_leaves": ("lograndint", 8, 256),
    "min_child_samples": ("lograndint", 10, 1000),
    "subsample": ("uniform", 0.5, 1.0),
    "colsample": ("uniform", 0.3, 1.0),
    "reg_lambda": ("loguniform", 0.1, 30.0),
}


class _RoundCallback:
    """A LightGBM callback that reports each round to the Forecaster's callbacks; when one asks to
    stop, training ends keeping the best validation round so far (all rounds without validation)."""

    order = 20  # before lgb.early_stopping (30): the round that triggers early stopping is reported

    def __init__(
        self, owner: TreeForecaster, h: int, callbacks: Sequence[FitCallback], xv: Any, nthread: int
    ):
        self.owner, self.h, self.callbacks, self.xv, self.nthread = owner, h, callbacks, xv, nthread
        self.best = (math.inf, 0)

    def __call__(self, env: Any) -> None:
        import lightgbm as lgb

        metrics: dict[str, float] = {}
        for data_name, metric, value, _ in env.evaluation_result_list or []:
            if data_name == "valid_0" and metric == "l2":
                metrics["valid_rmse"] = math.sqrt(float(value))
        n = env.iteration + 1
        if "valid_rmse" in metrics and metrics["valid_rmse"] < self.best[0]:
            self.best = (metrics["valid_rmse"], n)
        booster, xv, nthread = env.model, self.xv, self.nthread
        predict = None
        if xv is not None:

            def predict(k: int) -> np.ndarray:
                return np.asarray(booster.predict(xv, num_iteration=k, num_threads=nthread), dtype=np.float64)

        it = Iteration(self.owner.name, self.h, n, metrics, predict_valid=predict)
        if notify(self.callbacks, self.owner, it):
            keep = self.best[1] if self.best[1] else n
            raise lgb.callback.EarlyStopException(keep - 1, env.evaluation_result_list or [])


class LightGBMForecaster(TreeForecaster):
    """LightGBM regressor per horizon. Parameters: see ``DEFAULTS`` (sklearn-style names)."""

    name: ClassVar[str] = "lightgbm"
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    artifact_suffix: ClassVar[str] = ".txt"
    artifact_magic: ClassVar[tuple[bytes, ...]] = (b"tree\n", b"tree\r\n")
    search_space: ClassVar[dict[str, tuple[str, float, float]]] = SEARCH_SPACE
    iterative: ClassVar[bool] = True
    early_stops: ClassVar[bool] = True
    refits: ClassVar[bool] = True

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
        callbacks: Sequence[FitCallback] = (),
        valid_dates: np.ndarray | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        import lightgbm as lgb

        scorer = self._rank_ic_scorer(p, ("l2", "rank_ic"), valid_dates, yv)

        params = self._booster_params(p)
        dtrain = lgb.Dataset(
            x, label=y, params={"max_bin": params["max_bin"], "verbosity": -1}, free_raw_data=True
        )
        valid_sets: list[Any] = []
        hooks: list[Any] = []
        if xv is not None and yv is not None and (p["early_stopping_rounds"] or callbacks):
            valid_sets = [lgb.Dataset(xv, label=yv, reference=dtrain)]
        early = bool(valid_sets and p["early_stopping_rounds"])
        feval: list[Any] = []
        if early:
            hooks.append(
                lgb.early_stopping(int(p["early_stopping_rounds"]), first_metric_only=True, verbose=False)
            )
            if scorer is not None:  # the first metric is the one early stopping watches
                target = np.asarray(yv, dtype=np.float64)

                def rank_ic_metric(preds: np.ndarray, _: Any) -> tuple[str, float, bool]:
                    return "rank_ic", scorer(preds), True

                def l2_metric(preds: np.ndarray, _: Any) -> tuple[str, float, bool]:
                    return "l2", float(np.mean((preds - target) ** 2)), False

                params = {**params, "metric": "None"}
                feval = [rank_ic_metric, l2_metric]
        if callbacks:
            hooks.append(_RoundCallback(self, h, callbacks, xv if valid_sets else None, int(p["n_jobs"])))
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=int(p["n_estimators"]),
            valid_sets=valid_sets,
            callbacks=hooks,
            feval=feval or None,
        )
        info: dict[str, Any] = {"n_rounds": booster.current_iteration()}
        best = int(booster.best_iteration)  # > 0 after early stopping or a callback's stop
        num_iteration = best if best > 0 else -1
        if early:
            metric = "rank_ic" if p["eval_metric"] == "rank_ic" else "l2"
            info.update(
                best_iteration=best, **{f"best_valid_{metric}": float(booster.best_score["valid_0"][metric])}
            )
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

        from ensemble.models.native_check import read_lightgbm_model

        # checked first (structure, then a parse in a child process): a damaged file raises, never
        # crashes or hangs this process; the checked text itself is what LightGBM parses here
        return lgb.Booster(model_str=read_lightgbm_model(path))
