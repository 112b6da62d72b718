"""Forecast-quality metrics on long (date, ticker) frames: the one home of IC, Rank IC and their summary.

* Per date: the IC (Pearson) or Rank IC (Spearman, average ranks for ties) between a forecast (or a
  feature) and a target across the tickers of that date, on the rows where both are finite. A date
  with fewer than ``min_obs`` such rows (default :data:`MIN_TICKERS`), or where either side is
  constant, has no IC (NaN).
* :func:`ic_frame` is the engine: every date of the frame by every column, vectorised (each column
  is laid out as a dates x slots matrix and ranked along its rows with pandas, no loop over dates).
  :func:`ic_by_date` / :func:`rank_ic_by_date` give one column's series (dates without an IC left
  out); :func:`rank_ic` its mean as one number, for tuning.
* :func:`ic_summary` summarises per-date ICs with one key set, :data:`SUMMARY_KEYS`: ``ic_mean``,
  ``ic_std`` (ddof 1), ``icir`` (mean / std), ``ic_t`` (icir x sqrt(n), the t-statistic of the
  mean), ``ic_hit`` (share of dates with IC > 0) and ``ic_dates`` (dates with an IC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

import numpy as np
import pandas as pd

MIN_TICKERS = 10
"""Default least number of tickers (rows with both values finite) for a date to have an IC."""

SUMMARY_KEYS = ("ic_mean", "ic_std", "icir", "ic_t", "ic_hit", "ic_dates")


def _row_corr(a: np.ndarray, b: np.ndarray, min_obs: int) -> np.ndarray:
    """Pearson correlation per row over the positions where both are finite; NaN where fewer than
    ``min_obs`` pairs or a side is constant."""
    ok = np.isfinite(a) & np.isfinite(b)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = np.where(ok, a, 0.0).sum(axis=1) / n
        mb = np.where(ok, b, 0.0).sum(axis=1) / n
        da = np.where(ok, a - ma[:, None], 0.0)
        db = np.where(ok, b - mb[:, None], 0.0)
        r = (da * db).sum(axis=1) / np.sqrt((da * da).sum(axis=1) * (db * db).sum(axis=1))
    r[(n < min_obs) | ~np.isfinite(r)] = np.nan
    return np.asarray(r)


def _row_ranks(m: np.ndarray) -> np.ndarray:
    """Average ranks along each row (ties share their mean rank); NaN stays NaN."""
    return np.asarray(pd.DataFrame(m, copy=False).rank(axis=1, method="average").to_numpy(np.float64))


def _ic_matrix(
    date_codes: np.ndarray,
    n_dates: int,
    columns: Sequence[np.ndarray],
    target: np.ndarray,
    rank: bool,
    min_obs: int,
) -> np.ndarray:
    """(n_dates, len(columns)) per-date correlations; row i of the inputs belongs to date ``date_codes[i]``."""
    if min_obs < 2:
        raise ValueError(f"min_obs must be >= 2 (a correlation needs two tickers), got {min_obs}")
    out = np.full((n_dates, len(columns)), np.nan)
    if len(date_codes) == 0:
        return out
    slot = pd.Series(date_codes).groupby(date_codes).cumcount().to_numpy()  # position within its date
    shape = (n_dates, int(slot.max()) + 1)

    def dense(v: np.ndarray) -> np.ndarray:
        m = np.full(shape, np.nan)
        m[date_codes, slot] = v
        return m

    ym = dense(np.asarray(target, dtype=np.float64))
    ym[~np.isfinite(ym)] = np.nan
    y_ok = np.isfinite(ym)
    y_base = _row_ranks(ym) if rank else ym
    for j, col in enumerate(columns):
        fm = dense(np.asarray(col, dtype=np.float64))
        both = np.isfinite(fm) & y_ok
        if not both.any():
            continue
        f = np.where(both, fm, np.nan)
        y = y_base
        if rank:
            f = _row_ranks(f)
            redo = (y_ok & ~both).any(axis=1)  # dates where the target's ranks include extra tickers
            if redo.any():
                y = y_base.copy()
                y[redo] = _row_ranks(np.where(both[redo], ym[redo], np.nan))
        out[:, j] = _row_corr(f, y, min_obs)
    return out


def ic_frame(
    frame: pd.DataFrame,
    columns: Sequence[str],
    target: str | np.ndarray,
    *,
    rank: bool = True,
    rows: np.ndarray | pd.Series | None = None,
    date_col: str = "date",
    min_obs: int = MIN_TICKERS,
) -> pd.DataFrame:
    """Per-date Rank IC (``rank=True``) or IC of each of ``columns`` with ``target`` (a column name or
    an array aligned with ``frame``): a (dates x columns) table over every date of the rows selected
    by ``rows`` (a boolean mask; default all), NaN where a date has no IC."""
    mask = np.ones(len(frame), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if mask.shape != (len(frame),):
        raise ValueError(f"rows has shape {mask.shape}, expected ({len(frame)},)")
    y = frame[target].to_numpy(np.float64, na_value=np.nan) if isinstance(target, str) else np.asarray(target)
    if y.shape != (len(frame),):
        raise ValueError(f"target has shape {y.shape}, expected ({len(frame)},)")
    sub = frame.loc[mask]
    codes, uniques = pd.factorize(sub[date_col], sort=True)
    values = [sub[c].to_numpy(np.float64, na_value=np.nan) for c in columns]
    ic = _ic_matrix(codes, len(uniques), values, np.asarray(y, np.float64)[mask], rank, min_obs)
    return pd.DataFrame(ic, index=pd.Index(uniques, name=date_col), columns=list(columns))


def ic_by_date(
    df: pd.DataFrame, pred: str, target: str, *, date_col: str = "date", min_obs: int = MIN_TICKERS
) -> pd.Series:
    """Per-date Pearson IC between ``pred`` and ``target`` (a Series indexed by date, named ``ic``);
    dates without an IC are left out."""
    ic = ic_frame(df, [pred], target, rank=False, date_col=date_col, min_obs=min_obs)[pred]
    return ic.dropna().rename("ic")


def rank_ic_by_date(
    df: pd.DataFrame, pred: str, target: str, *, date_col: str = "date", min_obs: int = MIN_TICKERS
) -> pd.Series:
    """Per-date Spearman Rank IC between ``pred`` and ``target`` (a Series indexed by date, named
    ``rank_ic``); dates without an IC are left out."""
    ic = ic_frame(df, [pred], target, rank=True, date_col=date_col, min_obs=min_obs)[pred]
    return ic.dropna().rename("rank_ic")


def daily_rank_ic(
    dates: np.ndarray, pred: np.ndarray, target: np.ndarray, *, min_obs: int = MIN_TICKERS
) -> pd.Series:
    """:func:`rank_ic_by_date` of aligned arrays (``dates`` groups the rows): the per-date Spearman
    Rank IC, indexed by date; dates without an IC are left out."""
    frame = pd.DataFrame({"date": dates, "pred": pred, "target": target})
    return rank_ic_by_date(frame, "pred", "target", min_obs=min_obs)


def rank_ic(dates: np.ndarray, pred: np.ndarray, target: np.ndarray, *, min_obs: int = MIN_TICKERS) -> float:
    """The mean over dates of the per-date Spearman correlation of ``pred`` and ``target`` (aligned
    arrays; ``dates`` groups the rows). **0.0** when no date has ``min_obs`` tickers with both values
    finite: a neutral score that a tuner can compare and maximise, where NaN would not order."""
    codes, uniques = pd.factorize(np.asarray(dates), sort=False)
    ic = _ic_matrix(codes, len(uniques), [np.asarray(pred)], np.asarray(target, np.float64), True, min_obs)
    ok = np.isfinite(ic)
    return float(ic[ok].mean()) if ok.any() else 0.0


def overlap_se(daily: pd.Series, h: int) -> float:
    """The standard error of the mean of daily figures whose ``h``-day labels overlap: ``n_dates / h``
    independent windows (at least one); NaN with fewer than two figures."""
    return float(daily.std()) / math.sqrt(max(len(daily) / h, 1.0))


@overload
def ic_summary(ic: pd.Series) -> dict[str, float]: ...
@overload
def ic_summary(ic: pd.DataFrame) -> pd.DataFrame: ...
def ic_summary(ic: pd.Series | pd.DataFrame) -> dict[str, float] | pd.DataFrame:
    """Summary of per-date ICs (NaN dates ignored), keys :data:`SUMMARY_KEYS`: a dict for a Series,
    a table (one row per column) for a DataFrame. Mean and hit rate are NaN without dates; std, ICIR
    and t-statistic need two dates and a nonzero std."""
    x = ic.to_frame() if isinstance(ic, pd.Series) else ic
    n = x.count()
    mean = x.mean()
    std = x.std(ddof=1)
    icir = mean / std.where(std > 0)
    table = pd.DataFrame(
        {
            "ic_mean": mean,
            "ic_std": std,
            "icir": icir,
            "ic_t": icir * np.sqrt(n),
            "ic_hit": x.gt(0).sum() / n.where(n > 0),
            "ic_dates": n,
        },
        index=x.columns,
    ).astype({k: np.float64 for k in SUMMARY_KEYS[:-1]})
    if isinstance(ic, pd.DataFrame):
        return table
    row = table.iloc[0]
    return {**{k: float(row[k]) for k in SUMMARY_KEYS[:-1]}, "ic_dates": int(row["ic_dates"])}


def forecast_metrics(
    preds: pd.DataFrame, targets: pd.DataFrame, horizons: list[int] | tuple[int, ...], prefix: str = ""
) -> dict[str, float]:
    """Rank IC (mean of the per-date Spearman correlations), ICIR and dates counted per horizon of
    ``preds`` (date, ticker, pred_h{h}) against ``targets`` (date, ticker, target_h{h}); rows are
    matched on keys."""
    keys = ["date", "ticker"]
    cols = [f"target_h{h}" for h in horizons if f"target_h{h}" in targets.columns]
    df = preds.merge(targets[keys + cols], on=keys, how="inner")
    out: dict[str, float] = {}
    for h in horizons:
        p, t = f"pred_h{h}", f"target_h{h}"
        if p not in df.columns or t not in df.columns:
            continue
        s = ic_summary(rank_ic_by_date(df, p, t))
        out[f"{prefix}rank_ic_h{h}"] = s["ic_mean"]
        out[f"{prefix}icir_h{h}"] = s["icir"]
        out[f"{prefix}ic_dates_h{h}"] = float(s["ic_dates"])
    return out


def interval_coverage(
    preds: pd.DataFrame,
    targets: pd.DataFrame,
    horizons: Sequence[int],
    levels: Sequence[float],
    prefix: str = "",
) -> dict[str, float]:
    """The share of realised forward returns inside the forecast interval, per horizon and level:
    ``preds`` carries ``lo{L}_h{h}`` / ``hi{L}_h{h}`` (L = level in percent, as the ensemble writes
    them), ``targets`` the realised ``target_h{h}``; rows with no interval or no target are left out."""
    keys = ["date", "ticker"]
    cols = [f"target_h{h}" for h in horizons if f"target_h{h}" in targets.columns]
    df = preds.merge(targets[keys + cols], on=keys, how="inner")
    out: dict[str, float] = {}
    for h in horizons:
        t = f"target_h{h}"
        for a in levels:
            lo, hi = f"lo{round(a * 100):d}_h{h}", f"hi{round(a * 100):d}_h{h}"
            if t not in df.columns or lo not in df.columns:
                continue
            y, low, high = (df[c].to_numpy(dtype=np.float64) for c in (t, lo, hi))
            ok = np.isfinite(y) & np.isfinite(low) & np.isfinite(high)
            inside = (y[ok] >= low[ok]) & (y[ok] <= high[ok])
            out[f"{prefix}coverage{round(a * 100):d}_h{h}"] = (
                float(inside.mean()) if ok.any() else float("nan")
            )
    return out
