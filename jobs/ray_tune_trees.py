"""Hyperparameter search for the tunable models (XGBoost, LightGBM, Random Forest) with Ray Tune.

:func:`tune_tree_model` runs Ray Tune with the Optuna searcher (TPE, seeded) and, for the models that
fit in rounds (``Forecaster.iterative``), ASHA early stopping, then refits the best configuration on all
horizons and returns the fitted library Forecaster. The model math stays in ``ensemble.models``: a
trial is the model's own ``fit`` with a :class:`TuneReport` callback (as in Ray's
``lightgbm_quickstart``), and the search space is the one declared beside the model's defaults
(``Forecaster.search_space``). A trial uses the model's ``trial_overrides`` (the forest grows a third
of its trees) unless the settings pin those keys; the refit uses the full model.

What a trial optimises
    A trial fits one model for the tuning horizon (5 days, else the shortest horizon) on every
    ``settings.training.tuning_date_stride``-th date of ``train`` (default 2: adjacent dates share
    most features and overlapping labels, so configurations rank alike at half the rows) and is
    scored on every date of ``valid`` (in jobs.train the last ``training.early_stopping_fraction``
    of the training dates, never the validation window the ensemble learns on; "validation"
    below means these rows). Two metrics are reported:

    * ``valid_rmse``: the validation RMSE of the current boosting round, reported *every round* by
      Ray's XGBoost / LightGBM Tune callback. ASHA (``metric=valid_rmse, mode=min``, time attribute
      = boosting rounds, grace period ``settings.ray.asha_grace_period``) prunes on it: it is smooth
      and cheap, where a per-date rank correlation is noisy round to round.
    * ``rank_ic``: the validation Rank IC (Spearman correlation of prediction and realised forward
      return across tickers, per date, averaged over dates; ``ensemble.backtest.metrics``) of the
      model cut at its best-RMSE round so far, refreshed every ``grace_period`` rounds while the best
      round moves, and computed exactly at the end. This is the objective: Optuna maximises it and
      the best trial is the one with the highest final ``rank_ic``. At the end of a completed trial
      it is the Rank IC of the trial's model (the refit then fits every date of ``train``, not every
      N-th, with the model's own early stopping on ``valid``; jobs.train refits the forest, which
      does not stop early, on the whole training window, and a booster named in
      ``training.refit_after_stopping`` is fitted again on it after stopping: ``refit``).

    A model without rounds (the Random Forest) reports once (both metrics) and runs under a FIFO
    scheduler. Keys pinned in ``settings.models[name]`` are fixed, not searched; the first trial is
    the model's defaults, so the search never does worse than them on the validation metric.

Cost budget
    The tuning stage is metered as a :class:`ensemble.cost.CostMeter` stage ``<name>.tune`` that
    bills its wall time x the CPUs its concurrent trials reserve. Before each new trial the search
    (a :class:`ray.tune.search.Searcher` wrapper around Optuna) estimates the cost of one more trial
    as the larger of the mean cost of the finished ones (trial time x ``trial_cpus`` x CPU price) and
    what the stage was billed between the first and the latest finish per trial finished in between
    (which includes Tune's overhead and reserved CPUs left idle between trials), and stops
    launching trials (``Searcher.FINISHED``) when the spend so far + what the running trials still
    need + one more trial + the refit (one trial per model it fits: horizons that learn the same
    return, ``label_horizons``, share one; two for a booster fitted again after stopping) would pass ``cost_limit_usd``; the
    reason (``"cost budget guard: ..."``) goes to ``meter.note_stop``. As a backstop,
    ``time_budget_s`` = the budget left at the start / the price per second of the reserved CPUs
    ends the experiment when the limit is reached even if the estimate was wrong (reason
    ``"cost budget: time_budget_s ..."``). With no budget left at the start no trial runs and the
    configured defaults are fitted (reason ``"cost budget: nothing left ..."``).

The refit (the best configuration, all horizons, ``valid`` for early stopping, or the ``refit`` rows)
runs in the driver process, metered as stage ``<name>.refit`` (wall x ``n_jobs`` threads).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from ray.tune.search import Searcher

from ensemble.backtest.metrics import rank_ic
from ensemble.config import Settings
from ensemble.cost import CostMeter
from ensemble.models import get_model_class
from ensemble.models.base import (
    KEY_COLUMNS,
    FitCallback,
    Forecaster,
    Iteration,
    feature_columns,
    pred_col,
    target_col,
)

if TYPE_CHECKING:
    from ensemble.training import FitRows

logger = logging.getLogger(__name__)

OBJECTIVE = "rank_ic"  # maximised by Optuna; the best trial has the highest final value
ASHA_METRIC = "valid_rmse"  # minimised by ASHA, per boosting round
ASHA_REDUCTION_FACTOR = 3


# --------------------------------------------------------------------------------------------------
# search spaces: declared beside each model's DEFAULTS (Forecaster.search_space), turned into Tune's
# --------------------------------------------------------------------------------------------------
_KINDS = {"uniform": "uniform", "loguniform": "loguniform", "randint": "randint", "lograndint": "lograndint"}


def search_space(name: str) -> dict[str, Any]:
    """The Ray Tune search space of tunable model ``name`` (its class's ``search_space``)."""
    from ray import tune

    cls = get_model_class(name)
    if not cls.tunable():
        raise ValueError(f"{name!r} declares no search space: it is not tuned")
    out: dict[str, Any] = {}
    for key, (kind, lo, hi) in cls.search_space.items():
        if kind not in _KINDS:
            raise ValueError(f"{name}.search_space[{key!r}]: unknown kind {kind!r}; known: {sorted(_KINDS)}")
        if kind in ("randint", "lograndint"):
            out[key] = getattr(tune, kind)(int(lo), int(hi))
        else:
            out[key] = getattr(tune, kind)(float(lo), float(hi))
    return out


# --------------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------------
@dataclass
class TuneOutcome:
    """What :func:`tune_tree_model` found and fitted.

    ``best_params``: the full parameters of the refitted model (pinned settings + the best trial's
    configuration). ``best_score``: the best trial's validation Rank IC for ``horizon`` (NaN when no
    trial ran). ``trial_nodes``: trial id -> id of the Ray node the trial ran on. ``trials``: one
    summary per trial (id, node, rounds reported, completed or stopped early, metrics, config).
    ``cost_usd``: what the tuning and the refit added to the meter.
    """

    name: str
    best_params: dict[str, Any]
    best_score: float
    model: Forecaster
    trials_requested: int
    trials_run: int
    stop_reason: str | None
    trial_nodes: dict[str, str]
    cost_usd: float
    horizon: int = 5
    metric: str = OBJECTIVE
    trials: list[dict[str, Any]] = field(default_factory=list)
    time_budget_s: float | None = None
    experiment_path: str | None = None


# --------------------------------------------------------------------------------------------------
# the trial (runs in a Ray Tune worker): the library's fit + a Ray callback
# --------------------------------------------------------------------------------------------------
class TuneReport(FitCallback):
    """Reports every boosting round to Ray Tune: the round's validation RMSE (ASHA prunes on it) and
    the Rank IC of the model cut at its best-RMSE round so far (refreshed every ``every`` rounds while
    the best round moves; the objective Optuna maximises)."""

    def __init__(self, dates: np.ndarray, target: np.ndarray, every: int, node_id: str) -> None:
        self.dates, self.target = dates, target
        self.every = max(1, int(every))
        self.node_id = node_id
        self.best_rmse = math.inf
        self.best_round = 0  # 1-based number of rounds of the best model
        self.ic: float | None = None
        self._ic_round = 0

    def metrics(self, rmse: float, n_rounds: int, predict_at: Callable[[int], np.ndarray]) -> dict[str, Any]:
        if rmse < self.best_rmse:
            self.best_rmse, self.best_round = rmse, n_rounds
        due = self.ic is None or (n_rounds % self.every == 0 and self._ic_round != self.best_round)
        if due:
            self.ic = rank_ic(self.dates, predict_at(self.best_round), self.target)
            self._ic_round = self.best_round
        return {
            ASHA_METRIC: float(rmse),
            "best_valid_rmse": float(self.best_rmse),
            OBJECTIVE: float(self.ic if self.ic is not None else 0.0),
            "best_round": int(self.best_round),
            "completed": 0,
            "node_id": self.node_id,
        }

    def on_iteration(self, model: Forecaster, it: Iteration) -> bool:
        from ray import tune

        if ASHA_METRIC in it.metrics and it.predict_valid is not None:
            tune.report(self.metrics(it.metrics[ASHA_METRIC], it.iteration, it.predict_valid))
        return False


def _tree_trial(config: dict[str, Any], payload: dict[str, Any] | None = None) -> None:
    import ray
    from ray import tune

    assert payload is not None
    h: int = payload["horizon"]
    train: pd.DataFrame = payload["train"]
    valid: pd.DataFrame = payload["valid"]
    cls = get_model_class(payload["name"])
    model = cls(horizons=(h,), **{**payload["fixed"], **config, "n_jobs": payload["n_jobs"]})
    node_id = ray.get_runtime_context().get_node_id()
    yv_all = valid[target_col(h)].to_numpy(dtype=np.float64, na_value=np.nan)
    okv = np.isfinite(yv_all)
    dates_v, yv = valid["date"].to_numpy()[okv], yv_all[okv]
    model.fit(train, valid, callbacks=[TuneReport(dates_v, yv, payload["ic_every"], node_id)])
    pred = model.predict(valid.loc[okv])[pred_col(h)].to_numpy(dtype=np.float64)
    rmse = float(np.sqrt(np.mean((pred - yv) ** 2)))
    rounds = getattr(model, "fit_info_", {}).get(h, {}).get("n_rounds", 1)
    tune.report(
        {
            ASHA_METRIC: rmse,
            "best_valid_rmse": rmse,
            OBJECTIVE: rank_ic(dates_v, pred, yv),
            "best_round": int(rounds),
            "completed": 1,
            "node_id": node_id,
        }
    )


# --------------------------------------------------------------------------------------------------
# the cost guard and the searcher that consults it (run in the driver, inside the Tune loop)
# --------------------------------------------------------------------------------------------------
class _BudgetGuard:
    """Decides, before each new trial, whether one more trial (and the refit) still fits the budget."""

    def __init__(
        self, meter: CostMeter, stage: str, trial_cpus: float, refit_trials: int, requested: int
    ) -> None:
        self.meter = meter
        self.stage = stage
        self.trial_cpus = float(trial_cpus)
        self.refit_trials = int(refit_trials)
        self.requested = int(requested)
        self.running: dict[str, float] = {}  # trial id -> time suggested
        self.finished_usd: list[float] = []
        self.billed_at_finish: list[float] = []  # the stage's bill when each of them finished
        self.launched = 0
        self.stop_reason: str | None = None
        self._lock = threading.Lock()

    def _trial_usd(self, seconds: float) -> float:
        return self.meter.estimate_usd(cpu_s=max(0.0, seconds) * self.trial_cpus)

    def allow(self, trial_id: str) -> bool:
        with self._lock:
            if self.stop_reason is not None:
                return False
            if self.finished_usd:  # before the first trial finishes there is no estimate
                # a trial costs at least its own time x its CPUs; once two have finished, what the
                # stage was billed (wall x the reserved CPUs: Tune's overhead and idle slots included)
                # between the first and the latest finish, per trial finished in between, is the
                # truer price (Tune's start-up, before the first finish, is not a per-trial cost)
                est = float(np.mean(self.finished_usd))
                if len(self.billed_at_finish) >= 2:
                    span = self.billed_at_finish[-1] - self.billed_at_finish[0]
                    est = max(est, span / (len(self.billed_at_finish) - 1))
                now = time.perf_counter()
                running = sum(max(0.0, est - self._trial_usd(now - t0)) for t0 in self.running.values())
                refit = est * self.refit_trials
                if self.meter.would_exceed(running + est + refit):
                    spent = self.meter.spent_usd
                    self.stop_reason = (
                        f"cost budget guard: ${spent:.4f} spent of cost_limit_usd ${self.meter.limit_usd:.4f}; "
                        f"one more trial (~${est:.4f}, from {len(self.finished_usd)} finished) + "
                        f"{len(self.running)} running (~${running:.4f} to go) + the refit "
                        f"({self.refit_trials} fits, ~${refit:.4f}) "
                        f"would pass it: stopped launching trials after {self.launched} of {self.requested}"
                    )
                    logger.info("%s: %s", self.stage, self.stop_reason)
                    return False
            self.running[trial_id] = time.perf_counter()
            self.launched += 1
            return True

    def finished(self, trial_id: str, result: dict[str, Any] | None) -> None:
        with self._lock:
            t0 = self.running.pop(trial_id, None)
            seconds = (result or {}).get("time_total_s")
            if seconds is None and t0 is not None:
                seconds = time.perf_counter() - t0
            if seconds is not None:
                self.finished_usd.append(self._trial_usd(float(seconds)))
                self.billed_at_finish.append(self.meter.stage_usd(self.stage))


_GUARDS: dict[str, _BudgetGuard] = {}  # token -> guard: the searcher holds only the token (picklable)


class BudgetedSearcher(Searcher):  # type: ignore[misc]
    """A Searcher wrapper: before each suggestion it asks the budget guard registered as ``token``;
    when one more trial would pass the budget it answers ``Searcher.FINISHED`` (no more trials).

    It holds only the token, so Tune can pickle it with the experiment state; the guard (which
    holds the live CostMeter) stays in this process, where Tune's trial loop runs."""

    def __init__(self, inner: Searcher, token: str) -> None:
        self._inner = inner
        self._token = token
        super().__init__(metric=inner.metric, mode=inner.mode)

    def _guard(self) -> _BudgetGuard | None:
        return _GUARDS.get(self._token)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        ok = bool(self._inner.set_search_properties(metric, mode, config, **spec))
        self._metric, self._mode = self._inner.metric, self._inner.mode
        return ok

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        guard = self._guard()
        if guard is not None and not guard.allow(trial_id):
            return Searcher.FINISHED  # type: ignore[no-any-return]
        return self._inner.suggest(trial_id)  # type: ignore[no-any-return]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._inner.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        guard = self._guard()
        if guard is not None:
            guard.finished(trial_id, result)
        self._inner.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        self._inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self._inner.restore(checkpoint_path)

    def get_state(self) -> dict[str, Any]:
        return {"token": self._token}

    def set_state(self, state: dict[str, Any]) -> None:
        self._token = state["token"]


# --------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------
def _slim(frame: pd.DataFrame, h: int) -> pd.DataFrame:
    """Keys, features and the tuning target only: what a trial needs, put once in the object store."""
    return frame.loc[:, [*KEY_COLUMNS, *feature_columns(frame), target_col(h)]].reset_index(drop=True)


def every_nth_date(frame: pd.DataFrame, stride: int) -> pd.DataFrame:
    """The rows of every ``stride``-th date of ``frame`` (the first date kept): the trials' training rows."""
    if stride <= 1:
        return frame
    dates = np.sort(frame["date"].unique())
    return frame[frame["date"].isin(dates[::stride])].reset_index(drop=True)


def _tuning_horizon(settings: Settings) -> int:
    return 5 if 5 in settings.horizons else int(min(settings.horizons))


def tune_tree_model(
    name: str,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    settings: Settings,
    meter: CostMeter,
    *,
    num_samples: int | None = None,
    storage_path: str | None = None,
    refit: FitRows | None = None,
) -> TuneOutcome:
    """Tune tree model ``name`` with Ray Tune (Optuna + ASHA) within the cost budget, refit the best.

    ``train`` / ``valid``: feature frames with the target columns of ``settings.horizons`` (valid is
    used for pruning, model selection and the refit's early stopping; jobs.train gives the tail of
    the training window as ``valid``, ``Prepared.member_stop``, so the validation dates stay out of
    sample). ``refit``: the rows the best configuration is refitted on (default ``train`` stopping
    on ``valid``; jobs.train gives ``Prepared.member_rows``: a model that does not stop early fits
    the whole training window, and a booster that stops on the tail is fitted again on it when
    ``training.refit_after_stopping`` names it). ``num_samples``: the number of
    trials (default ``settings.training.tuning_trials``). ``storage_path``: where Tune writes the
    experiment (default ``settings.ray.storage_path``). Ray must be reachable (``ray.init`` first to
    join a cluster; otherwise Tune starts a local one). See the module docstring for the metric and
    the budget.
    """
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    cls = get_model_class(name)
    if not cls.tunable():
        raise ValueError(f"tune_tree_model: {name!r} declares no search space (Forecaster.search_space)")
    h = _tuning_horizon(settings)
    horizons = tuple(settings.horizons)
    for frame, what in ((train, "train"), (valid, "valid")):
        missing = [target_col(k) for k in horizons if target_col(k) not in frame.columns]
        if missing:
            raise ValueError(f"{name}: {what} frame lacks target columns {missing}")
    rc, tc = settings.ray, settings.training
    requested = int(num_samples if num_samples is not None else tc.tuning_trials)
    if requested < 1:
        raise ValueError(f"num_samples must be >= 1, got {requested}")
    from ensemble.training import FitRows, member_params  # the driver's only: keeps the trials' imports light

    fixed = member_params(settings, name)
    fixed.setdefault("random_state", tc.seed)
    probe = cls(horizons=horizons, **fixed)  # refuses unknown parameters now
    resolved = probe.resolved_params()
    refit_fits = len({probe.label(k) for k in horizons})  # horizons learning one return share a fit
    if refit is not None and refit.refit_on is not None:
        refit_fits *= 2  # each stops on ``valid`` and is then fitted again on ``refit_on``
    space = {k: v for k, v in search_space(name).items() if k not in fixed}
    defaults_point = {k: resolved[k] for k in space}
    trial_fixed = {**{k: v for k, v in cls.trial_overrides.items() if k not in fixed}, **fixed}
    stage, refit_stage = f"{name}.tune", f"{name}.refit"
    spent0 = meter.spent_usd

    if not ray.is_initialized():
        ray.init()
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
    concurrency = max(1, min(rc.max_concurrent_trials, int(cluster_cpus // rc.trial_cpus) or 1))
    reserved_cpus = concurrency * rc.trial_cpus
    usd_per_s = meter.estimate_usd(cpu_s=reserved_cpus)
    remaining = meter.remaining_usd
    time_budget = remaining / usd_per_s if usd_per_s > 0 else None

    trials: list[dict[str, Any]] = []
    best_config: dict[str, Any] = {}
    best_score = float("nan")
    stop_reason: str | None = None
    experiment_path: str | None = None
    if not space:
        stop_reason = f"every searched parameter is pinned in settings.models[{name!r}]: nothing to tune"
    elif remaining <= 0:
        stop_reason = (
            f"cost budget: nothing left of cost_limit_usd ${meter.limit_usd:.4f} "
            f"(${meter.spent_usd:.4f} spent) before tuning; no trial run, the configured defaults fitted"
        )
    else:
        payload = {
            "name": name,
            "horizon": h,
            "fixed": trial_fixed,
            "n_jobs": max(1, round(rc.trial_cpus)),
            "train": _slim(every_nth_date(train, tc.tuning_date_stride), h),
            "valid": _slim(valid, h),
            "ic_every": rc.asha_grace_period,
        }
        trainable = tune.with_resources(
            tune.with_parameters(_tree_trial, payload=payload), {"cpu": rc.trial_cpus}
        )
        if cls.iterative:  # reports every round: ASHA prunes on it
            max_t = int(resolved["n_estimators"]) + 1  # + the final report of a completed trial
            scheduler: Any = ASHAScheduler(
                time_attr="training_iteration",
                metric=ASHA_METRIC,
                mode="min",
                max_t=max_t,
                grace_period=min(rc.asha_grace_period, max_t),
                reduction_factor=ASHA_REDUCTION_FACTOR,
                stop_last_trials=False,
            )
        else:
            scheduler = FIFOScheduler()
        optuna_search = OptunaSearch(
            metric=OBJECTIVE,
            mode="max",
            points_to_evaluate=[defaults_point],
            sampler=optuna.samplers.TPESampler(seed=tc.seed),
        )
        token = uuid.uuid4().hex
        guard = _BudgetGuard(meter, stage, rc.trial_cpus, refit_fits, requested)
        _GUARDS[token] = guard
        root = Path(storage_path or rc.storage_path).expanduser().resolve()
        run_name = f"tune-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{token[:6]}"
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=BudgetedSearcher(optuna_search, token),
                scheduler=scheduler,
                num_samples=requested,
                max_concurrent_trials=concurrency,
                time_budget_s=time_budget,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name=run_name, storage_path=str(root), verbose=0),
        )
        logger.info(
            "%s: tuning %d trials, %d at a time (%.2g CPUs each), time budget %s, $%.4f left",
            name,
            requested,
            concurrency,
            rc.trial_cpus,
            "none" if time_budget is None else f"{time_budget:.0f} s",
            remaining,
        )
        t0 = time.perf_counter()
        try:
            with meter.stage(stage, cpus=reserved_cpus):
                grid = tuner.fit()
        finally:
            _GUARDS.pop(token, None)
        wall = time.perf_counter() - t0
        experiment_path = str(root / run_name)
        for r in grid:
            m = dict(r.metrics or {})
            if int(m.get("training_iteration") or 0) < 1 and r.error is None:
                continue  # never reported (not started, or ended by the time budget before a report)
            trials.append(
                {
                    "trial_id": m.get("trial_id", Path(str(r.path)).name),
                    "node_id": m.get("node_id"),
                    "iterations": int(m.get("training_iteration", 0)),
                    "completed": bool(m.get("completed", 0)),
                    OBJECTIVE: m.get(OBJECTIVE),
                    ASHA_METRIC: m.get(ASHA_METRIC),
                    "best_round": m.get("best_round"),
                    "time_s": m.get("time_total_s"),
                    "config": dict(r.config or {}),
                    "error": None if r.error is None else str(r.error),
                }
            )
        scored = [t for t in trials if t["error"] is None and t[OBJECTIVE] is not None]
        if not scored and trials and all(t["error"] for t in trials):
            raise RuntimeError(f"{name}: every tuning trial failed; first error: {trials[0]['error']}")
        pool = [t for t in scored if t["completed"]] or scored
        if pool:
            best = max(pool, key=lambda t: (float(t[OBJECTIVE]), -float(t[ASHA_METRIC] or math.inf)))
            best_config = {k: v for k, v in best["config"].items() if k in space}
            best_score = float(best[OBJECTIVE])
        if guard.stop_reason is not None:
            stop_reason = guard.stop_reason
        elif time_budget is not None and (guard.launched < requested or wall >= time_budget):
            stop_reason = (
                f"cost budget: time_budget_s {time_budget:.1f} (${remaining:.4f} left at "
                f"${usd_per_s * 3600:.4f}/h for {reserved_cpus:g} reserved CPUs) reached after "
                f"{guard.launched} of {requested} trials"
            )
        if not pool:
            stop_reason = (stop_reason or "no trial reported a result") + "; the configured defaults fitted"
    if stop_reason is not None:
        meter.note_stop(stage, stop_reason)

    best_params = {**fixed, **best_config}
    best = cls(horizons=horizons, **best_params)
    with meter.stage(refit_stage, cpus=best.threads):
        model = (refit or FitRows(train, valid)).fit(best)
    outcome = TuneOutcome(
        name=name,
        best_params=best_params,
        best_score=best_score,
        model=model,
        trials_requested=requested,
        trials_run=len(trials),
        stop_reason=stop_reason,
        trial_nodes={t["trial_id"]: t["node_id"] for t in trials if t["node_id"] is not None},
        cost_usd=meter.spent_usd - spent0,
        horizon=h,
        trials=trials,
        time_budget_s=time_budget,
        experiment_path=experiment_path,
    )
    logger.info(
        "%s: %d of %d trials run, best %s %.4f, $%.4f%s",
        name,
        outcome.trials_run,
        requested,
        OBJECTIVE,
        best_score,
        outcome.cost_usd,
        f" ({stop_reason})" if stop_reason else "",
    )
    return outcome


__all__ = ["TuneOutcome", "TuneReport", "every_nth_date", "search_space", "tune_tree_model"]
