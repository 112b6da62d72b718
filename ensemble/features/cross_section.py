"""Cross-sectional family: the market, per-date ranks and z-scores, betas, market- and sector-relative returns.

Point in time: a per-date rank or z-score uses only that date's cross-section; the market (an
equal-weighted portfolio of every ticker with a return that day) and each sector's return at t use
only returns dated t; betas, correlations and relative returns are trailing windows of those.
Sector features need a ``sector`` column; without one, only the market part is built.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ensemble.features.catalog import FeatureSpec
from ensemble.features.panel import (
    FloatArray,
    Panel,
    log_ratio,
    rolling,
    rolling_beta_corr,
    row_sum,
    shift,
    xs_rank,
    xs_rank_within,
    xs_zscore,
)
from ensemble.features.returns import vlm_ratio_1_20, vol, volume_surprise

FAMILY = "cross_section"
REQUIRED: tuple[str, ...] = ("close", "volume")

MKT_RET = (5, 20, 60)
MKT_VOL = (20, 60)
REL_RET = (1, 5, 20, 60)
RANKED = ("ret_1", "ret_5", "ret_20", "ret_60", "mom_250_20", "vol_20", "vlm_ratio_5_60", "mrel_ret_5")
ZSCORED = ("ret_5", "ret_20", "vol_20", "vlm_ratio_1_20")
SECTOR_RET = (5, 20, 120)
HIVOL_Z = 1.0  # a day's volume counts as abnormal when vlm_z_60 > this


def specs(columns: frozenset[str]) -> list[FeatureSpec]:
    s: list[FeatureSpec] = []
    c, cv = ("close",), ("close", "volume")

    def add(name: str, inputs: tuple[str, ...], lookback: int, desc: str) -> None:
        s.append(FeatureSpec(name, FAMILY, inputs, lookback, desc))

    for n in MKT_RET:
        add(f"mkt_ret_{n}", c, n + 1, f"equal-weighted market log return over {n} dates")
    for n in MKT_VOL:
        add(f"mkt_vol_{n}", c, n + 1, f"market volatility: std of daily market returns over {n} dates")
    add("mkt_vol_ratio_20_250", c, 251, "market volatility regime: log(mkt_vol_20 / mkt_vol_250)")
    add("xs_disp_20", c, 21, "cross-sectional dispersion: 20-date mean of the per-date std of daily returns")
    add("beta_mkt_60", c, 61, "rolling beta of daily returns to the market, 60 rows")
    add("beta_mkt_120", c, 121, "rolling beta of daily returns to the market, 120 rows")
    add("corr_mkt_60", c, 61, "rolling correlation of daily returns with the market, 60 rows")
    add(
        "idio_vol_60",
        c,
        61,
        "idiosyncratic volatility: std of market-residual returns (beta_mkt_60), 60 rows",
    )
    for n in REL_RET:
        add(f"mrel_ret_{n}", c, n + 1, f"market-relative return over {n} rows: sum of (r - r_market)")
    add("resid_ret_5", c, 126, "market-residual return over 5 rows: sum of r - beta(120, prior) * r_market")
    add("resid_ret_20", c, 141, "market-residual return over 20 rows (beta over the prior 120 rows)")
    add("mrel_mom_126_21", c, 127, "market-relative momentum over rows t-126 .. t-21")
    for f in RANKED:
        add(
            f"rank_{f}",
            cv if "vlm" in f else c,
            251 if "250" in f else 61,
            f"per-date percentile rank of {f}",
        )
    for f in ZSCORED:
        add(f"z_{f}", cv if "vlm" in f else c, 61, f"per-date z-score of {f}")
    add("mrel_ret_5_hivol", cv, 86, "market-relative return over 5 rows on abnormal-volume days only")
    add("mrel_ret_5_lovol", cv, 86, "market-relative return over 5 rows on ordinary-volume days only")
    add("mrel_ret_5_x_vlm", cv, 61, "mrel_ret_5 x vlm_ratio_5_60 (reversal x volume interaction)")
    if "sector" in columns:
        cs = ("close", "sector")
        csv = ("close", "volume", "sector")
        for n in REL_RET:
            add(f"srel_ret_{n}", cs, n + 1, f"sector-relative return over {n} rows: sum of (r - r_sector)")
        add("srel_mom_126_21", cs, 127, "sector-relative momentum over rows t-126 .. t-21")
        add("srel_ret_5_hivol", csv, 86, "sector-relative return over 5 rows on abnormal-volume days only")
        add("srel_ret_5_lovol", csv, 86, "sector-relative return over 5 rows on ordinary-volume days only")
        for n in SECTOR_RET:
            add(f"sector_ret_{n}", cs, n + 1, f"own sector's equal-weighted log return over {n} dates")
        add("beta_sec_60", cs, 61, "rolling beta of daily returns to the own sector, 60 rows")
        add("corr_sec_60", cs, 61, "rolling correlation of daily returns with the own sector, 60 rows")
        add("rank_in_sector_ret_5", cs, 6, "per-date percentile rank of ret_5 within the sector")
        add("rank_in_sector_ret_20", cs, 21, "per-date percentile rank of ret_20 within the sector")
    return s


def mkt_vol_ratio(p: Panel) -> FloatArray:
    """log(mkt_vol_20 / mkt_vol_250) per date (D,): the market volatility regime."""

    def make() -> FloatArray:
        m = p.market_r1()
        return log_ratio(rolling(m, 20, "std"), rolling(m, 250, "std", 120))

    return p.cached("mkt_vol_ratio", make)


def mrel_r1(p: Panel) -> FloatArray:
    return p.cached("mrel_r1", lambda: p.r1() - p.market_r1_ts())


def _series(p: Panel, name: str) -> FloatArray:
    """A ticker-space series shared with the returns family, by its feature name."""
    if name.startswith("ret_"):
        return p.ret(int(name[4:]))
    if name == "mom_250_20":
        return shift(p.ret(230), 20)
    if name == "vol_20":
        return vol(p, 20)
    if name == "vlm_ratio_5_60":
        v = p.ts("volume")
        return log_ratio(rolling(v, 5, "mean"), rolling(v, 60, "mean"))
    if name == "vlm_ratio_1_20":
        return vlm_ratio_1_20(p)
    if name == "mrel_ret_5":
        return rolling(mrel_r1(p), 5, "sum")
    raise KeyError(name)


def compute(p: Panel) -> Iterator[tuple[str, str, FloatArray]]:
    r1 = p.r1()
    m = p.market_r1()  # (D,)
    for n in MKT_RET:
        yield f"mkt_ret_{n}", "dvec", rolling(m, n, "sum")
    for n in MKT_VOL:
        yield f"mkt_vol_{n}", "dvec", rolling(m, n, "std")
    yield "mkt_vol_ratio_20_250", "dvec", mkt_vol_ratio(p)
    rd = p.ts_to_date(r1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(rd)
        cnt = ok.sum(axis=1)
        mu = row_sum(np.where(ok, rd, 0.0))[:, 0] / cnt
        dev = np.where(ok, rd - mu[:, None], 0.0)
        disp = np.where(cnt >= 3, np.sqrt(row_sum(dev * dev)[:, 0] / cnt), np.nan)
    yield "xs_disp_20", "dvec", rolling(disp, 20, "mean")
    mt = p.market_r1_ts()
    b60, c60 = rolling_beta_corr(r1, mt, 60)
    b120, _ = rolling_beta_corr(r1, mt, 120)
    yield "beta_mkt_60", "ts", b60
    yield "beta_mkt_120", "ts", b120
    yield "corr_mkt_60", "ts", c60
    yield "idio_vol_60", "ts", rolling(r1 - b60 * mt, 60, "std", 40)
    mrel = mrel_r1(p)
    for n in REL_RET:
        yield f"mrel_ret_{n}", "ts", rolling(mrel, n, "sum")
    resid = r1 - shift(b120, 1) * mt
    yield "resid_ret_5", "ts", rolling(resid, 5, "sum")
    yield "resid_ret_20", "ts", rolling(resid, 20, "sum")
    yield "mrel_mom_126_21", "ts", shift(rolling(mrel, 106, "sum"), 21)
    for f in RANKED:
        yield f"rank_{f}", "date", xs_rank(p.ts_to_date(_series(p, f)))
    for f in ZSCORED:
        yield f"z_{f}", "date", xs_zscore(p.ts_to_date(_series(p, f)))
    vz = volume_surprise(p)
    known = np.isfinite(vz)
    hivol = np.where(known, (vz > HIVOL_Z).astype(np.float64), np.nan)
    yield "mrel_ret_5_hivol", "ts", rolling(mrel * hivol, 5, "sum")
    yield "mrel_ret_5_lovol", "ts", rolling(mrel * (1.0 - hivol), 5, "sum")
    yield "mrel_ret_5_x_vlm", "ts", _series(p, "mrel_ret_5") * _series(p, "vlm_ratio_5_60")
    if p.sector_codes is None:
        return
    sr = p.sector_r1_ts()
    srel = r1 - sr
    for n in REL_RET:
        yield f"srel_ret_{n}", "ts", rolling(srel, n, "sum")
    yield "srel_mom_126_21", "ts", shift(rolling(srel, 106, "sum"), 21)
    yield "srel_ret_5_hivol", "ts", rolling(srel * hivol, 5, "sum")
    yield "srel_ret_5_lovol", "ts", rolling(srel * (1.0 - hivol), 5, "sum")
    sec_daily = p.sector_r1()  # (D, S)
    codes = p.sector_codes[p.valid]
    for n in SECTOR_RET:
        roll = rolling(sec_daily, n, "sum")
        vals = np.where(codes >= 0, roll[p.vdidx, np.maximum(codes, 0)], np.nan)
        yield f"sector_ret_{n}", "ts", p.valid_to_ts(vals)
    bs, cs = rolling_beta_corr(r1, sr, 60)
    yield "beta_sec_60", "ts", bs
    yield "corr_sec_60", "ts", cs
    sec_date = p.ts_to_date(p.sector_ts())
    yield "rank_in_sector_ret_5", "date", xs_rank_within(p.ts_to_date(p.ret(5)), sec_date)
    yield "rank_in_sector_ret_20", "date", xs_rank_within(p.ts_to_date(p.ret(20)), sec_date)
