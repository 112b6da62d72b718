"""The HTTP API's request models (pydantic): bad input is a 422 naming the field, before any model runs.

Plain data only; no Ray, no model code. Limits (tickers per batch, bars of history) keep one request
from taking the service down.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

TICKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_^=]{0,19}$")
MAX_BATCH = 2000
MAX_HISTORY = 5000

Ticker = Annotated[str, Field(min_length=1, max_length=20, pattern=TICKER_RE.pattern)]


EARLIEST, LATEST = dt.date(1900, 1, 1), dt.date(2199, 12, 31)


def check_date(d: dt.date | None) -> dt.date | None:
    """Dates the data can hold (pandas' nanosecond timestamps end in 2262)."""
    if d is not None and not EARLIEST <= d <= LATEST:
        raise ValueError(f"date {d} is outside {EARLIEST} .. {LATEST}")
    return d


Day = Annotated[dt.date, AfterValidator(check_date)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bar(_Strict):
    """One day of OHLCV for the ticker being scored. Prices are finite and positive, volume >= 0,
    low <= min(open, close) and max(open, close) <= high (the data contract)."""

    date: Day
    open: float = Field(gt=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)
    low: float = Field(gt=0, allow_inf_nan=False)
    close: float = Field(gt=0, allow_inf_nan=False)
    volume: float = Field(ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ohlc(self) -> Bar:
        if self.low > min(self.open, self.close) or self.high < max(self.open, self.close):
            raise ValueError(
                f"{self.date}: low <= min(open, close) <= max(open, close) <= high does not hold "
                f"(open {self.open}, high {self.high}, low {self.low}, close {self.close})"
            )
        return self


class PredictRequest(_Strict):
    ticker: Ticker
    horizon: int | None = Field(None, description="one of the version's horizons; all when absent")
    as_of: Day | None = Field(None, description="score with data up to this date; latest when absent")
    history: list[Bar] | None = Field(
        None,
        max_length=MAX_HISTORY,
        description="recent OHLCV bars of this ticker, scored against the stored universe of that date",
    )
    version: str | None = Field(
        None,
        max_length=100,
        description="score with this registry version (id or alias) instead of the served one; "
        "admin only (X-API-Key), e.g. to check a version before promoting it",
    )

    @field_validator("history")
    @classmethod
    def _dates(cls, v: list[Bar] | None) -> list[Bar] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("history must hold at least one bar when given")
        dates = [b.date for b in v]
        if len(set(dates)) != len(dates):
            dup = sorted(d for d in set(dates) if dates.count(d) > 1)[0]
            raise ValueError(f"history has the date {dup} more than once")
        return sorted(v, key=lambda b: b.date)


class BatchRequest(_Strict):
    tickers: list[Ticker] = Field(min_length=1, max_length=MAX_BATCH)
    horizon: int | None = None
    as_of: Day | None = None
    version: str | None = Field(
        None,
        max_length=100,
        description="score with this registry version (id or alias) instead of the served one; "
        "admin only (X-API-Key), e.g. to check a version before promoting it",
    )

    @field_validator("tickers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class PromoteRequest(_Strict):
    force: bool = Field(
        False, description="make it production even when it does not beat production on validation"
    )
    reason: str = Field("", max_length=500)


class RollbackRequest(_Strict):
    to: str | None = Field(
        None, max_length=100, description="a version id or alias; the previous one when absent"
    )
    reason: str = Field("", max_length=500)


class ABRequest(_Strict):
    """Send ``weight`` of the traffic to ``version`` (arm B), the rest to production (arm A). Weight 0
    ends the test."""

    version: str | None = Field(None, max_length=100)
    weight: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _version_when_weighted(self) -> ABRequest:
        if self.weight > 0 and not self.version:
            raise ValueError("version is required when weight > 0")
        return self


def error_body(status: int, field: str | None, detail: str) -> dict[str, Any]:
    """What a request error looks like when it crosses a deployment boundary (a value, not an
    exception: exceptions cross Ray wrapped)."""
    return {"error": {"status": int(status), "field": field, "detail": str(detail)}}
