"""Walk-forward backtest, the library half: the folds, and one fold fitted through the one training path.

Folds (:func:`walk_forward_folds`)
    The test period (from ``first_test``, or the last ``test_days`` trading dates) is cut into
    consecutive windows of ``every`` trading dates, back to back (the last one may be shorter). Fold
    k is retrained for its window: its cut-off ``as_of`` is the trading date ``embargo + 1`` dates
    before the window's first date, so ``embargo`` trading dates lie between the last date training
    may use and the first date tested, at every boundary. Training and validation windows are the
    training job's own split up to ``as_of`` (:func:`ensemble.backtest.splits.train_valid_split`): the
    most recent ``valid_fraction`` of the dates up to ``as_of`` validate; before them ``expanding``
    trains on every date since the start of the data, ``rolling`` on the last ``training_days``.
    :func:`ensemble.backtest.splits.window` purges every label realised after a window's end, so no
    training or validation label is realised after ``as_of``.

One fold (:func:`fit_fold`), in-process, no Ray (``jobs.backtest`` runs the folds as Ray tasks)
    ``ensemble.training.prepare_data`` with ``training.as_of = fold.as_of`` (features may be given,
    computed once on the whole panel: every feature at t uses rows dated <= t; the preprocessor is
    fitted per fold on its training dates), then every configured member's own
    ``fit`` on ``Prepared.member_rows(...)`` with ``settings.models[name]`` (the members that stop
    early stop on the tail of the training window, those of ``training.refit_after_stopping`` are
    fitted again on the whole window, as in the training job; no tuning; Prophet refitted per
    fold, its validation forecasts made as the training job makes them,
    :func:`ensemble.scoring.per_ticker_walk_forward` with ``training.prophet_valid_refit_every_days``,
    and its test forecasts as scoring serves them, the same walk on from the validation's models with
    ``scoring.prophet_refit_every_days``; with the former 0, the one fit forecasts every date);
    sequence members (``max_epochs`` from ``training.max_epochs`` unless pinned, as in the
    training job) once per seed of ``seeds``, their forecasts averaged over the seeds
    (each seed's test Rank IC kept). The :class:`~ensemble.models.ensemble.EnsembleForecaster` learns
    on the members' validation forecasts; then every member and the ensemble forecast the fold's test
    dates (the frame holds the history rows before them that the sequence windows read).

    Member forecasts are given twice: ``member_scores`` (the model's raw output) and
    ``member_preds`` (in return units, the ensemble's per-member calibration fitted on validation:
    what the platform serves; a member with a negative validation slope is served inverted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ensemble.backtest.metrics import forecast_metrics
from ensemble.backtest.splits import TrainValidSplit, train_valid_split
from ensemble.config import MODEL_NAMES, Settings
from ensemble.cost import CostMeter
from ensemble.models import create_model, get_model_class
from ensemble.models.base import KEY_COLUMNS, pred_col, target_col
from ensemble.models.ensemble import VOL_COLUMN, EnsembleForecaster

logger = logging.getLogger(__name__)

Mode = Literal["expanding", "rolling"]


@dataclass(frozen=True)
class Fold:
    """One retraining: what training may see (``split``, up to ``as_of``) and what is tested."""

    index: int
    as_of: pd.Timestamp  # the last date training and validation may use (labels purged here)
    split: TrainValidSplit
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    test_days: int
    embargo: int
    mode: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "as_of": self.as_of.date().isoformat(),
            **self.split.as_dict(),
            "test_start": self.test_start.date().isoformat(),
            "test_end": self.test_end.date().isoformat(),
            "test_days": self.test_days,
            "embargo": self.embargo,
            "mode": self.mode,
        }


def _trading_dates(dates: Any) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.unique(pd.to_datetime(np.asarray(dates)))).sort_values()


def walk_forward_folds(
    dates: Any,
    *,
    first_test: pd.Timestamp | str | None = None,
    test_days: int | None = None,
    every: int = 63,
    mode: Mode = "expanding",
    training_days: int = 1000,
    valid_fraction: float = 0.15,
    max_horizon: int = 60,
    embargo: int = 5,
) -> list[Fold]:
    """The folds covering the test period back to back (see the module docstring).

    ``dates``: the trading dates of the data (any iterable of dates; repeats are fine). The test
    period starts at the first trading date >= ``first_test``, or (``first_test`` None) at the
    ``test_days``-th date from the end, and runs to the last date. Raises ValueError when a fold has
    too little history, or when its validation window is too short for any label at ``max_horizon``
    (every one would be purged)."""
    if every < 1:
        raise ValueError(f"walk-forward: every must be >= 1 trading date, got {every}")
    if embargo < 0:
        raise ValueError(f"walk-forward: embargo must be >= 0 trading dates, got {embargo}")
    if mode not in ("expanding", "rolling"):
        raise ValueError(f"walk-forward: mode must be 'expanding' or 'rolling', got {mode!r}")
    udates = _trading_dates(dates)
    n = len(udates)
    if first_test is not None:
        start = int(udates.searchsorted(pd.Timestamp(first_test)))
        if start >= n:
            raise ValueError(
                f"walk-forward: first_test {first_test} is after the last date {udates[-1].date()}"
            )
    elif test_days is not None:
        if not 1 <= test_days < n:
            raise ValueError(f"walk-forward: test_days={test_days} must lie in [1, {n - 1}] ({n} dates)")
        start = n - int(test_days)
    else:
        raise ValueError("walk-forward: give first_test or test_days")
    folds = []
    for k, s in enumerate(range(start, n, every)):
        e = min(s + every, n) - 1
        cut = s - embargo - 1
        if cut < 1:
            raise ValueError(
                f"walk-forward fold {k}: its test window starts at {udates[s].date()}, leaving no history "
                f"before the cut-off ({embargo} embargo dates); start the test period later"
            )
        as_of = udates[cut]
        days = training_days if mode == "rolling" else cut + 1  # expanding: every date since the start
        try:
            split = train_valid_split(udates, training_days=days, valid_fraction=valid_fraction, as_of=as_of)
        except ValueError as exc:
            raise ValueError(f"walk-forward fold {k} (as_of {as_of.date()}): {exc}") from None
        if split.valid_days < max_horizon + 2:
            raise ValueError(
                f"walk-forward fold {k} (as_of {as_of.date()}): the validation window has {split.valid_days} "
                f"dates, so every h={max_horizon} label in it is realised after the cut-off and purged; "
                f"need at least {max_horizon + 2} (raise training.valid_fraction or start the test later)"
            )
        folds.append(Fold(k, as_of, split, udates[s], udates[e], e - s + 1, embargo, mode))
    return folds


@dataclass
class FoldResult:
    """What one fold produced, for its test dates only (see the module docstring)."""

    fold: Fold
    member_preds: dict[str, pd.DataFrame]  # date, ticker, pred_h{h} in return units (calibrated)
    member_scores: dict[str, pd.DataFrame]  # the members' raw forecasts
    ensemble: pd.DataFrame  # EnsembleForecaster.predict: pred/excess/lo/hi/confidence per horizon
    truth: pd.DataFrame  # date, ticker, target_h{h} (realised), ref_vol
    weights: dict[int, dict[str, float]]  # the ensemble's learned weights per horizon
    ensemble_state: dict[str, Any]
    seed_preds: dict[str, dict[int, pd.DataFrame]]  # sequence members: each seed's raw test forecast
    seed_scores: dict[str, dict[int, dict[str, float]]]  # ... and its test Rank IC per horizon
    valid_metrics: dict[str, dict[str, float]]
    failures: dict[str, str] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)


def _fold_settings(settings: Settings, fold: Fold) -> Settings:
    """``settings`` with training.as_of / training_days set so prepare_data makes ``fold``'s split."""
    s = settings.model_copy(deep=True)
    s.training.as_of = fold.as_of.date().isoformat()
    s.training.training_days = max(int(fold.split.train_days), 60)
    return s


def _between(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    d = frame["date"]
    return frame.loc[(d >= start) & (d <= end)].reset_index(drop=True)


def fit_fold(
    prices: pd.DataFrame,
    fold: Fold,
    settings: Settings,
    *,
    features: pd.DataFrame | None = None,
    seeds: Sequence[int] = (0,),
) -> FoldResult:
    """Fit every member and the ensemble up to ``fold.as_of`` and forecast ``fold``'s test dates."""
    from ensemble.scoring import per_ticker_walk_forward  # lazy: the feature pipeline
    from ensemble.training import member_params, prepare_data, sequence_lead

    t0 = time.perf_counter()
    horizons = list(settings.horizons)
    s = _fold_settings(settings, fold)
    tr = s.training
    meter = CostMeter(tr.cpu_hour_usd, tr.gpu_hour_usd, tr.cost_limit_usd)
    prep = prepare_data(s, meter, prices=prices, features=features)
    if (prep.split.train_start, prep.split.valid_end) != (fold.split.train_start, fold.split.valid_end):
        raise RuntimeError(
            f"fold {fold.index}: prepare_data split {prep.split} differs from the fold's {fold.split}"
        )
    names = [m for m in MODEL_NAMES if m in tr.models]
    frame = prep.eval_frame  # validation start - history .. the end of the data
    dates = pd.DatetimeIndex(np.sort(frame["date"].unique()))
    lead = sequence_lead(s)
    first_in = dates[max(0, int(dates.searchsorted(fold.test_start)) - lead)]
    valid_in = frame.loc[frame["date"] <= fold.split.valid_end].reset_index(drop=True)
    test_in = _between(frame, first_in, fold.test_end)
    tcols = [target_col(h) for h in horizons]
    truth = _between(frame, fold.test_start, fold.test_end)[[*KEY_COLUMNS, *tcols, VOL_COLUMN]]
    valid_truth = prep.valid[[*KEY_COLUMNS, *tcols, VOL_COLUMN]]
    seeds = [int(x) for x in seeds] or [0]

    def on_valid(p: pd.DataFrame) -> pd.DataFrame:
        return _between(p, fold.split.valid_start, fold.split.valid_end)

    def on_test(p: pd.DataFrame) -> pd.DataFrame:
        return _between(p, fold.test_start, fold.test_end)

    vpreds: dict[str, pd.DataFrame] = {}
    scores: dict[str, pd.DataFrame] = {}
    seed_preds: dict[str, dict[int, pd.DataFrame]] = {}
    seed_scores: dict[str, dict[int, dict[str, float]]] = {}
    failures: dict[str, str] = {}
    wall: dict[str, float] = {}
    for name in names:
        t = time.perf_counter()
        cls = get_model_class(name)
        params = member_params(s, name)
        try:
            with meter.stage(name, cpus=1):
                if cls.uses_sequences:
                    pv = []
                    seed_preds[name], seed_scores[name] = {}, {}
                    for seed in seeds:
                        m = create_model(name, horizons=horizons, **{**params, "seed": seed})
                        prep.member_rows(cls).fit(m)
                        pv.append(on_valid(m.predict(valid_in)))
                        p = on_test(m.predict(test_in))
                        seed_preds[name][seed] = p
                        seed_scores[name][seed] = forecast_metrics(p, truth, horizons)
                    vpreds[name] = mean_preds(pv, horizons)
                    scores[name] = mean_preds(list(seed_preds[name].values()), horizons)
                elif cls.per_ticker:  # validated as jobs.train validates it: refitted as it goes stale
                    m = prep.member_rows(cls).fit(create_model(name, horizons=horizons, **params))
                    fresh = _refit_with(name, horizons, params)
                    every = tr.prophet_valid_refit_every_days
                    wf, _, last = per_ticker_walk_forward(s, m, prices, on_valid(valid_in), every, fit=fresh)
                    vpreds[name] = on_valid(wf)
                    if every > 0:  # the test dates as scoring serves them, from the validation's models
                        serve = s.scoring.prophet_refit_every_days
                        pt, _, _ = per_ticker_walk_forward(
                            s, last, prices, on_test(test_in), serve, fit=fresh
                        )
                    else:  # the one fit forecasts every date, validation and test
                        pt = m.predict(test_in)
                    scores[name] = on_test(pt)
                else:
                    m = prep.member_rows(cls).fit(create_model(name, horizons=horizons, **params))
                    vpreds[name] = on_valid(m.predict(valid_in))
                    scores[name] = on_test(m.predict(test_in))
        except Exception as exc:  # one failing member is reported and left out, never replaced
            logger.error("fold %d: %s failed; left out of this fold", fold.index, name, exc_info=exc)
            failures[name] = f"{type(exc).__name__}: {exc}"
            seed_preds.pop(name, None)
            seed_scores.pop(name, None)
        wall[name] = time.perf_counter() - t
        if name in scores:
            logger.info("fold %d: %s fitted in %.1f s", fold.index, name, wall[name])
    if not scores:
        raise RuntimeError(f"fold {fold.index}: every member failed: {failures}")

    ec = s.ensemble
    t = time.perf_counter()
    with meter.stage("ensemble", cpus=1):
        ens = EnsembleForecaster(
            ec.weights, horizons, mode=ec.mode, levels=ec.interval_levels, gate=ec.member_gate
        )
        ens.fit(vpreds, valid_truth, history=prep.label_history())
        ens_test = ens.predict(scores, truth)
    wall["ensemble"] = time.perf_counter() - t
    member_preds = {m: ens.member_returns(m, p) if m in ens.members_ else p for m, p in scores.items()}
    valid_metrics = {m: forecast_metrics(p, valid_truth, horizons) for m, p in vpreds.items()}
    wall["total"] = time.perf_counter() - t0
    return FoldResult(
        fold=fold,
        member_preds=member_preds,
        member_scores=scores,
        ensemble=ens_test,
        truth=truth.reset_index(drop=True),
        weights={h: ens.weights(h) for h in horizons},
        ensemble_state=ens.to_dict(),
        seed_preds=seed_preds,
        seed_scores=seed_scores,
        valid_metrics=valid_metrics,
        failures=failures,
        wall_s=wall,
        cost=meter.report(),
    )


def _refit_with(name: str, horizons: Sequence[int], params: dict[str, Any]) -> Any:
    """A fresh member ``name`` fitted on a frame (a per-ticker member's refit, in this process)."""

    def fit(frame: pd.DataFrame) -> Any:
        return create_model(name, horizons=horizons, **params).fit(frame)

    return fit


def mean_preds(parts: Sequence[pd.DataFrame], horizons: Sequence[int]) -> pd.DataFrame:
    """The row-wise mean of forecasts on the same (date, ticker) rows (one per seed)."""
    keys = list(KEY_COLUMNS)
    stacked = pd.concat(parts, ignore_index=True)
    cols = [pred_col(h) for h in horizons]
    out = stacked.groupby(keys, sort=False, observed=True)[cols].mean().reset_index()
    return out.sort_values(["ticker", "date"], kind="mergesort").reset_index(drop=True)
