"""Stylised facts of a market panel: fat tails, volatility clustering, sector structure, signal strength.

Used to check that the synthetic market looks like a real one (``python -m ensemble.data.synthetic
--stats`` and ``bench/synthetic_facts.py``, which prints the synthetic market beside the real S&P 500
sample).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ensemble.backtest.metrics import ic_summary, rank_ic_by_date


def _wide_returns(prices: pd.DataFrame) -> pd.DataFrame:
    close = prices.pivot(index="date", columns="ticker", values="close").sort_index()
    logc = pd.DataFrame(np.log(close.to_numpy()), index=close.index, columns=close.columns)
    return logc.diff().iloc[1:]


def forward_log_return(prices: pd.DataFrame, h: int) -> pd.Series:
    """log(close[t+h] / close[t]) per ticker, aligned with ``prices``' rows (NaN in the last h rows)."""
    logc = np.log(prices["close"])
    return logc.groupby(prices["ticker"], sort=False).shift(-h) - logc


def stylized_facts(
    prices: pd.DataFrame,
    oracle: pd.DataFrame | None = None,
    horizons: tuple[int, ...] = (5, 20, 60),
    max_lag: int = 10,
) -> dict[str, float]:
    """Summary numbers for a contract table (and, if given, the synthetic oracle keyed the same)."""
    r = _wide_returns(prices)
    facts: dict[str, float] = {"tickers": float(r.shape[1]), "days": float(r.shape[0] + 1)}
    x = r.to_numpy()
    mu = np.nanmean(x, axis=0)
    sd = np.nanstd(x, axis=0)
    zs = (x - mu) / sd
    facts["kurtosis_median"] = float(np.nanmedian(np.nanmean(zs**4, axis=0)))
    facts["kurtosis_pooled"] = float(np.nanmean(zs**4))
    a = (r - r.mean()).abs()
    acs = []
    for lag in range(1, max_lag + 1):
        acs.append(float(np.nanmean(a.corrwith(a.shift(lag)).to_numpy())))
    facts["abs_ret_acf_1"] = acs[0]
    facts["abs_ret_acf_mean_1_10"] = float(np.mean(acs))
    facts["abs_ret_acf_min_1_10"] = float(np.min(acs))
    facts["ret_acf_1"] = float(np.nanmean(r.corrwith(r.shift(1)).to_numpy()))
    if "sector" in prices.columns and prices["sector"].notna().any():
        sectors = prices.groupby("ticker")["sector"].first().reindex(r.columns)
        c = r.corr(min_periods=60).to_numpy()
        same = sectors.to_numpy()[:, None] == sectors.to_numpy()[None, :]
        off = ~np.eye(len(sectors), dtype=bool)
        facts["corr_within_sector"] = float(np.nanmean(c[same & off]))
        facts["corr_across_sector"] = float(np.nanmean(c[~same]))
    facts["daily_vol_median"] = float(np.nanmedian(sd))
    if oracle is not None:
        merged = prices[["date", "ticker", "close"]].merge(oracle, on=["date", "ticker"], how="left")
        for h in horizons:
            col = f"oracle_h{h}"
            if col not in merged.columns:
                continue
            merged[f"fwd_{h}"] = forward_log_return(merged, h)
            s = ic_summary(rank_ic_by_date(merged, col, f"fwd_{h}"))
            facts[f"oracle_rank_ic_h{h}"] = s["ic_mean"]
            facts[f"oracle_icir_h{h}"] = s["icir"]
    return facts


def format_facts(columns: dict[str, dict[str, float]]) -> str:
    """A plain text table: one row per fact, one column per market."""
    keys: list[str] = []
    for f in columns.values():
        keys += [k for k in f if k not in keys]
    names = list(columns)
    width = max(len(k) for k in keys) + 2
    cw = [max(12, len(n)) + 2 for n in names]
    lines = ["fact".ljust(width) + "".join(n.rjust(w) for n, w in zip(names, cw, strict=True))]
    for k in keys:
        cells = []
        for n, w in zip(names, cw, strict=True):
            v = columns[n].get(k)
            cells.append(
                ("-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}").rjust(w)
            )
        lines.append(k.ljust(width) + "".join(cells))
    return "\n".join(lines)
