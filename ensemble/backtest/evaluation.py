"""Forecast evaluation on a test window, per model and horizon (the signal-analysis layer, after
qlib's ``SigAnaRecord``; the portfolio layer is :mod:`ensemble.backtest.portfolio`). IC and Rank IC
come from :mod:`ensemble.backtest.metrics`, the one home of their definitions.

Inputs, long frames keyed by (date, ticker):

* ``preds``: ``pred_h{h}`` per horizon (a score; in expected log-return units for RMSE to mean
  anything), optional ``lo{L}_h{h}`` / ``hi{L}_h{h}`` interval bounds (``L`` = level in percent).
* ``truth``: ``target_h{h}``, the realised forward log return ``log(close[t+h] / close[t])``.

Rows are matched on (date, ticker); per horizon only the rows where both the forecast and the target
are finite are scored (the same rows for every metric of that horizon, except coverage, which also
needs the interval).

:func:`evaluate` returns, per horizon (keys :data:`METRIC_KEYS`):

* ``rank_ic``, ``icir``, ``rank_ic_t``, ``rank_ic_hit``: the mean of the per-date Rank ICs, mean /
  std (ddof 1), its t-statistic and the share of dates with Rank IC > 0; ``ic``: the mean per-date
  Pearson IC. A date needs ``min_obs`` tickers to have an IC.
* ``directional_accuracy``: the share of rows where the sign of the *excess* forecast (the forecast
  minus that date's mean forecast over the scored rows) equals the sign of the *realised excess*
  return (the target minus that date's mean target over the same rows); rows where either is
  exactly 0 are left out. Cross-sectional on purpose: the platform ranks tickers within a date, and
  the raw sign would mostly score the market's direction. NaN for a forecast constant within dates.
* ``rmse``: ``sqrt(mean((pred - target)^2))`` pooled over the scored rows; ``rmse_zero``: the same
  for the zero forecast (``sqrt(mean(target^2))``) on the same rows.
* ``coverage{L}``: the share of realised targets inside ``[lo{L}, hi{L}]`` per level (if the columns
  exist), by :func:`ensemble.backtest.metrics.interval_coverage`.
* ``n_dates`` (dates with a Rank IC), ``n_obs`` (rows scored).

For the report's time series: :func:`daily_rank_ic`, :func:`daily_coverage` and :func:`rolling`.
Whether the recommendation engine's actions mean anything: :func:`action_returns` (the realised
forward return of BUY / HOLD / SELL per horizon).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ensemble.backtest.metrics import MIN_TICKERS, ic_frame, ic_summary, interval_coverage
from ensemble.config import RecommendConfig
from ensemble.models.base import pred_col

KEYS = ["date", "ticker"]
DEFAULT_LEVELS: tuple[float, ...] = (0.8, 0.95)
METRIC_KEYS = (
    "rank_ic",
    "icir",
    "rank_ic_t",
    "rank_ic_hit",
    "ic",
    "directional_accuracy",
    "rmse",
    "rmse_zero",
    "n_dates",
    "n_obs",
)


def _level_pct(level: float) -> int:
    return round(level * 100)


def _scored(preds: pd.DataFrame, truth: pd.DataFrame, h: int, extra: Sequence[str] = ()) -> pd.DataFrame:
    """(date, ticker, pred, target, *extra) on the rows where both forecast and target are finite,
    sorted by (date, ticker)."""
    p, t = f"pred_h{h}", f"target_h{h}"
    if p not in preds.columns:
        raise ValueError(f"preds has no column {p!r}")
    if t not in truth.columns:
        raise ValueError(f"truth has no column {t!r}")
    cols = [c for c in extra if c in preds.columns]
    df = preds[[*KEYS, p, *cols]].merge(truth[[*KEYS, t]], on=KEYS, how="inner")
    df = df.rename(columns={p: "pred", t: "target"})
    ok = np.isfinite(df["pred"].to_numpy(np.float64, na_value=np.nan)) & np.isfinite(
        df["target"].to_numpy(np.float64, na_value=np.nan)
    )
    return df.loc[ok].sort_values(KEYS).reset_index(drop=True)


def _directional_accuracy(df: pd.DataFrame) -> float:
    by = df.groupby("date", sort=False)
    ep = df["pred"] - by["pred"].transform("mean")
    et = df["target"] - by["target"].transform("mean")
    sp, st = np.sign(ep.to_numpy(np.float64)), np.sign(et.to_numpy(np.float64))
    ok = (sp != 0) & (st != 0)
    return float((sp[ok] == st[ok]).mean()) if ok.any() else float("nan")


def evaluate(
    preds: pd.DataFrame,
    truth: pd.DataFrame,
    horizons: Sequence[int],
    levels: Sequence[float] = DEFAULT_LEVELS,
    *,
    min_obs: int = MIN_TICKERS,
) -> dict[int, dict[str, float]]:
    """Per horizon the metrics of the module docstring (keys :data:`METRIC_KEYS` and
    ``coverage{L}`` for each level with interval columns in ``preds``)."""
    out: dict[int, dict[str, float]] = {}
    for h in horizons:
        df = _scored(preds, truth, h)
        ics = ic_frame(df, ["pred"], "target", rank=True, min_obs=min_obs)["pred"]
        pics = ic_frame(df, ["pred"], "target", rank=False, min_obs=min_obs)["pred"]
        rs = ic_summary(ics)
        err = (df["pred"] - df["target"]).to_numpy(np.float64)
        y = df["target"].to_numpy(np.float64)
        m: dict[str, float] = {
            "rank_ic": rs["ic_mean"],
            "icir": rs["icir"],
            "rank_ic_t": rs["ic_t"],
            "rank_ic_hit": rs["ic_hit"],
            "ic": float(pics.mean()) if pics.notna().any() else float("nan"),
            "directional_accuracy": _directional_accuracy(df) if len(df) else float("nan"),
            "rmse": float(np.sqrt(np.mean(err**2))) if len(df) else float("nan"),
            "rmse_zero": float(np.sqrt(np.mean(y**2))) if len(df) else float("nan"),
            "n_dates": float(rs["ic_dates"]),
            "n_obs": float(len(df)),
        }
        cov = interval_coverage(preds, truth, [h], levels)
        for a in levels:
            key = f"coverage{_level_pct(a)}_h{h}"
            if key in cov:
                m[f"coverage{_level_pct(a)}"] = cov[key]
        out[h] = m
    return out


def daily_rank_ic(
    preds: pd.DataFrame, truth: pd.DataFrame, h: int, *, min_obs: int = MIN_TICKERS
) -> pd.Series:
    """The per-date Rank IC of ``pred_h{h}`` with ``target_h{h}`` (a Series indexed by date, named
    ``rank_ic``); dates without an IC (too few tickers) are NaN, so a rolling mean sees the gaps."""
    df = _scored(preds, truth, h)
    return ic_frame(df, ["pred"], "target", rank=True, min_obs=min_obs)["pred"].rename("rank_ic")


def daily_coverage(preds: pd.DataFrame, truth: pd.DataFrame, h: int, level: float) -> pd.Series:
    """The per-date share of realised ``target_h{h}`` inside ``[lo{L}_h{h}, hi{L}_h{h}]`` (a Series
    indexed by date, named ``coverage{L}``), over the rows with a finite target and interval."""
    pct = _level_pct(level)
    lo, hi = f"lo{pct}_h{h}", f"hi{pct}_h{h}"
    if lo not in preds.columns or hi not in preds.columns:
        raise ValueError(f"preds has no interval columns {lo!r} / {hi!r}")
    df = _scored(preds, truth, h, extra=(lo, hi))
    low, high = df[lo].to_numpy(np.float64, na_value=np.nan), df[hi].to_numpy(np.float64, na_value=np.nan)
    ok = np.isfinite(low) & np.isfinite(high)
    y = df["target"].to_numpy(np.float64)
    inside = pd.Series(((y >= low) & (y <= high))[ok].astype(np.float64), index=df["date"][ok])
    return inside.groupby(level=0).mean().rename_axis("date").rename(f"coverage{pct}")


def rolling(series: pd.Series, window: int = 63, min_periods: int | None = None) -> pd.Series:
    """The trailing ``window``-date mean of a per-date series (NaN dates skipped), with at least
    ``min_periods`` (default ``window // 3``) values; the leading dates without enough are dropped."""
    mp = max(1, window // 3) if min_periods is None else min_periods
    return series.sort_index().rolling(window, min_periods=mp).mean().dropna()


def metric_rows(
    model: str, per_horizon: Mapping[int, Mapping[str, float]], **extra: Any
) -> list[dict[str, Any]]:
    """Rows for the report's metrics table (:mod:`ensemble.backtest.report`): one per horizon,
    ``{"model": model, "horizon": h, **metrics, **extra}`` (e.g. ``kind="member"`` or portfolio
    statistics merged in by the caller)."""
    return [{"model": model, "horizon": int(h), **dict(m), **extra} for h, m in per_horizon.items()]


BASELINES = ("zero", "reversal_5d", "momentum_12_1")


def baseline_forecasts(prices: pd.DataFrame, horizons: Sequence[int]) -> dict[str, pd.DataFrame]:
    """The price-only baselines as forecasts (the same value at every horizon), point in time:
    ``zero`` (0 everywhere), ``reversal_5d`` and ``momentum_12_1``."""
    p = prices[["date", "ticker", "close"]].sort_values(["ticker", "date"])
    logc = np.log(p["close"].where(p["close"] > 0))
    g = logc.groupby(p["ticker"], sort=False)
    signals = {
        "zero": pd.Series(0.0, index=p.index),
        "reversal_5d": -(logc - g.shift(5)),
        "momentum_12_1": g.shift(21) - g.shift(252),
    }
    out = {}
    for name, sig in signals.items():
        f = p[["date", "ticker"]].reset_index(drop=True)
        for h in horizons:
            f[pred_col(h)] = sig.to_numpy(dtype=np.float64)
        out[name] = f
    return out


def action_returns(
    forecasts: pd.DataFrame,
    truth: pd.DataFrame,
    horizons: Sequence[int],
    cfg: RecommendConfig,
    action_horizon: int,
) -> pd.DataFrame:
    """The realised forward return of the recommendation engine's actions: each (date, ticker) of
    ``forecasts`` (the ensemble's, with ``excess_h{h}`` / ``pred_h{h}`` and ``confidence_h{h}``) gets
    the action :func:`ensemble.recommend.decide_actions` gives at ``action_horizon``; then per horizon
    ``h`` and action: ``n_obs``, ``n_dates``, ``share`` (of the scored rows), ``mean_return`` (the mean
    realised ``target_h{h}``), ``mean_excess`` (over the date's mean target of every ticker in
    ``truth``), ``hit_rate`` (share of positive excess). Rows with a NaN target are left out."""
    from ensemble.recommend import ACTIONS, action_signal, decide_actions

    f = forecasts.reset_index(drop=True)
    action = decide_actions(action_signal(f, action_horizon, cfg), f[f"confidence_h{action_horizon}"], cfg)
    keyed = f[KEYS].assign(action=action)
    rows: list[dict[str, Any]] = []
    for h in horizons:
        t = f"target_h{h}"
        tr = truth[[*KEYS, t]].copy()
        tr["excess"] = tr[t] - tr.groupby("date")[t].transform("mean")
        df = keyed.merge(tr, on=KEYS, how="inner")
        df = df.loc[np.isfinite(df[t].to_numpy(np.float64, na_value=np.nan))]
        for a in ACTIONS:
            sub = df.loc[df["action"] == a]
            n = len(sub)
            rows.append(
                {
                    "horizon": int(h),
                    "action": a,
                    "n_obs": n,
                    "n_dates": int(sub["date"].nunique()),
                    "share": n / len(df) if len(df) else float("nan"),
                    "mean_return": float(sub[t].mean()) if n else float("nan"),
                    "mean_excess": float(sub["excess"].mean()) if n else float("nan"),
                    "hit_rate": float((sub["excess"] > 0).mean()) if n else float("nan"),
                }
            )
    return pd.DataFrame(rows)
