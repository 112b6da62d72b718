"""As-of scoring: a registry version and the prices up to a date -> forecasts for the whole universe.

One path, used by ``jobs.score``, the Serve deployments, monitoring and the backtest, so that a number
means the same everywhere (DESIGN.md, "Scoring"):

1. :func:`load_version`: the version's settings (rebuilt from its stored config), preprocessor,
   ensemble and members, each verified by the registry (checksums, no pickles) before it is read. A
   member that fails to load is left out and listed in ``degraded`` with the reason, never replaced.
2. :func:`prepare_frame`: every row dated after ``as_of`` is dropped first; then the last
   :func:`history_days` trading dates up to ``as_of`` (every ticker: cross-sectional features need
   the whole universe of a date) go through the feature pipeline once, the version's preprocessor is
   applied unchanged and close, the trailing volatility and Prophet's regressors are added
   (:func:`ensemble.training.model_frame`, the same function training uses). Because the window is
   fixed by ``as_of`` and ``history_days``, the result does not depend on how much history the
   caller passes beyond it, nor on anything dated after ``as_of``.
3. :func:`predict_member`: one ``predict`` call per member over the universe; a ticker the member
   cannot score (too little history for its sequence window, a Prophet ticker that never fitted, a
   non-finite forecast) is left out with the reason. No number is ever invented.
4. :func:`combine`: the version's :class:`~ensemble.models.ensemble.EnsembleForecaster` (learned
   weights renormalised over the members present, calibrated returns, intervals, confidence).

:func:`score` runs the four steps. Per-ticker Prophet models go stale after their training window:
:func:`stale_prophet_tickers` finds those fitted through a date more than
``scoring.prophet_refit_every_days`` trading dates before ``as_of``; :func:`prophet_refit_frame` is
the history a refit uses (the training window's length, up to ``as_of``), :func:`refit_prophet`
fits it in-process (``jobs.score`` runs the same fit in the Ray fan-out) and :func:`with_prophet`
returns the loaded version with the refitted tickers swapped in (the registry is never written);
:func:`refresh_stale_prophet` runs those steps in-process (the Prophet Serve deployment does, per
as-of date).

:func:`sample_forecasts` records a few rows of :func:`score` with a version at training time;
:func:`compare_samples` is how ``jobs.deploy`` checks that the stored version still forecasts them.

Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ensemble.config import Settings
from ensemble.features import Preprocessor, build_features
from ensemble.features.catalog import catalogue
from ensemble.features.panel import valid_price_rows
from ensemble.models.base import KEY_COLUMNS, Forecaster, pred_col
from ensemble.models.ensemble import VOL_COLUMN, EnsembleForecaster
from ensemble.models.sequence import SequenceForecaster
from ensemble.registry import ModelRegistry
from ensemble.training import add_prophet_regressors, model_frame, sequence_lead

logger = logging.getLogger(__name__)

ALL = "all"  # the key of ScoreResult.skipped for tickers not scored at all
WARMUP_FACTOR = 2  # history_days: this many times the longest feature lookback (recursive indicators settle)


class ScoringError(ValueError):
    """The data cannot be scored as asked (e.g. no prices on the as-of date)."""


@dataclass
class LoadedVersion:
    """A registry version, loaded and verified, ready to score."""

    version: str
    settings: Settings  # rebuilt from the version's stored config
    preprocessor: Preprocessor
    ensemble: EnsembleForecaster
    models: dict[str, Forecaster]
    horizons: tuple[int, ...]
    degraded: dict[str, str] = field(default_factory=dict)  # member -> why it is not in `models`


@dataclass
class ScoreResult:
    """What :func:`score` returns.

    ``frame``: one row per scored ticker of ``as_of``: ``date, ticker, close, ref_vol``, the ensemble's
    ``pred_h{h}`` (expected log return), ``excess_h{h}``, ``lo{L}_h{h}`` / ``hi{L}_h{h}``,
    ``confidence_h{h}``, ``n_models_h{h}``, and each member's forecast in return units (the ensemble's
    calibration of that member) as ``{member}_h{h}``. ``members``: each member's raw ``predict``
    output (its own units). ``skipped``: member -> ticker -> reason, plus :data:`ALL` for tickers not
    scored at all. ``degraded``: members left out of this scoring (failed to load or to predict).
    ``contributions``: when asked (``explain_horizon``), the tree members' per-feature contributions
    to each ticker's expected excess return (long: ticker, feature, contribution).
    """

    as_of: pd.Timestamp
    version: str
    frame: pd.DataFrame
    members: dict[str, pd.DataFrame]
    skipped: dict[str, dict[str, str]]
    degraded: dict[str, str]
    contributions: pd.DataFrame | None = None
    explain_horizon: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)


# -- loading -------------------------------------------------------------------------------------------
def load_version(
    registry: ModelRegistry, version_or_alias: str = "production", members: Sequence[str] | None = None
) -> LoadedVersion:
    """Load ``members`` (default: every model of the version) of a version or alias, each verified by
    the registry. The preprocessor and the ensemble must load (else the error is raised); a member that
    fails is listed in ``degraded`` (so is one that already failed at training). ``members=[]``: the
    settings, preprocessor and ensemble only (``models`` empty), e.g. for a process that combines
    members forecast elsewhere."""
    version = registry.resolve(version_or_alias)
    man = registry.manifest(version)
    settings = Settings.model_validate(man["config"])
    pre = Preprocessor.from_dict(registry.load_extra(version, "preprocessor"))
    ens = EnsembleForecaster.from_dict(registry.load_extra(version, "ensemble"))
    degraded: dict[str, str] = {}
    if "training" in man["extras"]:
        for name, why in registry.load_extra(version, "training").get("degraded", {}).items():
            degraded[str(name)] = f"failed at training: {why}"
    available = list(man["models"])
    names = available if members is None else list(members)
    unknown = [m for m in names if m not in available and m not in degraded]
    if unknown:
        raise KeyError(f"version {version} has no model(s) {unknown}; it holds {available}")
    models: dict[str, Forecaster] = {}
    for name in names:
        if name not in available:
            continue
        try:
            models.update(registry.load_version(version, [name]))
        except Exception as exc:  # a member that fails to load is reported, never replaced
            logger.error("version %s: member %s failed to load: left out", version, name, exc_info=exc)
            degraded[name] = f"failed to load: {type(exc).__name__}: {exc}"
    if not models and names:
        raise RuntimeError(f"version {version}: no member could be loaded: {degraded}")
    return LoadedVersion(version, settings, pre, ens, models, tuple(settings.horizons), degraded)


# -- the frame -----------------------------------------------------------------------------------------
def history_days(settings: Settings) -> int:
    """Trading dates of history up to the as-of date that scoring reads (and :func:`prepare_frame`
    keeps): :data:`WARMUP_FACTOR` times the longest feature lookback of the catalogue (so that
    recursive indicators such as EMAs settle) plus the sequence models' window and its lead."""
    longest = max(s.lookback for s in catalogue())
    return WARMUP_FACTOR * longest + sequence_lead(settings)


def _as_of(prices: pd.DataFrame, as_of: Any) -> pd.Timestamp:
    if as_of is None:
        if prices.empty:
            raise ScoringError("no prices to score")
        return pd.Timestamp(prices["date"].max())
    return pd.Timestamp(as_of)


def _window(prices: pd.DataFrame, as_of: pd.Timestamp, days: int) -> pd.DataFrame:
    """The rows of the last ``days`` trading dates up to ``as_of`` (nothing after it)."""
    upto = prices.loc[prices["date"] <= as_of]
    dates = np.sort(upto["date"].unique())
    if len(dates) == 0 or pd.Timestamp(dates[-1]) != as_of:
        last = f"; the latest is {pd.Timestamp(dates[-1]).date()}" if len(dates) else ""
        raise ScoringError(f"no prices dated {as_of.date()} to score{last}")
    first = dates[max(0, len(dates) - days)]
    return (
        upto.loc[upto["date"] >= first].sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    )


def unscorable(prices: pd.DataFrame, as_of: pd.Timestamp, min_history_days: int) -> dict[str, str]:
    """``{ticker: reason}`` for the tickers of ``prices`` (rows dated <= ``as_of``) that cannot be
    scored at all: no row on ``as_of``, no valid price on it, or fewer than ``min_history_days``
    trading dates with a valid price."""
    ok = valid_price_rows(prices)
    g = pd.DataFrame({"ticker": prices["ticker"].to_numpy(), "date": prices["date"].to_numpy(), "ok": ok})
    by = g.groupby("ticker", sort=True, observed=True)
    last = by["date"].max()
    n_ok = by["ok"].sum()
    on_day = g.loc[g["date"] == as_of].set_index("ticker")["ok"]
    out: dict[str, str] = {}
    for t in last.index:
        if pd.Timestamp(last[t]) != as_of:
            out[str(t)] = f"no row on {as_of.date()} (last row {pd.Timestamp(last[t]).date()})"
        elif not bool(on_day.get(t, False)):
            out[str(t)] = f"no valid price on {as_of.date()}"
        elif int(n_ok[t]) < min_history_days:
            out[str(t)] = (
                f"{int(n_ok[t])} trading days of history < scoring.min_history_days={min_history_days}"
            )
    return out


def prepare_frame(
    lv: LoadedVersion, prices: pd.DataFrame, as_of: Any, *, min_history_days: int | None = None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The frame every member and the ensemble read for ``as_of`` (its date plus the sequence
    models' history window; tickers that cannot be scored left out), and ``{ticker: reason}`` for
    those tickers. See the module docstring; ``min_history_days`` defaults to the version's
    ``scoring.min_history_days``."""
    as_of = pd.Timestamp(as_of)
    s = lv.settings
    window = _window(prices, as_of, history_days(s))
    need = s.scoring.min_history_days if min_history_days is None else int(min_history_days)
    skipped = unscorable(window, as_of, need)
    feats = build_features(window, s.horizons, n_jobs=None)
    feats = feats.drop(columns=[c for c in feats.columns if str(c).startswith("target_h")])
    frame = model_frame(s, window, feats, lv.preprocessor)
    dates = np.sort(frame["date"].unique())
    first = dates[max(0, len(dates) - sequence_lead(s))]
    keep = (frame["date"] >= first) & ~frame["ticker"].isin(list(skipped))
    return frame.loc[keep].reset_index(drop=True), skipped


# -- members and the ensemble ----------------------------------------------------------------------------
def predict_member(
    lv: LoadedVersion, name: str, frame: pd.DataFrame, as_of: Any
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Member ``name``'s forecasts for ``as_of`` (``date, ticker, pred_h{h}``: one ``predict`` call
    over the universe) and ``{ticker: reason}`` for the tickers of ``frame``'s ``as_of`` rows it left
    out (too little history for its sequence window, a ticker it has no fitted model for, a
    non-finite forecast)."""
    if name not in lv.models:
        why = lv.degraded.get(name, "not a member of the version")
        raise KeyError(f"member {name!r} is not loaded: {why}")
    model = lv.models[name]
    as_of = pd.Timestamp(as_of)
    at = frame.loc[frame["date"] == as_of].reset_index(drop=True)
    skipped: dict[str, str] = {}
    if isinstance(model, SequenceForecaster):
        seq_len = int(model.resolved_params()["seq_len"])
        counts = frame.groupby("ticker", sort=False, observed=True).size()
        short = counts[counts < seq_len]
        for t, n in short.items():
            skipped[str(t)] = f"{int(n)} rows of history < the sequence window ({seq_len})"
        inp = frame.loc[~frame["ticker"].isin(short.index)]
        # the window of the as-of row is the ticker's last seq_len rows: nothing older is read
        inp = inp.groupby("ticker", sort=False, observed=True).tail(seq_len).reset_index(drop=True)
        pred = model.predict(inp, dates=[as_of])  # one window per ticker, not one per history row
    else:
        pred = model.predict(at)
    cols = [pred_col(h) for h in model.horizons]
    vals = pred[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(vals).all(axis=1)
    failed = getattr(model, "failed_", {})
    for t in pred.loc[~finite, "ticker"].astype(str):
        if model.per_ticker and t not in getattr(model, "models_", {}):
            skipped[t] = (
                f"no fitted model: {failed[t]}" if t in failed else "no fitted model (not trained on it)"
            )
        else:
            skipped[t] = "non-finite forecast"
    out = pred.loc[finite].sort_values("ticker").reset_index(drop=True)
    return out, dict(sorted(skipped.items()))


def combine(lv: LoadedVersion, member_preds: Mapping[str, pd.DataFrame], frame: pd.DataFrame) -> pd.DataFrame:
    """The version's ensemble over ``member_preds`` for the last date of ``frame`` (one row per ticker
    of that date; :meth:`EnsembleForecaster.predict`: ``pred_h{h}``, ``excess_h{h}``, interval bounds,
    ``confidence_h{h}``, ``n_models_h{h}``; NaN where no member forecasts the ticker)."""
    as_of = frame["date"].max()
    at = frame.loc[frame["date"] == as_of].sort_values("ticker").reset_index(drop=True)
    present = {m: p for m, p in member_preds.items() if m in lv.ensemble.members_}
    return lv.ensemble.predict(present, at)


def member_contributions(
    lv: LoadedVersion, name: str, frame: pd.DataFrame, horizon: int, tickers: Sequence[str] | pd.Series
) -> pd.DataFrame | None:
    """Tree member ``name``'s raw per-feature contributions at ``horizon`` (``model.contributions``:
    ``date, ticker, bias, <feature>...``) for the last date of ``frame``, over ``tickers`` (those the
    member forecast); None for a member without contributions or fewer than two such tickers.
    :func:`explain` combines them; a process holding only some members (a Serve member deployment)
    computes its own part here."""
    model = lv.models.get(name)
    if model is None or not hasattr(model, "contributions"):
        return None
    as_of = frame["date"].max()
    at = frame.loc[frame["date"] == as_of].sort_values("ticker").reset_index(drop=True)
    rows = at.loc[at["ticker"].isin(tickers)].reset_index(drop=True)
    if len(rows) < 2:
        return None
    out: pd.DataFrame = model.contributions(rows, horizon=horizon)
    return out


def explain(
    lv: LoadedVersion,
    member_preds: Mapping[str, pd.DataFrame],
    frame: pd.DataFrame,
    horizon: int,
    contributions: Mapping[str, pd.DataFrame | None] | None = None,
) -> pd.DataFrame:
    """Each ticker's feature contributions to its expected excess return at ``horizon``, summed over
    the tree members present (long: ``ticker, feature, contribution``). ``contributions``: each tree
    member's :func:`member_contributions`, when computed elsewhere (default: computed here from
    ``lv.models``; a member missing from the mapping adds nothing).

    The ensemble scores a member by its per-date z-score, ``(p_i - mean) / std``; a tree member's
    prediction is ``bias + sum_f c_if`` (TreeSHAP or the forest path decomposition), so feature ``f``
    moves ticker ``i``'s z-score by ``(c_if - mean_j c_jf) / std``. Weighted by the ensemble's weights
    (renormalised over the members forecasting the ticker, as the ensemble does) and multiplied by
    its calibration ``beta``, these add up to the trees' share of the expected excess return."""
    as_of = frame["date"].max()
    at = frame.loc[frame["date"] == as_of].sort_values("ticker").reset_index(drop=True)
    ens = lv.ensemble
    weights = ens.weights(horizon)
    present = [m for m in ens.members_ if m in member_preds and weights.get(m, 0.0) > 0]
    wsum = pd.Series(0.0, index=at["ticker"].astype(str))
    for m in present:
        wsum[wsum.index.isin(member_preds[m]["ticker"].astype(str))] += weights[m]
    parts = []
    for m in present:
        if contributions is None:
            c = member_contributions(lv, m, frame, horizon, member_preds[m]["ticker"])
        else:
            c = contributions.get(m)
        if c is None:
            continue
        feats = [f for f in c.columns if f not in (*KEY_COLUMNS, "bias")]
        pred = c[feats].sum(axis=1) + c["bias"]
        std = float(pred.std(ddof=0))
        if not np.isfinite(std) or std <= 0:
            continue
        tick = c["ticker"].astype(str)
        scale = ens.beta_[horizon] * weights[m] / (std * wsum.reindex(tick).to_numpy())
        v = (c[feats] - c[feats].mean()).to_numpy(dtype=np.float64) * scale[:, None]
        parts.append(pd.DataFrame(v, columns=feats, index=tick))
    if not parts:
        return pd.DataFrame({"ticker": pd.Series(dtype=object), "feature": pd.Series(dtype=object),
                             "contribution": pd.Series(dtype=np.float64)})  # fmt: skip
    total = pd.concat(parts).groupby(level=0, sort=True).sum()
    total.index.name = "ticker"
    long = total.stack().reset_index()
    long.columns = pd.Index(["ticker", "feature", "contribution"])
    return long


def score(
    lv: LoadedVersion,
    prices: pd.DataFrame,
    as_of: Any = None,
    tickers: Sequence[str] | None = None,
    *,
    explain_horizon: int | None = None,
    min_history_days: int | None = None,
) -> ScoreResult:
    """Score the universe of ``prices`` as of ``as_of`` (default: its latest date) with ``lv``.

    Vectorised: one feature pass over the universe, one ``predict`` call per member. ``tickers``
    selects the rows returned; the whole universe is still scored (cross-sectional features and the
    ensemble's per-date z-scores need it), so a ticker's numbers do not depend on the selection.
    ``explain_horizon``: also compute the tree members' feature contributions at that horizon."""
    t0 = time.perf_counter()
    as_of = _as_of(prices, as_of)
    frame, skip_all = prepare_frame(lv, prices, as_of, min_history_days=min_history_days)
    t_frame = time.perf_counter()
    members: dict[str, pd.DataFrame] = {}
    skipped: dict[str, dict[str, str]] = {ALL: dict(skip_all)}
    degraded = dict(lv.degraded)
    seconds: dict[str, float] = {"frame": t_frame - t0}
    for name in lv.models:
        t = time.perf_counter()
        try:
            members[name], skipped[name] = predict_member(lv, name, frame, as_of)
        except Exception as exc:  # a member that errors is left out and reported, never replaced
            logger.error("member %s failed to predict as of %s: left out", name, as_of.date(), exc_info=exc)
            degraded[name] = f"failed to predict: {type(exc).__name__}: {exc}"
        seconds[name] = time.perf_counter() - t
    t = time.perf_counter()
    ens = combine(lv, members, frame) if members else frame.loc[frame["date"] == as_of, list(KEY_COLUMNS)]
    hcols = [pred_col(h) for h in lv.ensemble.horizons]
    have = ens[hcols].notna().any(axis=1) if members else pd.Series(False, index=ens.index)
    for tk in ens.loc[~have, "ticker"].astype(str):
        skip_all[tk] = "no member could forecast it"
    skipped[ALL] = dict(sorted(skip_all.items()))
    at = frame.loc[frame["date"] == as_of, [*KEY_COLUMNS, "close", VOL_COLUMN]]
    out = at.merge(ens.loc[have], on=list(KEY_COLUMNS), how="inner")
    for name, p in members.items():
        if name in lv.ensemble.members_:
            r = lv.ensemble.member_returns(name, p)
            r = r.rename(columns={pred_col(h): f"{name}_h{h}" for h in lv.ensemble.horizons})
            out = out.merge(r, on=list(KEY_COLUMNS), how="left")
    contributions = None
    if explain_horizon is not None:
        if explain_horizon not in lv.ensemble.horizons:
            raise ValueError(
                f"explain_horizon {explain_horizon} is not a horizon of the version {lv.horizons}"
            )
        contributions = explain(lv, members, frame.loc[frame["ticker"].isin(out["ticker"])], explain_horizon)
    seconds["ensemble"] = time.perf_counter() - t
    if tickers is not None:
        want = [str(x) for x in tickers]
        known = set(prices["ticker"].astype(str))
        for tk in want:
            if tk not in known:
                skipped[ALL].setdefault(tk, "not in the data")
        out = out.loc[out["ticker"].isin(want)]
        members = {m: p.loc[p["ticker"].isin(want)].reset_index(drop=True) for m, p in members.items()}
        skipped = {k: {tk: r for tk, r in v.items() if tk in want} for k, v in skipped.items()}
        if contributions is not None:
            contributions = contributions.loc[contributions["ticker"].isin(want)].reset_index(drop=True)
    seconds["total"] = time.perf_counter() - t0
    logger.info(
        "scored %d tickers as of %s with version %s in %.1f s (%d not scored; degraded: %s)",
        len(out), as_of.date(), lv.version, seconds["total"], len(skipped[ALL]), sorted(degraded) or "none",
    )  # fmt: skip
    return ScoreResult(
        as_of=as_of,
        version=lv.version,
        frame=out.sort_values("ticker").reset_index(drop=True),
        members=members,
        skipped=skipped,
        degraded=degraded,
        contributions=contributions,
        explain_horizon=explain_horizon,
        seconds=seconds,
    )


def feature_descriptions() -> dict[str, str]:
    """Feature name -> its description in the catalogue (every feature the pipeline can compute)."""
    return {s.name: s.description for s in catalogue()}


# -- Prophet stays current -------------------------------------------------------------------------------
def per_ticker_member(lv: LoadedVersion) -> str | None:
    """The loaded member fitted per ticker (Prophet), if any."""
    return next((n for n, m in lv.models.items() if m.per_ticker), None)


def prophet_fitted_through(model: Any) -> dict[str, pd.Timestamp]:
    """Ticker -> the last date of the history its per-ticker Prophet model was fitted on."""
    return {str(t): pd.Timestamp(m.history["ds"].max()) for t, m in sorted(model.models_.items())}


def stale_prophet_tickers(
    fitted_through: Mapping[str, pd.Timestamp],
    trading_dates: Sequence[Any] | pd.Series | np.ndarray,
    as_of: Any,
    every_days: int,
    tickers: Sequence[str] | None = None,
) -> dict[str, pd.Timestamp]:
    """The tickers (of ``tickers``, default all) whose model was fitted through a date more than
    ``every_days`` trading dates (of ``trading_dates``) before ``as_of``; ticker -> fitted-through."""
    as_of = pd.Timestamp(as_of)
    dates = np.unique(pd.to_datetime(pd.Series(trading_dates)).to_numpy(dtype="datetime64[ns]"))
    dates = dates[dates <= as_of.to_datetime64()]
    want = None if tickers is None else {str(t) for t in tickers}
    out = {}
    for t, d in fitted_through.items():
        if want is not None and t not in want:
            continue
        age = len(dates) - int(np.searchsorted(dates, pd.Timestamp(d).to_datetime64(), side="right"))
        if age > every_days:
            out[t] = pd.Timestamp(d)
    return out


def prophet_refit_frame(
    lv: LoadedVersion, prices: pd.DataFrame, as_of: Any, tickers: Sequence[str], name: str | None = None
) -> pd.DataFrame:
    """What a refit of ``tickers``' per-ticker models fits on (:func:`per_ticker_fit_frame` with the
    version's settings and stored member)."""
    name = name or per_ticker_member(lv)
    if name is None:
        raise ValueError(f"version {lv.version} has no per-ticker member loaded")
    return per_ticker_fit_frame(lv.settings, lv.models[name], prices, as_of, tickers)


def per_ticker_fit_frame(
    settings: Settings, model: Any, prices: pd.DataFrame, as_of: Any, tickers: Sequence[str]
) -> pd.DataFrame:
    """What a per-ticker member (``model``, fitted or not) fits on as of ``as_of``: ``date, ticker,
    close`` and the model's regressors over the last ``training.training_days`` trading dates up to
    ``as_of`` (the length of the training window), nothing after ``as_of``. Used by the refits of
    scoring and serving, and by ``jobs.train`` for the stored fit through the validation end."""
    as_of = pd.Timestamp(as_of)
    window = _window(prices, as_of, settings.training.training_days)
    regs = list(getattr(model, "regressors", []))
    from ensemble.models.prophet_model import MARKET_LEVEL

    need_features = any(r != MARKET_LEVEL for r in regs)
    feats = (
        build_features(window, settings.horizons, n_jobs=None)
        if need_features
        else window[["date", "ticker"]]
    )
    frame = window[["date", "ticker", "close"]]
    if regs:
        frame = add_prophet_regressors(frame, settings, window, feats)
    want = {str(t) for t in tickers}
    return frame.loc[frame["ticker"].astype(str).isin(want)].reset_index(drop=True)


def refit_prophet(lv: LoadedVersion, frame: pd.DataFrame, name: str | None = None) -> Any:
    """Fit the per-ticker member afresh, in this process, on ``frame`` (:func:`prophet_refit_frame`),
    with the version's parameters; ``jobs.score`` does the same fit in the Ray fan-out."""
    name = name or per_ticker_member(lv)
    if name is None:
        raise ValueError(f"version {lv.version} has no per-ticker member loaded")
    old = lv.models[name]
    return type(old)(horizons=old.horizons, **old.params).fit(frame)


def with_prophet(lv: LoadedVersion, refit: Any, name: str | None = None) -> LoadedVersion:
    """``lv`` with the tickers fitted in ``refit`` replacing the old per-ticker models (a ticker whose
    refit failed keeps its old model). The registry version is not touched."""
    name = name or per_ticker_member(lv)
    if name is None:
        raise ValueError(f"version {lv.version} has no per-ticker member loaded")
    return dataclasses.replace(lv, models={**lv.models, name: merge_refit(lv.models[name], refit)})


def merge_refit(old: Any, refit: Any) -> Any:
    """A per-ticker member: ``old``'s models with the tickers fitted in ``refit`` replaced (a ticker
    whose refit failed keeps its old model; neither input is changed)."""
    cls: Any = type(old)
    keep = cls(horizons=old.horizons, **old.params)
    keep.models_ = {t: m for t, m in old.models_.items() if t not in refit.models_}
    keep.failed_ = {t: r for t, r in old.failed_.items() if t not in refit.models_}
    keep.fit_seconds_ = {t: s for t, s in old.fit_seconds_.items() if t not in refit.models_}
    fresh = cls(horizons=old.horizons, **old.params)
    fresh.models_, fresh.failed_ = dict(refit.models_), {}
    fresh.fit_seconds_ = dict(getattr(refit, "fit_seconds_", {}))
    return cls.merge([keep, fresh])


def per_ticker_walk_forward(
    settings: Settings,
    model: Any,
    prices: pd.DataFrame,
    rows: pd.DataFrame,
    every_days: int,
    fit: Callable[[pd.DataFrame], Any],
) -> tuple[pd.DataFrame, list[dict[str, Any]], Any]:
    """The per-ticker member's forecasts of ``rows`` (date, ticker and what its ``predict`` reads) as
    scoring serves them, date by date in order: on each date, the tickers with a row on it whose model
    was fitted through a date more than ``every_days`` trading dates before it
    (:func:`stale_prophet_tickers`, as :func:`refresh_stale_prophet`) are first refitted on the
    history up to that date (:func:`per_ticker_fit_frame`; ``fit(frame)`` returns the fitted member:
    in-process, or the Ray fan-out in ``jobs.train``) and merged in (:func:`merge_refit`). A ticker
    whose refit fails (or a refit that raises: every stale ticker) keeps its older model, is listed,
    and is tried again once it is stale again, more than ``every_days`` dates later. So every
    forecast comes from a model fitted on closes dated on or before its own date, at most
    ``every_days`` dates before it when its refits succeed. ``every_days`` 0: ``model`` forecasts
    every row, no refit (scoring's 0 refits on every request instead). Returns the forecasts, one
    record per refit (``as_of``, ``tickers`` fitted, ``failed``: tickers whose refit failed, and
    ``error`` when the refit raised) and the member as it stands after the last date."""
    rows = rows.reset_index(drop=True)
    if every_days <= 0 or rows.empty:
        return model.predict(rows), [], model
    days = np.unique(pd.to_datetime(prices["date"]).to_numpy(dtype="datetime64[ns]"))
    dates = pd.to_datetime(rows["date"])
    through = prophet_fitted_through(model)  # ticker -> the last date a fit used (or a refit tried)
    current, records, out = model, [], []
    blocks = pd.DatetimeIndex(np.unique(dates.to_numpy(dtype="datetime64[ns]")))

    def stale_on(day: pd.Timestamp) -> dict[str, pd.Timestamp]:
        on_day = list(rows.loc[dates == day, "ticker"].astype(str).unique())
        return stale_prophet_tickers(through, days, day, every_days, tickers=on_day)

    i = 0
    while i < len(blocks):
        as_of = blocks[i]
        stale = stale_on(as_of)
        if stale:
            record: dict[str, Any] = {"as_of": as_of.date().isoformat()}
            try:
                refit = fit(per_ticker_fit_frame(settings, current, prices, as_of, sorted(stale)))
            except Exception as exc:  # the older models keep forecasting; tried again when stale again
                logger.warning("per-ticker refit as of %s failed: %s", as_of.date(), exc)
                refit, record["error"] = None, f"{type(exc).__name__}: {exc}"
            fitted = prophet_fitted_through(refit) if refit is not None else {}
            if refit is not None:
                current = merge_refit(current, refit)
            through.update({t: fitted.get(t, as_of) for t in stale})
            records.append({**record, "tickers": len(fitted), "failed": sorted(set(stale) - set(fitted))})
        j = i + 1  # the dates up to the next one on which a ticker is stale: one predict call
        while j < len(blocks) and not stale_on(blocks[j]):
            j += 1
        out.append(current.predict(rows.loc[dates.isin(blocks[i:j])]))
        i = j
    return pd.concat(out, ignore_index=True), records, current


@dataclass
class ProphetRefit:
    """The record of a refit, kept with the scores it served (never in the registry version)."""

    version: str
    member: str
    as_of: str
    every_days: int
    refitted: dict[str, dict[str, str]]  # ticker -> {"before": fitted-through, "through": fitted-through}
    failed: dict[str, str]  # ticker -> reason (its old model is kept)
    seconds: float
    where: str  # "ray" or "local"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def refit_record(
    lv: LoadedVersion,
    stale: Mapping[str, pd.Timestamp],
    refit: Any,
    as_of: Any,
    every_days: int,
    seconds: float,
    where: str,
    name: str | None = None,
) -> ProphetRefit:
    """What was refitted (ticker -> fitted-through before and after) and what failed."""
    name = name or per_ticker_member(lv) or "prophet"
    through = prophet_fitted_through(refit)
    return ProphetRefit(
        version=lv.version,
        member=name,
        as_of=pd.Timestamp(as_of).date().isoformat(),
        every_days=int(every_days),
        refitted={
            t: {"before": pd.Timestamp(stale[t]).date().isoformat(), "through": d.date().isoformat()}
            for t, d in through.items()
        },
        failed={str(t): str(r) for t, r in sorted(getattr(refit, "failed_", {}).items()) if t not in through},
        seconds=float(seconds),
        where=where,
    )


def refresh_stale_prophet(
    lv: LoadedVersion,
    prices: pd.DataFrame,
    as_of: Any,
    every_days: int | None = None,
    name: str | None = None,
    *,
    fit: Callable[[pd.DataFrame, Forecaster], Forecaster] | None = None,
    how: str = "local",
) -> tuple[LoadedVersion, ProphetRefit | None]:
    """Refit the per-ticker member's models that are stale on ``as_of`` (of the tickers with a row on
    ``as_of``; ``every_days`` defaults to the version's ``scoring.prophet_refit_every_days``) on the
    history up to ``as_of`` and swap them in. ``fit(frame, stored_model)`` does the fitting (default:
    :func:`refit_prophet` in this process; ``jobs.score`` passes the Ray fan-out, recorded as ``how``).
    Returns ``lv`` itself and None when nothing is stale (or the version has no per-ticker member)."""
    name = name or per_ticker_member(lv)
    if name is None:
        return lv, None
    every = lv.settings.scoring.prophet_refit_every_days if every_days is None else int(every_days)
    as_of = pd.Timestamp(as_of)
    on_day = prices.loc[prices["date"] == as_of, "ticker"].astype(str).unique()
    stale = stale_prophet_tickers(
        prophet_fitted_through(lv.models[name]), prices["date"], as_of, every, tickers=on_day
    )
    if not stale:
        return lv, None
    t0 = time.perf_counter()
    frame = prophet_refit_frame(lv, prices, as_of, list(stale), name)
    model = refit_prophet(lv, frame, name) if fit is None else fit(frame, lv.models[name])
    record = refit_record(lv, stale, model, as_of, every, time.perf_counter() - t0, how, name)
    return with_prophet(lv, model, name), record


# -- forecasts recorded at training time ------------------------------------------------------------------
SAMPLE_TICKERS = 3  # rows recorded per version: cheap to store, enough to catch a changed artifact
SAMPLE_RTOL = 1e-9
SAMPLE_ATOL = 1e-12


def sample_forecasts(
    lv: LoadedVersion,
    prices: pd.DataFrame,
    as_of: Any,
    tickers: Sequence[str] | None = None,
    n: int = SAMPLE_TICKERS,
) -> dict[str, Any]:
    """A few rows' forecasts as :func:`score` makes them (the path every consumer uses; the models as
    given, no Prophet refit), as a JSON document: ``as_of``, ``tickers``, ``frame`` (ticker -> every
    numeric column of :attr:`ScoreResult.frame`: the ensemble's forecast, interval, confidence, each
    member in return units, close and the reference volatility) and ``members`` (member -> ticker ->
    its raw ``pred_h{h}``). ``jobs.train`` records it with a version (``samples`` extra) for the last
    validation date; ``jobs.deploy`` recomputes it from the stored version and compares
    (:func:`compare_samples`). ``tickers``: these rows (default: the first ``n`` tickers, sorted, that
    every member forecast)."""
    res = score(lv, prices, as_of)
    frame = res.frame.assign(ticker=res.frame["ticker"].astype(str))
    if tickers is None:
        full = frame["ticker"]
        for p in res.members.values():
            full = full[full.isin(p["ticker"].astype(str))]
        pick = list(full[:n]) or list(frame["ticker"][:n])
    else:
        pick = [str(t) for t in tickers]
    rows = frame.set_index("ticker")
    numeric = [c for c in rows.columns if c != "date" and pd.api.types.is_numeric_dtype(rows[c])]
    out_frame = {
        t: {c: _plain(rows.at[t, c]) for c in numeric} if t in rows.index else None for t in pick
    }  # fmt: skip
    members: dict[str, dict[str, Any]] = {}
    for m, p in sorted(res.members.items()):
        p = p.assign(ticker=p["ticker"].astype(str)).set_index("ticker")
        cols = [c for c in p.columns if str(c).startswith("pred_h")]
        members[m] = {t: {c: _plain(p.at[t, c]) for c in cols} for t in pick if t in p.index}
    return {
        "as_of": res.as_of.date().isoformat(),
        "version": lv.version,
        "tickers": pick,
        "frame": out_frame,
        "members": members,
    }


def _plain(x: Any) -> float | None:
    f = float(x)
    return f if np.isfinite(f) else None


def compare_samples(
    recorded: Mapping[str, Any],
    current: Mapping[str, Any],
    rtol: float = SAMPLE_RTOL,
    atol: float = SAMPLE_ATOL,
) -> list[str]:
    """Where ``current`` (:func:`sample_forecasts` for the same date and tickers) differs from
    ``recorded`` by more than ``rtol`` (relative) + ``atol``: one line per value, naming the member
    (or ``ensemble``), the ticker and the column; a value recorded but missing now (or now but not
    then) is a difference. Empty when they agree."""
    out: list[str] = []
    if str(recorded.get("as_of")) != str(current.get("as_of")):
        return [f"as_of: recorded {recorded.get('as_of')}, now {current.get('as_of')}"]

    def cmp(where: str, want: Any, got: Any) -> None:
        if want is None and got is None:
            return
        if want is None or got is None:
            out.append(f"{where}: recorded {want}, now {got}")
            return
        if isinstance(want, Mapping) and isinstance(got, Mapping):
            for k in sorted(set(want) | set(got)):
                cmp(f"{where} {k}", want.get(k), got.get(k))
            return
        a, b = float(want), float(got)
        if not abs(a - b) <= atol + rtol * max(abs(a), abs(b)):
            out.append(f"{where}: recorded {a!r}, now {b!r}")

    for t in recorded.get("tickers", []):
        cmp(f"ensemble {t}", recorded.get("frame", {}).get(t), current.get("frame", {}).get(t))
    rm, cm = recorded.get("members", {}), current.get("members", {})
    for m in sorted(set(rm) | set(cm)):
        if m not in cm:
            out.append(f"{m}: recorded, but it did not forecast now")
            continue
        if m not in rm:
            out.append(f"{m}: forecasts now, but was not recorded")
            continue
        for t in sorted(set(rm[m]) | set(cm[m])):
            cmp(f"{m} {t}", rm[m].get(t), cm[m].get(t))
    return out
