"""Technical family: TA-Lib momentum, trend, volatility, volume and candlestick indicators.

TA-Lib runs per ticker on that ticker's valid rows only (numpy float64 arrays). TA-Lib is causal,
but a NaN in the middle of a series corrupts every later output of a recursive indicator (RSI turns
into 0, EMAs into NaN), so rows with a missing price are left out of the series and get NaN
features. Price-valued outputs (MACD, moving averages, ATR, OBV...) are divided by a price or a
volume of the same date, so every feature is scale-free and a split changes nothing before its date.

The work is split into chunks of tickers; :func:`compute_chunk` is what a worker process runs.
Each ticker's values depend only on that ticker's rows, so results do not depend on the chunking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import talib
from talib import MA_Type

from ensemble.features.catalog import OHLCV, FeatureSpec

FAMILY = "technical"
REQUIRED: tuple[str, ...] = OHLCV

RSI = (6, 14, 28)
ADX = (14, 28)
WILLR = (14, 28)
CCI = (14, 40)
ROC = (5, 10, 20)
MFI = (14, 28)
AROON = (14, 25)
SMA_DIST = (10, 20, 50, 100, 200)
EMA_DIST = (12, 26, 50)
SLOPE = (20, 60)
NATR = (7, 14, 28)
BBANDS = (20, 50)
OBV = (10, 20, 60)
CANDLES = ("doji", "engulfing", "hammer", "shootingstar")

_C = ("close",)
_HLC = ("high", "low", "close")
_OHLC = ("open", "high", "low", "close")
_HLCV = ("high", "low", "close", "volume")


def _spec_table() -> list[tuple[str, tuple[str, ...], int, str]]:
    t: list[tuple[str, tuple[str, ...], int, str]] = []
    for n in RSI:
        t.append((f"rsi_{n}", _C, n + 1, f"RSI({n})"))
    t.append(("macd_12_26", _C, 34, "MACD line (12, 26) / close"))
    t.append(("macd_signal_12_26", _C, 34, "MACD signal line (12, 26, 9) / close"))
    t.append(("macd_hist_12_26", _C, 34, "MACD histogram (12, 26, 9) / close"))
    t.append(("macd_hist_5_35", _C, 40, "MACD histogram (5, 35, 5) / close"))
    t.append(("ppo_12_26", _C, 26, "percentage price oscillator (EMA 12, 26)"))
    for n in ADX:
        t.append((f"adx_{n}", _HLC, 2 * n, f"ADX({n}): trend strength"))
    t.append(("adxr_14", _HLC, 41, "ADXR(14)"))
    t.append(("plus_di_14", _HLC, 15, "+DI(14)"))
    t.append(("minus_di_14", _HLC, 15, "-DI(14)"))
    t.append(("stoch_k_14", _HLC, 18, "slow stochastic %K (14, 3)"))
    t.append(("stoch_d_14", _HLC, 20, "slow stochastic %D (14, 3, 3)"))
    t.append(("stochf_k_5", _HLC, 5, "fast stochastic %K (5)"))
    t.append(("stochrsi_14", _C, 22, "stochastic RSI %K (14, 5, 3)"))
    for n in WILLR:
        t.append((f"willr_{n}", _HLC, n, f"Williams %R({n})"))
    for n in CCI:
        t.append((f"cci_{n}", _HLC, n, f"commodity channel index({n})"))
    for n in ROC:
        t.append((f"roc_{n}", _C, n + 1, f"rate of change({n}), percent"))
    t.append(("cmo_14", _C, 15, "Chande momentum oscillator(14)"))
    for n in MFI:
        t.append((f"mfi_{n}", _HLCV, n + 1, f"money flow index({n})"))
    t.append(("ultosc_7_14_28", _HLC, 29, "ultimate oscillator (7, 14, 28)"))
    t.append(("trix_15", _C, 45, "TRIX(15): 1-day ROC of a triple EMA"))
    for n in AROON:
        t.append((f"aroonosc_{n}", ("high", "low"), n + 1, f"Aroon oscillator({n})"))
    t.append(("bop_sma_14", _OHLC, 14, "balance of power, 14-row mean"))
    for n in SMA_DIST:
        t.append((f"dist_sma_{n}", _C, n, f"log(close / SMA({n}))"))
    for n in EMA_DIST:
        t.append((f"dist_ema_{n}", _C, n, f"log(close / EMA({n}))"))
    t.append(("sma_cross_20_50", _C, 50, "log(SMA(20) / SMA(50))"))
    t.append(("sma_cross_50_200", _C, 200, "log(SMA(50) / SMA(200))"))
    t.append(("dist_kama_30", _C, 31, "log(close / KAMA(30))"))
    for n in SLOPE:
        t.append((f"lr_slope_{n}", _C, n, f"linear-regression slope of close over {n} rows / SMA({n})"))
    for n in SLOPE:
        t.append((f"trend_corr_{n}", _C, n, f"correlation of close with time over {n} rows"))
    t.append(("dist_sar", ("high", "low", "close"), 2, "log(close / parabolic SAR)"))
    for n in NATR:
        t.append((f"natr_{n}", _HLC, n + 1, f"normalised ATR({n}): ATR / close, percent"))
    for n in BBANDS:
        t.append((f"bb_pos_{n}", _C, n, f"Bollinger position ({n}, 2 sd): (close - mid) / (upper - lower)"))
    t.append(("bb_width_20", _C, 20, "Bollinger width (20, 2 sd): (upper - lower) / mid"))
    for n in OBV:
        t.append(
            (f"obv_chg_{n}", ("close", "volume"), n + 1, f"OBV change over {n} rows / volume over {n} rows")
        )
    t.append(("ad_chg_20", _HLCV, 21, "Chaikin A/D line change over 20 rows / volume over 20 rows"))
    t.append(("adosc_3_10", _HLCV, 10, "Chaikin A/D oscillator (3, 10) / mean volume 10 rows"))
    for name in CANDLES:
        t.append((f"cdl_{name}", _OHLC, 12, f"candlestick pattern {name} (-1, 0, +1)"))
    return t


def specs(columns: frozenset[str]) -> list[FeatureSpec]:
    return [FeatureSpec(n, FAMILY, i, lb, d) for n, i, lb, d in _spec_table()]


def names() -> list[str]:
    return [row[0] for row in _spec_table()]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b
    out[~np.isfinite(out)] = np.nan
    return out


def _logr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(a / b)
    out[~np.isfinite(out)] = np.nan
    return out


def _change(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if n < len(x):
        out[n:] = x[n:] - x[:-n]
    return out


def ticker_features(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray) -> np.ndarray:
    """All technical features of one ticker's valid rows, shape (n_features, n_rows), float64."""
    n = len(c)
    cols: list[np.ndarray] = []
    add = cols.append
    for p in RSI:
        add(talib.RSI(c, p))
    macd, sig, hist = talib.MACD(c, 12, 26, 9)
    add(_div(macd, c))
    add(_div(sig, c))
    add(_div(hist, c))
    add(_div(talib.MACD(c, 5, 35, 5)[2], c))
    add(talib.PPO(c, 12, 26, MA_Type.EMA))
    for p in ADX:
        add(talib.ADX(h, lo, c, p))
    add(talib.ADXR(h, lo, c, 14))
    add(talib.PLUS_DI(h, lo, c, 14))
    add(talib.MINUS_DI(h, lo, c, 14))
    k, d = talib.STOCH(h, lo, c, 14, 3, MA_Type.SMA, 3, MA_Type.SMA)
    add(k)
    add(d)
    add(talib.STOCHF(h, lo, c, 5, 3, MA_Type.SMA)[0])
    add(talib.STOCHRSI(c, 14, 5, 3, MA_Type.SMA)[0])
    for p in WILLR:
        add(talib.WILLR(h, lo, c, p))
    for p in CCI:
        add(talib.CCI(h, lo, c, p))
    for p in ROC:
        add(talib.ROC(c, p))
    add(talib.CMO(c, 14))
    for p in MFI:
        add(talib.MFI(h, lo, c, v, p))
    add(talib.ULTOSC(h, lo, c, 7, 14, 28))
    add(talib.TRIX(c, 15))
    for p in AROON:
        add(talib.AROONOSC(h, lo, p))
    add(talib.SMA(talib.BOP(o, h, lo, c), 14))
    sma: dict[int, np.ndarray] = {p: talib.SMA(c, p) for p in (*SMA_DIST, *SLOPE)}
    for p in SMA_DIST:
        add(_logr(c, sma[p]))
    for p in EMA_DIST:
        add(_logr(c, talib.EMA(c, p)))
    add(_logr(sma[20], sma[50]))
    add(_logr(sma[50], sma[200]))
    add(_logr(c, talib.KAMA(c, 30)))
    for p in SLOPE:
        add(_div(talib.LINEARREG_SLOPE(c, p), sma[p]))
    ramp = np.arange(n, dtype=np.float64)
    for p in SLOPE:
        add(talib.CORREL(c, ramp, p))
    add(_logr(c, talib.SAR(h, lo, 0.02, 0.2)))
    for p in NATR:
        add(talib.NATR(h, lo, c, p))
    for p in BBANDS:
        up, mid, low = talib.BBANDS(c, p, 2.0, 2.0, MA_Type.SMA)
        add(_div(c - mid, up - low))
        if p == 20:
            width20 = _div(up - low, mid)
    add(width20)
    obv = talib.OBV(c, v)
    for p in OBV:
        add(_div(_change(obv, p), talib.SUM(v, p)))
    add(_div(_change(talib.AD(h, lo, c, v), 20), talib.SUM(v, 20)))
    add(_div(talib.ADOSC(h, lo, c, v, 3, 10), talib.SMA(v, 10)))
    for name in CANDLES:
        fn = getattr(talib, f"CDL{name.upper()}")
        add(fn(o, h, lo, c).astype(np.float64) / 100.0)
    out = np.vstack(cols) if n else np.empty((len(cols), 0))
    out[~np.isfinite(out)] = np.nan
    return out


def compute_chunk(series: Sequence[tuple[np.ndarray, ...]]) -> np.ndarray:
    """Technical features for a chunk of tickers (each a tuple open, high, low, close, volume of its
    valid rows), side by side in the same order; float32, shape (n_features, sum of rows)."""
    k = len(names())
    parts = [
        ticker_features(*s).astype(np.float32) if len(s[3]) else np.empty((k, 0), np.float32) for s in series
    ]
    return np.concatenate(parts, axis=1) if parts else np.empty((k, 0), np.float32)
