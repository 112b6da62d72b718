"""The data side of the one training path, as library calls: prices -> features -> the
train-only preprocessor -> purged train / validation windows (and, inside the training window, the
members' fitting and early-stopping rows) -> the learning targets.

``jobs.train`` (Ray), ``jobs.backtest`` (one fold per cut-off date) and the benchmarks all prepare
their data here, so a model is always fitted on the same kind of frame. Nothing here imports Ray.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ensemble.backtest.splits import stopping_split, train_valid_split, window
from ensemble.config import MODEL_NAMES, Settings
from ensemble.cost import CostMeter
from ensemble.data.sources import load_prices
from ensemble.features import Preprocessor, build_features
from ensemble.features.normalize import cross_sectional_targets
from ensemble.models import get_model_class
from ensemble.models.base import Forecaster
from ensemble.models.ensemble import trailing_volatility
from ensemble.registry import data_fingerprint

logger = logging.getLogger(__name__)


def add_prophet_regressors(
    frame: pd.DataFrame, settings: Settings, prices: pd.DataFrame, feats: pd.DataFrame
) -> pd.DataFrame:
    """``frame`` with the extra regressor columns Prophet is configured with (``models.prophet.
    regressors``): ``mkt_log_level`` (the market's cumulative log return, computed from ``prices``),
    or any feature of the pipeline (its raw, unscaled value when the preprocessor did not keep it)."""
    from ensemble.models.prophet_model import MARKET_LEVEL, market_log_level

    regs = list(settings.models.get("prophet", {}).get("regressors", []))
    for r in regs:
        if r in frame.columns:
            continue
        if r == MARKET_LEVEL:
            frame = frame.merge(market_log_level(prices), on="date", how="left")
        elif r in feats.columns:
            frame = frame.merge(feats[["date", "ticker", r]], on=["date", "ticker"], how="left")
        else:
            raise ValueError(
                f"models.prophet.regressors: {r!r} is neither {MARKET_LEVEL!r} nor a feature of the "
                "pipeline (python -m ensemble.features --list)"
            )
    return frame


def member_params(settings: Settings, name: str) -> dict[str, Any]:
    """The parameters member ``name`` is built with on every training path (jobs.train's Ray Train,
    Ray Tune and plain fits, and the walk-forward folds): ``models.<name>`` over the model's defaults;
    a sequence member also takes its window ``seq_len`` from ``features.sequence_length``, its
    ``max_epochs`` from ``training.max_epochs`` and its ``seed`` from ``training.seed``, unless
    ``models.<name>`` pins them."""
    params: dict[str, Any] = dict(settings.models.get(name, {}))
    if get_model_class(name).uses_sequences:
        params.setdefault("seq_len", settings.features.sequence_length)
        params.setdefault("max_epochs", settings.training.max_epochs)
        params.setdefault("seed", settings.training.seed)
    return params


def sequence_lead(settings: Settings) -> int:
    """Trading dates of history before the first forecast date that a frame given to ``predict`` must
    hold: the longest window of the trained sequence members (:func:`member_params`), at least
    ``features.sequence_length``, plus 5."""
    lens = [settings.features.sequence_length]
    for name in settings.training.models:
        if get_model_class(name).uses_sequences:
            lens.append(int(member_params(settings, name)["seq_len"]))
    return max(lens) + 5


def model_frame(
    settings: Settings, prices: pd.DataFrame, feats: pd.DataFrame, pre: Preprocessor
) -> pd.DataFrame:
    """What every member and the ensemble read: the fitted preprocessor applied to ``feats``, plus
    ``close``, the trailing volatility (``VOL_COLUMN``) and Prophet's extra regressors (when a
    per-ticker model is trained). Used by training (:func:`prepare_data`) and scoring alike."""
    frame = (
        pre.transform(feats)
        .merge(prices[["date", "ticker", "close"]], on=["date", "ticker"], how="left")
        .merge(trailing_volatility(prices), on=["date", "ticker"], how="left")
    )
    if any(get_model_class(m).per_ticker for m in settings.training.models):
        frame = add_prophet_regressors(frame, settings, prices, feats)
    return frame


@dataclass
class Prepared:
    """The data stage's output: what every model trains and validates on."""

    prices: pd.DataFrame
    oracle: pd.DataFrame | None
    fingerprint: str
    preprocessor: Preprocessor
    split: Any
    train: pd.DataFrame  # realised forward returns as targets (what metrics score against)
    valid: pd.DataFrame
    eval_frame: pd.DataFrame  # the validation dates plus enough history for the sequence windows
    train_fit: pd.DataFrame  # the same rows with the learning target (training.target, per date)
    valid_fit: pd.DataFrame
    # what the members that stop early fit on and stop on (learning targets): the training window
    # cut by :func:`ensemble.backtest.splits.stopping_split`; with ``training.early_stopping_fraction``
    # 0, ``train_fit`` and ``valid_fit``
    member_fit: pd.DataFrame
    member_stop: pd.DataFrame
    # the members fitted again on ``train_fit`` after stopping (:func:`refit_members`)
    refit: frozenset[str] = frozenset()

    def member_rows(self, cls: type[Forecaster]) -> FitRows:
        """The rows ``cls.fit`` gets (:func:`fit_rows`)."""
        return fit_rows(cls, self.train_fit, self.member_fit, self.member_stop, cls.name in self.refit)

    def label_history(self) -> pd.DataFrame:
        """(date, ticker, ``target_h{h}``..., ``ref_vol``) the realised forward returns of the training and validation rows:
        every label realised by the cutoff (later ones are NaN). The ensemble's universe history."""
        cols = ["date", "ticker", *[c for c in self.train.columns if c.startswith("target_h")]]
        cols += [c for c in ("ref_vol",) if c in self.train.columns]
        return pd.concat([self.train[cols], self.valid[cols]], ignore_index=True)


def member_windows(
    train: pd.DataFrame,
    train_fit: pd.DataFrame,
    valid_fit: pd.DataFrame,
    settings: Settings,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(member_fit, member_stop)``, with the learning target ``training.target``: the training
    window ``train`` (realised returns, purged at its end) cut by
    :func:`ensemble.backtest.splits.stopping_split` at ``training.early_stopping_fraction``; with the
    fraction 0, ``train_fit`` and ``valid_fit`` (the members stop on the validation dates). Warns
    when the stopping rows hold no label at a horizon."""
    tr = settings.training
    if tr.early_stopping_fraction <= 0:
        return train_fit, valid_fit
    fit, stop = stopping_split(train, tr.early_stopping_fraction)
    n_stop = stop["date"].nunique()
    short = [h for h in settings.horizons if n_stop <= h]
    if short:
        logger.warning(
            "training.early_stopping_fraction %.2f: the last %d training dates stop the members "
            "that stop early, and none holds a label at h=%s: their early stopping cannot "
            "watch it (raise the fraction or training.training_days)",
            tr.early_stopping_fraction, n_stop, short,
        )  # fmt: skip
    return cross_sectional_targets(fit, tr.target), cross_sectional_targets(stop, tr.target)


@dataclass(frozen=True)
class FitRows:
    """What one member's ``fit`` gets (:func:`fit_rows`): ``train``, ``valid`` (the rows it stops
    on, or None) and ``refit_on`` (the rows a member that refits is fitted again on, or None)."""

    train: pd.DataFrame
    valid: pd.DataFrame | None = None
    refit_on: pd.DataFrame | None = None

    def fit(self, model: Forecaster, **kwargs: Any) -> Forecaster:
        """``model.fit`` on these rows (``kwargs``: e.g. ``callbacks``); returns the fitted model."""
        return model.fit(self.train, self.valid, refit_on=self.refit_on, **kwargs)


def fit_rows(
    cls: type[Forecaster],
    train_fit: pd.DataFrame,
    member_fit: pd.DataFrame,
    member_stop: pd.DataFrame,
    refit: bool = False,
) -> FitRows:
    """The rows for ``cls.fit``: a member that stops early (``Forecaster.early_stops``) fits on
    ``member_fit`` and stops on ``member_stop`` (:func:`member_windows`), and with ``refit``
    (:func:`refit_members`) is then fitted again on the whole training window ``train_fit`` for the
    rounds or epochs it stopped at; any other member fits on ``train_fit`` and is given no
    validation rows. Every training path (and bench/quality.py) fits members with these."""
    if cls.early_stops:
        return FitRows(member_fit, member_stop, train_fit if refit else None)
    return FitRows(train_fit, None, None)


def refit_members(settings: Settings) -> frozenset[str]:
    """The members :func:`fit_rows` refits: ``training.refit_after_stopping`` when there is a
    stopping tail (``training.early_stopping_fraction`` > 0; with 0 the members stop on the
    validation dates and fit the whole training window already). Raises ValueError, naming the
    setting, for a model that cannot refit (``Forecaster.refits``: one that does not stop early)."""
    tr = settings.training
    cannot = [n for n in tr.refit_after_stopping if not get_model_class(n).refits]
    if cannot:
        raise ValueError(
            f"training.refit_after_stopping: {cannot} cannot refit (they do not stop early); "
            "models that can: the boosters and the sequence models"
        )
    return frozenset(tr.refit_after_stopping) if tr.early_stopping_fraction > 0 else frozenset()


def tuned_members(settings: Settings) -> frozenset[str]:
    """The members tuned rather than fitted with their ``DEFAULTS``: ``training.tuned_models``.
    Raises ValueError, naming the setting, for a model that declares no search space
    (``Forecaster.tunable``: the tree models can be tuned)."""
    names = settings.training.tuned_models
    cannot = [n for n in names if not get_model_class(n).tunable()]
    if cannot:
        raise ValueError(
            f"training.tuned_models: {cannot} cannot be tuned (they declare no search space); "
            f"models that can: {[n for n in MODEL_NAMES if get_model_class(n).tunable()]}"
        )
    return frozenset(names)


def prepare_data(
    settings: Settings,
    meter: CostMeter,
    prices: pd.DataFrame | None = None,
    features: pd.DataFrame | None = None,
    oracle: pd.DataFrame | None = None,
) -> Prepared:
    """Load the prices (or take ``prices``, a contract table, and its synthetic ``oracle`` if any),
    build the features, fit the preprocessor on the training dates only, split (up to
    ``training.as_of`` when set).

    ``features``: ``build_features(prices, settings.horizons)`` computed once by the caller (the
    walk-forward backtest shares it between folds: every feature at t uses rows dated <= t, so the
    whole panel's features are the same as each cut-off's); the preprocessor is still fitted here."""
    horizons = list(settings.horizons)
    tr = settings.training
    with meter.stage("data", cpus=1):
        if prices is None:
            prices, oracle = load_prices(settings)
        fingerprint = data_fingerprint(prices)
    n_tickers = prices["ticker"].nunique()
    logger.info("data: %d rows, %d tickers, %s", len(prices), n_tickers, settings.data.source)

    with meter.stage("features", cpus=min(2, os.cpu_count() or 1)):
        feats = build_features(prices, horizons, n_jobs=None) if features is None else features
        split = train_valid_split(
            feats["date"], training_days=tr.training_days, valid_fraction=tr.valid_fraction, as_of=tr.as_of
        )
        pre = Preprocessor(
            k=settings.features.selection_k,
            target=f"target_h{horizons[0]}",
            cs_norm=settings.features.cs_norm,
        )
        pre.fit(feats, split.train_end)
        frame = model_frame(settings, prices, feats, pre)
        del feats
        train = window(frame, split.train_start, split.train_end)
        valid = window(frame, split.valid_start, split.valid_end)
        dates = pd.DatetimeIndex(sorted(frame["date"].unique()))
        lead = sequence_lead(settings)
        first = dates[max(0, int(dates.searchsorted(split.valid_start)) - lead)]
        eval_frame = frame[frame["date"] >= first].reset_index(drop=True)
        train_fit = cross_sectional_targets(train, tr.target)
        valid_fit = cross_sectional_targets(valid, tr.target)
        member_fit, member_stop = member_windows(train, train_fit, valid_fit, settings)
    logger.info("split: %s; %d features selected", split.as_dict(), len(pre.selected_))
    return Prepared(
        prices, oracle, fingerprint, pre, split, train, valid, eval_frame, train_fit, valid_fit,
        member_fit, member_stop, refit_members(settings),
    )  # fmt: skip
