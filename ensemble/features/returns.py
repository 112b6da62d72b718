"""Returns family: log returns and momentum, realised volatility, drawdowns, gaps, ranges and volume.

Every feature is scale-free (a log ratio of prices, a ratio of volumes, or a product price x volume
that a split leaves unchanged), so a split changes nothing before its date.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ensemble.features.catalog import OHLCV, FeatureSpec
from ensemble.features.panel import FloatArray, Panel, log_ratio, rolling, safe_div, shift

FAMILY = "returns"
REQUIRED: tuple[str, ...] = OHLCV

RET_WINDOWS = (1, 2, 3, 5, 10, 20, 60, 120, 250)
MOMENTUM = ((250, 20), (120, 20), (60, 5))  # (from, skip): log(close[t-skip] / close[t-from])
VOL_WINDOWS = (5, 10, 20, 60, 120)
EXTREME_WINDOWS = (20, 60, 250)
_LN2 = float(np.log(2.0))


def specs(columns: frozenset[str]) -> list[FeatureSpec]:
    c, ohlc = ("close",), ("open", "high", "low", "close")
    s: list[FeatureSpec] = []

    def add(name: str, inputs: tuple[str, ...], lookback: int, desc: str) -> None:
        s.append(FeatureSpec(name, FAMILY, inputs, lookback, desc))

    for n in RET_WINDOWS:
        add(f"ret_{n}", c, n + 1, f"log return over {n} rows: log(close[t]/close[t-{n}])")
    for a, b in MOMENTUM:
        add(f"mom_{a}_{b}", c, a + 1, f"momentum skipping the last {b} rows: log(close[t-{b}]/close[t-{a}])")
    for n in VOL_WINDOWS:
        add(f"vol_{n}", c, n + 1, f"realised volatility: std of daily log returns over {n} rows")
    add("vol_ratio_5_60", c, 61, "log(vol_5 / vol_60): short vs long volatility")
    add("vol_ratio_20_120", c, 121, "log(vol_20 / vol_120)")
    add("downvol_20", c, 21, "downside semi-deviation of daily log returns over 20 rows")
    add("skew_60", c, 61, "skewness of daily log returns over 60 rows")
    add("kurt_60", c, 61, "excess kurtosis of daily log returns over 60 rows")
    for n in EXTREME_WINDOWS:
        add(f"dd_{n}", c, n, f"drawdown: log(close / rolling {n}-row max close)")
    for n in EXTREME_WINDOWS:
        add(f"du_{n}", c, n, f"draw-up: log(close / rolling {n}-row min close)")
    add("gap_1", ("open", "close"), 2, "overnight gap log(open[t]/close[t-1])")
    add("gap_mean_5", ("open", "close"), 6, "mean overnight gap over 5 rows")
    add("intraday_1", ("open", "close"), 1, "intraday return log(close/open)")
    add("intraday_mean_5", ("open", "close"), 5, "mean intraday return over 5 rows")
    add("range_1", ("high", "low"), 1, "daily range log(high/low)")
    add("range_mean_5", ("high", "low"), 5, "mean daily range over 5 rows")
    add("range_mean_20", ("high", "low"), 20, "mean daily range over 20 rows")
    add("parkinson_20", ("high", "low"), 20, "Parkinson high-low volatility over 20 rows")
    add("garman_klass_20", ohlc, 20, "Garman-Klass OHLC volatility over 20 rows")
    add("clv_1", ("high", "low", "close"), 1, "close location in the day's range, -1 (low) .. +1 (high)")
    add("clv_mean_5", ("high", "low", "close"), 5, "mean close location over 5 rows")
    add(
        "vlm_ratio_1_20",
        ("volume",),
        21,
        "abnormal volume: log(volume / mean volume of the previous 20 rows)",
    )
    add("vlm_ratio_5_60", ("volume",), 60, "log(mean volume 5 rows / mean volume 60 rows)")
    add("vlm_ratio_20_120", ("volume",), 120, "log(mean volume 20 rows / mean volume 120 rows)")
    add("vlm_z_60", ("volume",), 81, "vlm_ratio_1_20 over its std in the previous 60 rows (volume surprise)")
    add("dvol_20", ("close", "volume"), 20, "log mean dollar volume (close x volume) over 20 rows")
    add(
        "amihud_20", ("close", "volume"), 21, "log Amihud illiquidity: mean |return| / dollar volume, 20 rows"
    )
    add("max_ret_20", c, 21, "largest daily log return over 20 rows")
    add("min_ret_20", c, 21, "smallest daily log return over 20 rows")
    add("up_frac_20", c, 21, "fraction of up days over 20 rows")
    add("sharpe_20", c, 61, "ret_20 / (vol_60 * sqrt(20))")
    add("sharpe_60", c, 61, "ret_60 / (vol_60 * sqrt(60))")
    return s


def volume_surprise(p: Panel) -> FloatArray:
    """vlm_ratio_1_20 scaled by its std over the previous 60 rows (shared with cross_section)."""

    def make() -> FloatArray:
        x = vlm_ratio_1_20(p)
        return safe_div(x, shift(rolling(x, 60, "std", 40), 1))

    return p.cached("vlm_z_60", make)


def vlm_ratio_1_20(p: Panel) -> FloatArray:
    def make() -> FloatArray:
        v = p.ts("volume")
        return log_ratio(v, shift(rolling(v, 20, "mean"), 1))

    return p.cached("vlm_ratio_1_20", make)


def vol(p: Panel, n: int) -> FloatArray:
    return p.cached(("vol", n), lambda: rolling(p.r1(), n, "std"))


def compute(p: Panel) -> Iterator[tuple[str, str, FloatArray]]:
    o, h, lo, c, v = (p.ts(k) for k in ("open", "high", "low", "close", "volume"))
    r1 = p.r1()
    for n in RET_WINDOWS:
        yield f"ret_{n}", "ts", p.ret(n)
    for a, b in MOMENTUM:
        yield f"mom_{a}_{b}", "ts", shift(p.ret(a - b), b)
    for n in VOL_WINDOWS:
        yield f"vol_{n}", "ts", vol(p, n)
    yield "vol_ratio_5_60", "ts", log_ratio(vol(p, 5), vol(p, 60))
    yield "vol_ratio_20_120", "ts", log_ratio(vol(p, 20), vol(p, 120))
    yield "downvol_20", "ts", np.sqrt(rolling(np.minimum(r1, 0.0) ** 2, 20, "mean"))
    yield "skew_60", "ts", rolling(r1, 60, "skew")
    yield "kurt_60", "ts", rolling(r1, 60, "kurt")
    for n in EXTREME_WINDOWS:
        yield f"dd_{n}", "ts", log_ratio(c, rolling(c, n, "max", min(n, 20)))
    for n in EXTREME_WINDOWS:
        yield f"du_{n}", "ts", log_ratio(c, rolling(c, n, "min", min(n, 20)))
    gap = log_ratio(o, shift(c, 1))
    yield "gap_1", "ts", gap
    yield "gap_mean_5", "ts", rolling(gap, 5, "mean")
    intra = log_ratio(c, o)
    yield "intraday_1", "ts", intra
    yield "intraday_mean_5", "ts", rolling(intra, 5, "mean")
    rng = log_ratio(h, lo)
    yield "range_1", "ts", rng
    yield "range_mean_5", "ts", rolling(rng, 5, "mean")
    yield "range_mean_20", "ts", rolling(rng, 20, "mean")
    yield "parkinson_20", "ts", np.sqrt(rolling(rng**2, 20, "mean") / (4.0 * _LN2))
    gk = 0.5 * rng**2 - (2.0 * _LN2 - 1.0) * intra**2
    yield "garman_klass_20", "ts", np.sqrt(np.maximum(rolling(gk, 20, "mean"), 0.0))
    clv = safe_div((c - lo) - (h - c), h - lo)
    yield "clv_1", "ts", clv
    yield "clv_mean_5", "ts", rolling(clv, 5, "mean", 3)
    yield "vlm_ratio_1_20", "ts", vlm_ratio_1_20(p)
    yield "vlm_ratio_5_60", "ts", log_ratio(rolling(v, 5, "mean"), rolling(v, 60, "mean"))
    yield "vlm_ratio_20_120", "ts", log_ratio(rolling(v, 20, "mean"), rolling(v, 120, "mean"))
    yield "vlm_z_60", "ts", volume_surprise(p)
    dollar = c * v
    yield "dvol_20", "ts", log_ratio(rolling(dollar, 20, "mean"), np.ones_like(dollar))
    illiq = safe_div(np.abs(r1), dollar) * 1e9
    yield "amihud_20", "ts", log_ratio(rolling(illiq, 20, "mean", 15), np.ones_like(dollar))
    yield "max_ret_20", "ts", rolling(r1, 20, "max")
    yield "min_ret_20", "ts", rolling(r1, 20, "min")
    up = np.where(np.isfinite(r1), (r1 > 0).astype(np.float64), np.nan)
    yield "up_frac_20", "ts", rolling(up, 20, "mean")
    v60 = vol(p, 60)
    yield "sharpe_20", "ts", safe_div(p.ret(20), v60 * np.sqrt(20.0))
    yield "sharpe_60", "ts", safe_div(p.ret(60), v60 * np.sqrt(60.0))
