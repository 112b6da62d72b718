"""Sentiment family: levels, moving averages, changes and surprises of the ``sentiment`` column.

The surprise (innovation) at t is the part of today's sentiment that yesterday's did not predict:
s[t] - (a + b * s[t-1]), with a and b a trailing AR(1) fit on the 120 rows before t. Decayed sums of
innovations, a signed square (large surprises count more) and an interaction with the market
volatility regime are included, as the effect of news is often nonlinear.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ensemble.features.catalog import FeatureSpec
from ensemble.features.cross_section import mkt_vol_ratio
from ensemble.features.panel import FloatArray, Panel, ewm_mean, rolling, safe_div, shift, xs_rank

FAMILY = "sentiment"
REQUIRED: tuple[str, ...] = ("sentiment", "close")

EMA_SPANS = (5, 20, 60)
CHANGES = (1, 5, 20)
INNOV_SPANS = (3, 10)
AR_WINDOW = 120


def specs(columns: frozenset[str]) -> list[FeatureSpec]:
    s: list[FeatureSpec] = []
    se = ("sentiment",)

    def add(name: str, inputs: tuple[str, ...], lookback: int, desc: str) -> None:
        s.append(FeatureSpec(name, FAMILY, inputs, lookback, desc))

    add("sent", se, 1, "sentiment level")
    for n in EMA_SPANS:
        add(f"sent_ema_{n}", se, n, f"EMA of sentiment, span {n}")
    for n in CHANGES:
        add(f"sent_chg_{n}", se, n + 1, f"sentiment change over {n} rows")
    add("sent_dev_20", se, 20, "sentiment minus its EMA(20)")
    add("sent_z_60", se, 60, "sentiment z-score against its last 60 rows")
    add("sent_innov", se, AR_WINDOW + 2, "sentiment innovation: s[t] - trailing AR(1) forecast from s[t-1]")
    add("sent_surprise", se, AR_WINDOW + 62, "sentiment innovation / its std over the previous 60 rows")
    for n in INNOV_SPANS:
        add(f"sent_innov_ema_{n}", se, AR_WINDOW + n, f"EMA of sentiment innovations, span {n} (decayed sum)")
    add("sent_surprise_sq", se, AR_WINDOW + 62, "signed square of the surprise: large surprises weigh more")
    add(
        "sent_innov_x_regime",
        ("sentiment", "close"),
        251,
        "sent_innov_ema_10 x market volatility ratio (20/250)",
    )
    add("rank_sent", se, 1, "per-date percentile rank of sentiment")
    add("rank_sent_innov_ema_10", se, AR_WINDOW + 10, "per-date percentile rank of sent_innov_ema_10")
    return s


def _innovation(s: FloatArray) -> FloatArray:
    """s[t] - (a + b s[t-1]), with (a, b) the OLS fit of s[u] on s[u-1] over the AR_WINDOW rows before t."""
    prev = shift(s, 1)
    ok = np.isfinite(s) & np.isfinite(prev)
    y = np.where(ok, s, np.nan)
    x = np.where(ok, prev, np.nan)
    mp = AR_WINDOW // 2
    mx, my = rolling(x, AR_WINDOW, "mean", mp), rolling(y, AR_WINDOW, "mean", mp)
    cov = rolling(x * y, AR_WINDOW, "mean", mp) - mx * my
    var = rolling(x * x, AR_WINDOW, "mean", mp) - mx * mx
    b = safe_div(cov, var)
    a = my - b * mx
    a1, b1 = shift(a, 1), shift(b, 1)  # fitted on rows up to t-1 only
    return s - (a1 + b1 * prev)


def compute(p: Panel) -> Iterator[tuple[str, str, FloatArray]]:
    s = p.long_to_ts(p.raw("sentiment"))
    yield "sent", "ts", s
    emas = {n: ewm_mean(s, n) for n in EMA_SPANS}
    for n in EMA_SPANS:
        yield f"sent_ema_{n}", "ts", emas[n]
    for n in CHANGES:
        yield f"sent_chg_{n}", "ts", s - shift(s, n)
    yield "sent_dev_20", "ts", s - emas[20]
    yield "sent_z_60", "ts", safe_div(s - rolling(s, 60, "mean", 40), rolling(s, 60, "std", 40))
    innov = _innovation(s)
    yield "sent_innov", "ts", innov
    surprise = safe_div(innov, shift(rolling(innov, 60, "std", 40), 1))
    yield "sent_surprise", "ts", surprise
    iema = {n: ewm_mean(innov, n) for n in INNOV_SPANS}
    for n in INNOV_SPANS:
        yield f"sent_innov_ema_{n}", "ts", iema[n]
    yield "sent_surprise_sq", "ts", surprise * np.abs(surprise)
    regime = np.exp(p.date_vector_to_ts(mkt_vol_ratio(p)))
    yield "sent_innov_x_regime", "ts", iema[10] * regime
    yield "rank_sent", "date", xs_rank(p.ts_to_date(s))
    yield "rank_sent_innov_ema_10", "date", xs_rank(p.ts_to_date(iema[10]))
