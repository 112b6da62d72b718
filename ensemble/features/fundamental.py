"""Fundamental family: levels, changes and per-date ranks of pe, pb, market_cap and dividend_yield.

Each column contributes its own features when present (the family runs if any one is). From ``pe``
and ``close`` it also recovers trailing EPS (close / pe): EPS moves only when earnings are reported,
so a change in EPS marks an announcement, and its size is the earnings surprise; the
post-announcement features decay over the 60 rows that follow. Everything is a ratio or a
difference of ratios (scale-free), and uses only rows at or before t.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ensemble.features.catalog import FeatureSpec
from ensemble.features.cross_section import mrel_r1
from ensemble.features.panel import FloatArray, Panel, ffill, log_ratio, safe_div, shift, xs_rank

FAMILY = "fundamental"
REQUIRED: tuple[str, ...] = ("close",)
ANY_OF: tuple[str, ...] = ("pe", "pb", "market_cap", "dividend_yield")

EPS_TOL = 1e-6  # relative EPS change that counts as a new report (float noise is ~1e-16)
DRIFT_ROWS = 60  # post-announcement window


def specs(columns: frozenset[str]) -> list[FeatureSpec]:
    s: list[FeatureSpec] = []

    def add(name: str, inputs: tuple[str, ...], lookback: int, desc: str) -> None:
        s.append(FeatureSpec(name, FAMILY, inputs, lookback, desc))

    if "pe" in columns:
        pe, pec = ("pe",), ("pe", "close")
        add("ey", pe, 1, "earnings yield 1 / pe")
        add("ey_chg_60", pe, 61, "change in earnings yield over 60 rows")
        add("rank_ey", pe, 1, "per-date percentile rank of earnings yield")
        add("eps_growth_60", pec, 61, "trailing EPS (close / pe) growth over 60 rows")
        add("eps_growth_250", pec, 251, "trailing EPS growth over 250 rows")
        add("eps_surprise", pec, 2, "relative EPS change at the last report (carried forward)")
        add("eps_days_since", pec, 2, "rows since the last EPS report")
        add("eps_surprise_decay", pec, 2, f"eps_surprise x max(0, 1 - rows since report / {DRIFT_ROWS})")
        add(
            "earn_mrel_ret",
            ("pe", "close"),
            2,
            "market-relative return on the last report day (carried forward)",
        )
        add("earn_mrel_ret_decay", pec, 2, f"earn_mrel_ret x max(0, 1 - rows since report / {DRIFT_ROWS})")
    if "pb" in columns:
        add("bp", ("pb",), 1, "book-to-price 1 / pb")
        add("pb_chg_60", ("pb",), 61, "log change of pb over 60 rows")
        add("rank_bp", ("pb",), 1, "per-date percentile rank of book-to-price")
        add("bvps_growth_250", ("pb", "close"), 251, "book value per share (close / pb) growth over 250 rows")
    if "market_cap" in columns:
        add("log_mcap", ("market_cap",), 1, "log market capitalisation")
        add("rank_mcap", ("market_cap",), 1, "per-date percentile rank of market capitalisation")
        add(
            "net_issuance_60",
            ("market_cap", "close"),
            61,
            "log change of shares (market_cap / close) over 60 rows",
        )
    if "dividend_yield" in columns:
        dy = ("dividend_yield",)
        add("dy", dy, 1, "dividend yield")
        add("dy_chg_250", dy, 251, "change in dividend yield over 250 rows")
        add("rank_dy", dy, 1, "per-date percentile rank of dividend yield")
        add("div_payer", dy, 1, "1 if the dividend yield is positive")
    return s


def _rel_change(x: FloatArray, n: int) -> FloatArray:
    """(x[t] - x[t-n]) / |x[t-n]|: a growth rate that keeps its sign when x is negative."""
    prev = shift(x, n)
    return safe_div(x - prev, np.abs(prev))


def _report_state(p: Panel, eps: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(surprise at the last report, rows since it, market-relative return on its day), carried forward."""
    surprise = _rel_change(eps, 1)
    is_report = np.abs(surprise) > EPS_TOL
    rows = np.broadcast_to(np.arange(eps.shape[0], dtype=np.float64)[:, None], eps.shape)
    last_row = ffill(np.where(is_report, rows, np.nan))
    last_surprise = ffill(np.where(is_report, surprise, np.nan))
    last_ret = ffill(np.where(is_report, mrel_r1(p), np.nan))
    since = rows - last_row
    return last_surprise, since, last_ret


def compute(p: Panel) -> Iterator[tuple[str, str, FloatArray]]:
    cols = p.columns
    if "pe" in cols:
        pe = p.long_to_ts(p.raw("pe"))
        ey = safe_div(np.ones_like(pe), pe)
        yield "ey", "ts", ey
        yield "ey_chg_60", "ts", ey - shift(ey, 60)
        yield "rank_ey", "date", xs_rank(p.ts_to_date(ey))
        eps = p.ts("close") * ey
        yield "eps_growth_60", "ts", _rel_change(eps, 60)
        yield "eps_growth_250", "ts", _rel_change(eps, 250)
        surprise, since, ret = _report_state(p, eps)
        decay = np.clip(1.0 - since / DRIFT_ROWS, 0.0, 1.0)
        yield "eps_surprise", "ts", surprise
        yield "eps_days_since", "ts", since
        yield "eps_surprise_decay", "ts", surprise * decay
        yield "earn_mrel_ret", "ts", ret
        yield "earn_mrel_ret_decay", "ts", ret * decay
    if "pb" in cols:
        pb = p.long_to_ts(p.raw("pb"))
        bp = safe_div(np.ones_like(pb), pb)
        yield "bp", "ts", bp
        yield "pb_chg_60", "ts", log_ratio(pb, shift(pb, 60))
        yield "rank_bp", "date", xs_rank(p.ts_to_date(bp))
        yield "bvps_growth_250", "ts", _rel_change(p.ts("close") * bp, 250)
    if "market_cap" in cols:
        mc = p.long_to_ts(p.raw("market_cap"))
        yield "log_mcap", "ts", log_ratio(mc, np.ones_like(mc))
        yield "rank_mcap", "date", xs_rank(p.ts_to_date(mc))
        shares = safe_div(mc, p.ts("close"))
        yield "net_issuance_60", "ts", log_ratio(shares, shift(shares, 60))
    if "dividend_yield" in cols:
        dy = p.long_to_ts(p.raw("dividend_yield"))
        yield "dy", "ts", dy
        yield "dy_chg_250", "ts", dy - shift(dy, 250)
        yield "rank_dy", "date", xs_rank(p.ts_to_date(dy))
        yield "div_payer", "ts", np.where(np.isfinite(dy), (dy > 0).astype(np.float64), np.nan)
