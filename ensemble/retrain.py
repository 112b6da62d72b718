"""The retraining gate: is a candidate better than production on the most recent walk-forward
window? (``python -m jobs.retrain`` trains the candidate and acts on the answer.)

A walk-forward step: the candidate is trained as of a cutoff (``training.as_of``) that leaves the
``window`` most recent trading dates whose ``h``-day returns are realised out of its data; both the
candidate and production then forecast each of those dates as they would have served it
(``scoring.score`` on the prices up to the date, each version's per-ticker models refitted through the
cutoff first, as serving refits stale ones), and their Rank IC against the realised forward log
returns (the training target's definition) decides, by
:func:`ensemble.registry.promotion.decide_promotion`: the candidate must beat production by more than
``min_gain`` at the shortest horizon. Nothing either version trained on lies in the compared dates:
when production was trained after the cutoff, only the window's dates after its data are compared,
and with fewer than ``MIN_DATES`` of them the gate does not promote (and says why).

Pure functions of their inputs; nothing is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from ensemble.backtest.metrics import forecast_metrics
from ensemble.features.targets import realised_forward_returns
from ensemble.registry.promotion import decide_promotion
from ensemble.scoring import LoadedVersion, score

logger = logging.getLogger(__name__)

MIN_DATES = 5  # fewer unseen window dates than this: no comparison, no promotion


@dataclass
class GateDecision:
    """What the gate decided and the evidence: both versions' metrics on the window, per horizon."""

    promote: bool
    reason: str
    candidate: str
    production: str | None
    horizon: int  # the horizon the decision is taken on (the shortest)
    window: dict[str, Any]  # cutoff, first, last, dates
    candidate_metrics: dict[str, float]  # rank_ic_h{h}, icir_h{h}, ic_dates_h{h} on the window
    production_metrics: dict[str, float]
    min_gain: float
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cutoff_for(trading_dates: Sequence[Any] | pd.Series, window: int, horizon: int) -> pd.Timestamp:
    """The training cutoff that leaves ``window`` dates whose ``horizon``-day return is realised by
    the last trading date."""
    dates = pd.DatetimeIndex(sorted(pd.to_datetime(pd.Series(trading_dates)).unique()))
    i = len(dates) - 1 - int(window) - int(horizon)
    if i < 0:
        raise ValueError(f"{len(dates)} trading dates cannot hold a window of {window} plus {horizon}")
    return pd.Timestamp(dates[i])


def window_dates(
    trading_dates: Sequence[Any] | pd.Series, cutoff: Any, window: int, horizon: int
) -> list[pd.Timestamp]:
    """The first ``window`` trading dates after ``cutoff`` whose ``horizon``-day return is realised."""
    dates = pd.DatetimeIndex(sorted(pd.to_datetime(pd.Series(trading_dates)).unique()))
    after = dates[dates > pd.Timestamp(cutoff)]
    realised = after[: max(0, len(after) - int(horizon))]
    return list(realised[: int(window)])


def score_on_dates(lv: LoadedVersion, prices: pd.DataFrame, dates: Sequence[Any]) -> pd.DataFrame:
    """``date, ticker, pred_h{h}``: the version's ensemble forecasts as of each date (``scoring.score``
    on the prices up to that date: nothing after it is read)."""
    cols = [f"pred_h{h}" for h in lv.horizons]
    parts = []
    for d in dates:
        day = pd.Timestamp(d)
        res = score(lv, prices.loc[prices["date"] <= day], day)
        parts.append(res.frame[["ticker", *cols]].assign(date=day))
    if not parts:
        return pd.DataFrame(columns=["date", "ticker", *cols])
    return pd.concat(parts, ignore_index=True)


def gate(
    candidate: LoadedVersion,
    production: LoadedVersion | None,
    prices: pd.DataFrame,
    cutoff: Any,
    window: int,
    *,
    min_gain: float = 0.0,
    production_through: Any = None,
    truth: pd.DataFrame | None = None,
    min_dates: int = MIN_DATES,
) -> GateDecision:
    """Decide whether ``candidate`` replaces ``production`` (None: there is none, the candidate is
    promoted) on the ``window`` dates after ``cutoff``. Both versions are given as they serve: the
    caller refits their stale per-ticker models through the cutoff first. ``production_through``:
    the last date production's training used (its validation end): only the window's dates after it
    are compared (production has seen the others; its ensemble was even fitted on them). With fewer
    than ``min_dates`` such dates there is nothing fair to compare on: not promoted, and said so.
    ``truth``: the realised returns to judge by (``date, ticker, target_h{h}``; default: from
    ``prices``)."""
    t0 = time.perf_counter()
    horizons = list(candidate.horizons)
    h = int(min(horizons))
    dates = window_dates(prices["date"], cutoff, window, h)
    notes: list[str] = []
    if len(dates) < int(window):
        notes.append(f"only {len(dates)} of {window} window dates have a realised {h}-day return")
    seen = (
        pd.Timestamp(production_through)
        if production is not None and production_through is not None
        else None
    )
    if seen is not None and seen > pd.Timestamp(cutoff):
        dates = [d for d in dates if d > seen]
        notes.append(f"production {production.version} was trained with data through {seen.date()}, after the "  # type: ignore[union-attr]
                     f"cutoff {pd.Timestamp(cutoff).date()}: compared on the {len(dates)} window dates after it")  # fmt: skip
    window_doc = {
        "cutoff": str(pd.Timestamp(cutoff).date()),
        "first": str(dates[0].date()) if dates else None,
        "last": str(dates[-1].date()) if dates else None,
        "dates": len(dates),
    }
    if len(dates) < int(min_dates):
        return GateDecision(
            promote=False,
            reason=f"not compared: {len(dates)} window dates that neither version has seen, fewer than {min_dates}",
            candidate=candidate.version, production=production.version if production is not None else None,
            horizon=h, window=window_doc, candidate_metrics={}, production_metrics={}, min_gain=float(min_gain),
            seconds=time.perf_counter() - t0, notes=notes,
        )  # fmt: skip
    truth = realised_forward_returns(prices, horizons) if truth is None else truth

    def metrics(lv: LoadedVersion) -> dict[str, float]:
        m = forecast_metrics(score_on_dates(lv, prices, dates), truth, horizons)
        return {k: float(v) for k, v in m.items()}

    cand = metrics(candidate)
    prod = metrics(production) if production is not None else {}
    decision = decide_promotion(
        candidate.version,
        {"gate": cand},
        production.version if production is not None else None,
        {"gate": prod} if production is not None else None,
        ("gate", f"rank_ic_h{h}"),
        min_improvement=min_gain,
    )
    return GateDecision(
        promote=decision.promoted,
        reason=decision.reason,
        candidate=candidate.version,
        production=production.version if production is not None else None,
        horizon=h,
        window=window_doc,
        candidate_metrics=cand,
        production_metrics=prod,
        min_gain=float(min_gain),
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
