"""Targets: forward log returns ``target_h{h} = log(close[t+h] / close[t])``, h rows ahead per ticker.

NaN where the future is not yet known (the last h rows of each ticker) or where either close is
missing. Targets are the only columns that look forward; they are labels, never features.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

TARGET_PREFIX = "target_h"
KEY_COLUMNS: tuple[str, str] = ("date", "ticker")
# carried beside the features (per-ticker models, grouping, interval scaling); never features
RAW_COLUMNS: tuple[str, ...] = ("close", "sector", "ref_vol")
NON_FEATURE_PREFIXES: tuple[str, ...] = ("target_", "oracle", "pred_")
_TARGET_RE = re.compile(r"^target_h(\d+)$")


def target_name(h: int) -> str:
    return f"{TARGET_PREFIX}{h}"


def target_horizon(name: str) -> int | None:
    """The horizon of a target column name (``target_h20`` -> 20), or None if it is not one."""
    m = _TARGET_RE.match(name)
    return int(m.group(1)) if m else None


def _ticker_bounds(tickers: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the row index of its ticker's first and last row (rows sorted by ticker)."""
    codes, _ = pd.factorize(tickers, sort=False)
    n = len(codes)
    change = np.r_[True, codes[1:] != codes[:-1]] if n else np.zeros(0, bool)
    starts = np.flatnonzero(change)
    ends = np.r_[starts[1:], n] - 1
    seg = np.cumsum(change) - 1
    return starts[seg], ends[seg]


def shifted_rows(tickers: pd.Series, h: int) -> np.ndarray:
    """For each row the index of the row h rows later of the same ticker, or -1 if there is none."""
    n = len(tickers)
    _, last = _ticker_bounds(tickers)
    idx = np.arange(n) + h
    return np.where(idx <= last, idx, -1)


def forward_log_returns(prices: pd.DataFrame, horizons: Iterable[int]) -> pd.DataFrame:
    """One column ``target_h{h}`` per horizon, aligned with ``prices``' rows (sorted by ticker, date)."""
    close = prices["close"].to_numpy(dtype=np.float64, na_value=np.nan)
    out: dict[str, np.ndarray] = {}
    for h in horizons:
        if h < 1:
            raise ValueError(f"target horizon must be >= 1, got {h}")
        j = shifted_rows(prices["ticker"], h)
        fut = np.where(j >= 0, close[np.maximum(j, 0)], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(fut / close)
        r[~np.isfinite(r)] = np.nan
        out[target_name(h)] = r
    return pd.DataFrame(out, index=prices.index)


def realised_forward_returns(prices: pd.DataFrame, horizons: Iterable[int]) -> pd.DataFrame:
    """``date, ticker, target_h{h}``: every row's forward log return (:func:`forward_log_returns`: the
    training target's definition; NaN where the horizon runs past the data), rows sorted by ticker
    and date. What monitoring and the retraining gate judge forecasts by."""
    p = (
        prices[["date", "ticker", "close"]]
        .sort_values(["ticker", "date"], kind="stable")
        .reset_index(drop=True)
    )
    t = forward_log_returns(p, horizons)
    return pd.concat([p[["date", "ticker"]], t], axis=1)


def realisation_dates(frame: pd.DataFrame, h: int) -> np.ndarray:
    """The date each row's h-row target becomes known (NaT where it is not in ``frame``)."""
    j = shifted_rows(frame["ticker"], h)
    d = frame["date"].to_numpy(dtype="datetime64[ns]")
    return np.where(j >= 0, d[np.maximum(j, 0)], np.datetime64("NaT", "ns"))


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The feature columns of a feature frame: everything but the keys, the raw columns, targets,
    oracle and prediction columns. The one definition (the pipeline, the preprocessor and every
    model use it)."""
    skip = set(KEY_COLUMNS) | set(RAW_COLUMNS)
    return [c for c in frame.columns if c not in skip and not str(c).startswith(NON_FEATURE_PREFIXES)]
