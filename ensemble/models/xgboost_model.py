"""XGBoost: a global gradient-boosted tree model per horizon over all (ticker, date) rows.

Shared behaviour (features, point in time, explanations, artifacts) is described in
:mod:`ensemble.models.explain`. Specific here:

- ``tree_method='hist'``, squared error by default; NaN features go down each split's learned
  default direction (native missing-value handling, no imputation).
- Early stopping: with ``valid`` given, on its rows with a finite target of the horizon, after
  ``early_stopping_rounds`` rounds without improvement; the booster is then cut to its best
  iteration, so the model in memory, the saved one and the loaded one are the same trees.
- Deterministic: fixed ``random_state`` (row and column subsampling) and ``n_jobs`` threads; the CPU
  ``hist`` algorithm gives identical models for identical inputs.
- ``device='cuda'`` trains on a GPU (``supports_gpu``); the default is the CPU.
- Artifact: ``xgboost_h{h}.ubj`` (``Booster.save_model``, Universal Binary JSON: no pickle).
- Explanations: ``pred_contribs=True`` (exact TreeSHAP; last column = bias).
"""

from __future__ import annotations

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
    "max_depth": 6,
    "min_child_weight": 20.0,  # = min rows per leaf for squared error
    "subsample": 0.8,
    "colsample": 0.8,  # colsample_bytree
    "reg_alpha": 0.0,
    "reg_lambda": 1.0,
    "gamma": 0.0,
    "max_bin": 256,
    "objective": "reg:squarederror",  # or 'reg:pseudohubererror', 'reg:absoluteerror'
    "early_stopping_rounds": 50,
    # what early stopping watches on the validation rows: 'rank_ic' (the mean per-date Spearman
    # correlation, what the platform is judged on; about 30 ms a round on 100k rows) or 'rmse'
    "eval_metric": "rank_ic",  # chosen on validation (bench/select_defaults.py)
    # with 'rank_ic': the number of rounds whose mean Rank IC early stopping watches (1: each round's own)
    "eval_smoothing": 1,
    "random_state": TrainingConfig().seed,
    "n_jobs": 2,
    "device": "cpu",  # 'cpu' or 'cuda' / 'cuda:N'
}

# Searched by the tuner around DEFAULTS (each range holds the default); see Forecaster.search_space.
SEARCH_SPACE: dict[str, tuple[str, float, float]] = {
    "learning_rate": ("loguniform", 0.01, 0.2),
    "max_depth": ("randint", 3, 10),  # 3..9
    "min_child_weight": ("loguniform", 2.0, 200.0),
    "subsample": ("uniform", 0.5, 1.0),
    "colsample": ("uniform", 0.3, 1.0),
    "reg_lambda": ("loguniform", 0.1, 30.0),
}


def _round_callback(owner: TreeForecaster, h: int, callbacks: Sequence[FitCallback], dvalid: Any) -> Any:
    """An XGBoost TrainingCallback that reports each round to the Forecaster's callbacks."""
    import xgboost as xgb

    class Forward(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            metrics: dict[str, float] = {}
            if "valid" in evals_log and evals_log["valid"].get("rmse"):
                metrics["valid_rmse"] = float(evals_log["valid"]["rmse"][-1])
            predict = None
            if dvalid is not None:

                def predict(k: int) -> np.ndarray:
                    return np.asarray(model.predict(dvalid, iteration_range=(0, k)), dtype=np.float64)

            it = Iteration(owner.name, h, epoch + 1, metrics, predict_valid=predict)
            return notify(callbacks, owner, it)

    return Forward()


class XGBoostForecaster(TreeForecaster):
    """XGBoost regressor per horizon. Parameters: see ``DEFAULTS`` (sklearn-style names)."""

    name: ClassVar[str] = "xgboost"
    supports_gpu: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    artifact_suffix: ClassVar[str] = ".ubj"
    artifact_magic: ClassVar[tuple[bytes, ...]] = (b"{",)  # UBJSON object
    search_space: ClassVar[dict[str, tuple[str, float, float]]] = SEARCH_SPACE
    iterative: ClassVar[bool] = True
    early_stops: ClassVar[bool] = True
    refits: ClassVar[bool] = True

    @staticmethod
    def _booster_params(p: dict[str, Any]) -> dict[str, Any]:
        return {
            "objective": p["objective"],
            "eta": float(p["learning_rate"]),
            "max_depth": int(p["max_depth"]),
            "min_child_weight": float(p["min_child_weight"]),
            "subsample": float(p["subsample"]),
            "colsample_bytree": float(p["colsample"]),
            "alpha": float(p["reg_alpha"]),
            "lambda": float(p["reg_lambda"]),
            "gamma": float(p["gamma"]),
            "max_bin": int(p["max_bin"]),
            "tree_method": "hist",
            "device": p["device"],
            "seed": int(p["random_state"]),
            "nthread": int(p["n_jobs"]),
            "eval_metric": "rmse",
            "verbosity": 1,
        }

    def _nthread(self) -> int:
        return int(self.resolved_params()["n_jobs"])

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
        import xgboost as xgb

        scorer = self._rank_ic_scorer(p, ("rmse", "rank_ic"), valid_dates, yv)

        nthread = int(p["n_jobs"])
        dtrain = xgb.DMatrix(x, label=y, missing=np.nan, nthread=nthread)
        rounds = int(p["n_estimators"])
        kwargs: dict[str, Any] = {}
        dvalid = None
        has_valid = xv is not None and yv is not None
        if has_valid and (p["early_stopping_rounds"] or callbacks):
            dvalid = xgb.DMatrix(xv, label=yv, missing=np.nan, nthread=nthread)
            kwargs["evals"] = [(dvalid, "valid")]
        early = bool(dvalid is not None and p["early_stopping_rounds"])
        if early:
            kwargs["early_stopping_rounds"] = int(p["early_stopping_rounds"])
            if scorer is not None:  # the last metric logged is the one early stopping watches

                def rank_ic_metric(predt: np.ndarray, _: Any) -> tuple[str, float]:
                    return "rank_ic", scorer(predt)

                kwargs.update(custom_metric=rank_ic_metric, maximize=True)
        if callbacks:
            kwargs["callbacks"] = [_round_callback(self, h, callbacks, dvalid)]
        booster = xgb.train(
            self._booster_params(p), dtrain, num_boost_round=rounds, verbose_eval=False, **kwargs
        )
        info: dict[str, Any] = {"n_rounds": booster.num_boosted_rounds()}
        if early:
            best = int(booster.best_iteration)
            info.update(best_iteration=best, **{f"best_valid_{p['eval_metric']}": float(booster.best_score)})
            booster = booster[: best + 1]  # keep the best trees only: memory == saved == loaded
            info["n_rounds"] = booster.num_boosted_rounds()
        return booster, info

    def _dmatrix(self, x: np.ndarray) -> Any:
        import xgboost as xgb

        return xgb.DMatrix(x, missing=np.nan, nthread=self._nthread())

    def _predict_one(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(self._dmatrix(x)), dtype=np.float64)

    def _contrib_one(self, model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(model.predict(self._dmatrix(x), pred_contribs=True), dtype=np.float64)
        return c[:, :-1], c[:, -1]

    def _save_one(self, model: Any, path: Path) -> None:
        model.save_model(str(path))

    def _load_one(self, path: Path) -> Any:
        import xgboost as xgb

        from ensemble.models.native_check import read_xgboost_model

        booster = xgb.Booster(params={"nthread": self._nthread()})
        # parsed in a child process first: a damaged file raises, never crashes this process; the
        # checked bytes themselves are what XGBoost parses here
        booster.load_model(read_xgboost_model(path))
        return booster
