"""Forecast-quality metrics on long (date, ticker) frames: Rank IC and its information ratio."""

from __future__ import annotations

import pandas as pd


def rank_ic_by_date(
    df: pd.DataFrame, pred: str, target: str, date_col: str = "date", min_obs: int = 10
) -> pd.Series:
    """Per-date Spearman rank correlation between ``pred`` and ``target`` across tickers.

    Rows where either value is NaN are ignored; dates with fewer than ``min_obs`` usable rows are
    left out. Returns a Series indexed by date.
    """
    d = df.loc[df[pred].notna() & df[target].notna(), [date_col, pred, target]]
    if d.empty:
        return pd.Series(dtype=float, name="rank_ic")
    g = d.groupby(date_col, sort=True)
    a = g[pred].rank(method="average")
    b = g[target].rank(method="average")
    a = a - a.groupby(d[date_col]).transform("mean")
    b = b - b.groupby(d[date_col]).transform("mean")
    parts = pd.DataFrame({"ab": a * b, "aa": a * a, "bb": b * b, date_col: d[date_col]})
    s = parts.groupby(date_col, sort=True).agg(ab=("ab", "sum"), aa=("aa", "sum"), bb=("bb", "sum"))
    n = g.size()
    denom = (s["aa"] * s["bb"]) ** 0.5
    ic = (s["ab"] / denom.where(denom > 0)).where(n >= min_obs)
    return ic.dropna().rename("rank_ic")


def ic_summary(ic: pd.Series, periods_per_year: int = 252) -> dict[str, float]:
    """Mean IC, its standard deviation, ICIR (mean/sd) and the share of dates with IC > 0."""
    if ic.empty:
        return {"mean": float("nan"), "std": float("nan"), "icir": float("nan"), "hit": float("nan"), "n": 0}
    sd = float(ic.std(ddof=1)) if len(ic) > 1 else float("nan")
    return {
        "mean": float(ic.mean()),
        "std": sd,
        "icir": float(ic.mean() / sd) if sd and sd > 0 else float("nan"),
        "hit": float((ic > 0).mean()),
        "n": int(len(ic)),
    }


def forecast_metrics(
    preds: pd.DataFrame, targets: pd.DataFrame, horizons: list[int] | tuple[int, ...], prefix: str = ""
) -> dict[str, float]:
    """Rank IC (mean of the per-date Spearman correlations), ICIR and hit rate per horizon of ``preds``
    (date, ticker, pred_h{h}) against ``targets`` (date, ticker, target_h{h}); rows are matched on keys."""
    keys = ["date", "ticker"]
    cols = [f"target_h{h}" for h in horizons if f"target_h{h}" in targets.columns]
    df = preds.merge(targets[keys + cols], on=keys, how="inner")
    out: dict[str, float] = {}
    for h in horizons:
        p, t = f"pred_h{h}", f"target_h{h}"
        if p not in df.columns or t not in df.columns:
            continue
        s = ic_summary(rank_ic_by_date(df, p, t))
        out[f"{prefix}rank_ic_h{h}"] = s["mean"]
        out[f"{prefix}icir_h{h}"] = s["icir"]
        out[f"{prefix}ic_dates_h{h}"] = float(s["n"])
    return out
