"""Calendar family: day of week, month, turn of month, business days to month and quarter end.

Computed from the row's own date alone (weekday arithmetic, no exchange holiday calendar), so a
value never depends on which later dates happen to be in the table.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from ensemble.features.catalog import FeatureSpec
from ensemble.features.panel import FloatArray, Panel

FAMILY = "calendar"
REQUIRED: tuple[str, ...] = ("date",)

TURN_OF_MONTH_LAST = 1  # the last business day of a month ...
TURN_OF_MONTH_FIRST = 3  # ... and its first three count as the turn of the month


def specs(columns: frozenset[str]) -> list[FeatureSpec]:
    d = ("date",)
    table = [
        ("day_of_week", "day of week, 0 = Monday"),
        ("month", "month, 1 .. 12"),
        ("quarter", "quarter, 1 .. 4"),
        ("day_of_month", "calendar day of the month"),
        ("week_of_year", "ISO week of the year"),
        ("bdays_since_month_start", "business days since the first business day of the month"),
        ("bdays_to_month_end", "business days left until the last business day of the month"),
        ("turn_of_month", "1 on the last business day and the first three business days of a month"),
        ("bdays_to_quarter_end", "business days left until the last business day of the quarter"),
        ("days_to_quarter_end", "calendar days left until the quarter's last day"),
    ]
    return [FeatureSpec(n, FAMILY, d, 1, desc) for n, desc in table]


def compute(p: Panel) -> Iterator[tuple[str, str, FloatArray]]:
    idx = pd.DatetimeIndex(p.dates)
    day = idx.values.astype("datetime64[D]")
    month_start = idx.to_period("M").to_timestamp().values.astype("datetime64[D]")
    month_end = (idx.to_period("M").to_timestamp(how="end")).values.astype("datetime64[D]")
    quarter_end = (idx.to_period("Q").to_timestamp(how="end")).values.astype("datetime64[D]")
    # business days strictly after `day` up to and including the period's last day (one day as a
    # timedelta with its unit: numpy 2.5 deprecates adding bare integers to dates)
    one = np.timedelta64(1, "D")
    to_month_end = np.busday_count(day + one, month_end + one).astype(np.float64)
    since_start = np.busday_count(month_start, day).astype(np.float64)
    to_q_end = np.busday_count(day + one, quarter_end + one).astype(np.float64)
    tom = (to_month_end < TURN_OF_MONTH_LAST) | (since_start < TURN_OF_MONTH_FIRST)
    yield "day_of_week", "dvec", idx.day_of_week.to_numpy(dtype=np.float64)
    yield "month", "dvec", idx.month.to_numpy(dtype=np.float64)
    yield "quarter", "dvec", idx.quarter.to_numpy(dtype=np.float64)
    yield "day_of_month", "dvec", idx.day.to_numpy(dtype=np.float64)
    yield "week_of_year", "dvec", idx.isocalendar().week.to_numpy(dtype=np.float64)
    yield "bdays_since_month_start", "dvec", since_start
    yield "bdays_to_month_end", "dvec", to_month_end
    yield "turn_of_month", "dvec", tom.astype(np.float64)
    yield "bdays_to_quarter_end", "dvec", to_q_end
    yield "days_to_quarter_end", "dvec", (quarter_end - day).astype(np.float64)
