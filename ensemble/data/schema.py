"""The data contract: one long table sorted by (ticker, date), validated with one clear error per rule.

Every loader returns this table and calls :func:`validate`. A violation raises
:class:`DataValidationError` naming the rule, the ticker and the first offending dates (and, where
one value is at fault, its column, row and value). Nothing is dropped silently: :func:`clean`
repairs or drops rows only when asked, and returns a :class:`CleaningReport` that says exactly
which rows it touched and what else it noticed.

Dates are calendar days: no time of day, no time zone or UTC offset (a date is the exchange's
trading day, which an offset would shift), Monday to Friday, and not after today.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

KEY_COLUMNS: tuple[str, ...] = ("date", "ticker")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
REQUIRED_COLUMNS: tuple[str, ...] = ("date", "ticker", "open", "high", "low", "close", "volume")
FUNDAMENTAL_COLUMNS: tuple[str, ...] = ("pe", "pb", "market_cap", "dividend_yield")
SENTIMENT_COLUMNS: tuple[str, ...] = ("sentiment",)
OPTIONAL_COLUMNS: tuple[str, ...] = ("adj_close", *FUNDAMENTAL_COLUMNS, "sector", *SENTIMENT_COLUMNS)
ALL_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
NUMERIC_COLUMNS: tuple[str, ...] = tuple(c for c in ALL_COLUMNS if c not in ("date", "ticker", "sector"))
# prices and volume must be finite numbers (inf breaks every return and every model downstream)
FINITE_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume", "adj_close")

# The dates a datetime64[ns] column can hold (whole days inside pandas' nanosecond range).
DATE_MIN = pd.Timestamp("1677-09-22")
DATE_MAX = pd.Timestamp("2262-04-11")
# "Today" is the latest calendar date anywhere on Earth (UTC+14), so a market whose trading day has
# begun ahead of this machine's clock is not taken for the future.
_LATEST_ZONE = timezone(timedelta(hours=14))

# Relative slack for OHLC ordering checks (prices rounded to cents by vendors).
_OHLC_RTOL = 1e-9
_MAX_DATES_IN_MESSAGE = 3
_UNSET: Any = object()
_TZ_REASON = "has a time zone or UTC offset: dates must be the exchange's calendar dates, such as 2024-01-02"


class DataValidationError(ValueError):
    """A contract rule is violated. Carries the rule, the first offending ticker and its first dates.

    Where one value is at fault it also carries its ``column``, ``row`` (0-based position in the
    table, or in the file's data rows once ``path`` is set) and ``value``; the message shows the row
    1-based ("data row 1" is the first row after a header).
    """

    def __init__(
        self,
        rule: str,
        detail: str,
        ticker: str | None = None,
        dates: list[pd.Timestamp] | None = None,
        n_rows: int = 0,
        n_tickers: int = 0,
        *,
        column: str | None = None,
        row: int | None = None,
        value: object = _UNSET,
        path: str | None = None,
    ) -> None:
        self.rule = rule
        self.detail = detail
        self.ticker = ticker
        self.dates = list(dates or [])
        self.n_rows = n_rows
        self.n_tickers = n_tickers
        self.column = column
        self.row = row
        self.value = None if value is _UNSET else value
        self._has_value = value is not _UNSET
        self.path = path
        parts: list[str] = []
        if column is not None:
            parts.append(f"column {column!r}")
        if row is not None:
            parts.append(f"data row {row + 1}")
        if self._has_value:
            parts.append(f"value {_fmt_value(value)}")
        where = "; " + ", ".join(parts) if parts else ""
        if ticker is not None:
            shown = ", ".join(_fmt_date(d) for d in self.dates[:_MAX_DATES_IN_MESSAGE])
            where += f"{'; ' if not parts else ', '}ticker {ticker!r}"
            if shown and not (self._has_value and len(self.dates) == 1 and self.dates[0] is self.value):
                where += f", first dates {shown}"
            if n_rows:
                where += f" ({n_rows} offending rows in all"
                where += f", {n_tickers} tickers)" if n_tickers > 1 else ")"
        in_file = "" if path is None else f" in file {path!r}"
        super().__init__(f"data contract rule '{rule}' violated{in_file}: {detail}{where}")

    def _fields(self) -> dict[str, Any]:
        f: dict[str, Any] = dict(
            rule=self.rule,
            detail=self.detail,
            ticker=self.ticker,
            dates=self.dates,
            n_rows=self.n_rows,
            n_tickers=self.n_tickers,
            column=self.column,
            row=self.row,
            path=self.path,
        )
        if self._has_value:
            f["value"] = self.value
        return f

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its fields (the default would call __init__ with the message alone), so the
        # error survives pickling, e.g. out of a Ray task
        return (_rebuild_error, (type(self), self._fields()))

    def located(
        self, path: str, rows: np.ndarray | None = None, columns: Mapping[str, str] | None = None
    ) -> DataValidationError:
        """The same error for a file: ``path`` named, ``row`` mapped to the file's data row through
        ``rows`` (the file row of each table row; left out where that is unknown), and the column
        named as the file spells it through ``columns`` (contract name -> file name)."""
        f = self._fields()
        f["path"] = path
        if self.column is not None and columns:
            f["column"] = columns.get(self.column, self.column)
        row = self.row
        f["row"] = None if row is None or rows is None or not 0 <= row < len(rows) else int(rows[row])
        return type(self)(**f)


def _rebuild_error(cls: type[DataValidationError], fields: dict[str, Any]) -> DataValidationError:
    return cls(**fields)


def _fmt_date(d: object) -> str:
    if isinstance(d, str | int | float | np.number):  # a raw value that is not a date: show it as it is
        return str(d)
    try:
        return pd.Timestamp(d).strftime("%Y-%m-%d")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return str(d)


def _fmt_value(v: object) -> str:
    if isinstance(v, pd.Timestamp | datetime | np.datetime64):
        ts = pd.Timestamp(v)
        return f"{ts:%Y-%m-%d}" if ts.tz is None and ts == ts.normalize() else str(ts)
    if isinstance(v, np.generic):
        v = v.item()
    return repr(v)


def _raise_for_mask(
    df: pd.DataFrame, mask: np.ndarray | pd.Series, rule: str, detail: str, column: str | None = None
) -> None:
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return
    first = int(np.argmax(mask))
    bad = df.loc[mask, ["ticker", "date"]]
    first_ticker = bad["ticker"].iloc[0]
    dates = bad.loc[bad["ticker"] == first_ticker, "date"].head(_MAX_DATES_IN_MESSAGE).tolist()
    extra: dict[str, Any] = {"row": first}
    if column is not None:
        extra.update(column=column, value=df[column].iloc[first])
    raise DataValidationError(
        rule,
        detail,
        ticker=None if pd.isna(first_ticker) else str(first_ticker),
        dates=dates,
        n_rows=int(mask.sum()),
        n_tickers=int(bad["ticker"].nunique(dropna=False)),
        **extra,
    )


def today_date(today: object = None) -> pd.Timestamp:
    """``today`` as a midnight Timestamp; by default the latest calendar date anywhere on Earth now."""
    if today is None:
        return pd.Timestamp(datetime.now(_LATEST_ZONE).date())
    return pd.Timestamp(today).normalize()  # type: ignore[arg-type]


def _date_problem(v: object) -> tuple[Any, tuple[str, str] | None]:
    """One raw date value as a midnight Timestamp (NaT for a missing one), or (rule, reason)."""
    if v is None or v is pd.NaT or (isinstance(v, float | np.floating) and np.isnan(v)):
        return pd.NaT, None
    if isinstance(v, bool | int | float | np.number):
        return None, ("date_type", "is a number, not a date (write dates as YYYY-MM-DD)")
    if isinstance(v, str) and not v.strip():
        return pd.NaT, None
    try:
        ts = pd.Timestamp(v)  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None, ("date_type", "does not parse as a date")
    if ts is pd.NaT:
        return pd.NaT, None
    if ts.tz is not None:
        return None, ("date_timezone", _TZ_REASON)
    if ts != ts.normalize():
        return None, ("date_midnight", "has a time of day: dates must be calendar dates, such as 2024-01-02")
    if not DATE_MIN <= ts <= DATE_MAX:
        return None, (
            "date_out_of_range",
            f"is out of the supported range {DATE_MIN:%Y-%m-%d}..{DATE_MAX:%Y-%m-%d}",
        )
    return ts, None


def _parse_dates(df: pd.DataFrame) -> pd.Series:
    """The 'date' column as datetime64[ns] calendar days, or DataValidationError for the first bad row."""
    s = df["date"]

    def fail(pos: int, rule: str, reason: str) -> None:
        value = s.iloc[pos]
        t = df["ticker"].iloc[pos]
        raise DataValidationError(
            rule,
            f"date value {reason}",
            ticker=None if pd.isna(t) else str(t),
            dates=[value],
            column="date",
            row=pos,
            value=value,
        )

    if isinstance(s.dtype, pd.DatetimeTZDtype) and s.notna().any():
        fail(int(np.argmax(s.notna().to_numpy())), "date_timezone", _TZ_REASON)
    if pd.api.types.is_datetime64_dtype(s):
        ok = s.isna() | ((s == s.dt.normalize()) & (s >= DATE_MIN) & (s <= DATE_MAX))
        if not ok.all():
            pos = int(np.argmax(~ok.to_numpy()))
            problem = _date_problem(s.iloc[pos])[1]
            assert problem is not None
            fail(pos, *problem)
        return s.astype("datetime64[ns]")
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        notna = s.notna().to_numpy()
        if notna.any():
            fail(
                int(np.argmax(notna)),
                "date_type",
                f"is a number ({s.dtype}), not a date (write dates as YYYY-MM-DD)",
            )
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    # text or objects: parse each distinct value once, in order of first appearance
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    parsed: list[pd.Timestamp] = []
    for i, v in enumerate(uniques):
        ts, problem = _date_problem(v)
        if problem is not None:
            fail(int(np.argmax(codes == i)), *problem)
        parsed.append(ts)
    table = pd.DatetimeIndex([*parsed, pd.NaT]).astype("datetime64[ns]")
    return pd.Series(table.take(np.where(codes < 0, len(parsed), codes)), index=s.index)


def coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Bring a raw frame to the contract's dtypes (no rows changed): datetime dates, str tickers, floats.

    Dates must be calendar dates: text such as ``2024-01-02``, ``datetime.date`` objects or a
    datetime64 column at midnight. A number (epoch days or nanoseconds are ambiguous), a time of
    day, a time zone or UTC offset and a date outside 1677-09-22..2262-04-11 are refused.
    Raises DataValidationError('missing_columns' / 'date_type' / 'date_timezone' / 'date_midnight' /
    'date_out_of_range' / 'numeric_type') naming the column, the first bad row and its value.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            "missing_columns", f"required columns {missing} are absent (have {list(df.columns)})"
        )
    out = df.copy()
    out["date"] = _parse_dates(out)
    out["ticker"] = out["ticker"].astype(object).where(out["ticker"].notna(), None)
    out["ticker"] = out["ticker"].map(lambda t: t if t is None else str(t))
    for c in NUMERIC_COLUMNS:
        if c in out.columns and not pd.api.types.is_float_dtype(out[c]):
            conv = pd.to_numeric(out[c], errors="coerce")
            _raise_for_mask(
                out, conv.isna() & out[c].notna(), "numeric_type", f"column {c!r} is not numeric", column=c
            )
            out[c] = conv.astype("float64")
    if "sector" in out.columns:
        out["sector"] = out["sector"].astype(object)
    return out


def _date_values(df: pd.DataFrame) -> np.ndarray:
    """The 'date' column as datetime64[D] days (after the type rules), for the calendar rules."""
    s = df["date"]
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        _raise_for_mask(df, s.notna(), "date_timezone", "dates must not carry a time zone", column="date")
    if not pd.api.types.is_datetime64_dtype(s):  # an object column of datetimes
        tz = s.map(lambda v: getattr(v, "tzinfo", None) is not None).to_numpy(dtype=bool)
        _raise_for_mask(df, tz, "date_timezone", "dates must not carry a time zone", column="date")
        s = pd.Series(pd.DatetimeIndex([pd.Timestamp(v) for v in s]), index=s.index)
    low = (s < DATE_MIN).to_numpy() | (s > DATE_MAX).to_numpy()
    _raise_for_mask(
        df,
        low,
        "date_out_of_range",
        f"dates must lie in {DATE_MIN:%Y-%m-%d}..{DATE_MAX:%Y-%m-%d}",
        column="date",
    )
    _raise_for_mask(
        df,
        (s != s.dt.normalize()).to_numpy(),
        "date_midnight",
        "dates must be calendar days (midnight, no time of day)",
        column="date",
    )
    return s.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")


def validate(df: pd.DataFrame, *, today: date | str | pd.Timestamp | None = None) -> pd.DataFrame:
    """Check every contract rule; return the frame unchanged or raise DataValidationError for the first rule broken.

    Rules, in order: missing_columns, empty, key_null, date_type, date_timezone, date_out_of_range,
    date_midnight, numeric_type, duplicate_key, sort_order, missing_value, finite_value,
    close_positive, price_positive, low_le_open_close, high_ge_open_close, volume_nonnegative,
    trading_day (Monday to Friday), future_date (after ``today``, by default the latest calendar
    date anywhere on Earth now: see :func:`today_date`).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            "missing_columns", f"required columns {missing} are absent (have {list(df.columns)})"
        )
    if len(df) == 0:
        raise DataValidationError("empty", "the table has no rows")
    _raise_for_mask(
        df, df["ticker"].isna() | df["date"].isna(), "key_null", "ticker and date must be present"
    )
    if not pd.api.types.is_datetime64_any_dtype(df["date"]):
        not_dt = ~df["date"].map(lambda v: isinstance(v, datetime | np.datetime64)).to_numpy(dtype=bool)
        _raise_type(
            df, not_dt, "date_type", f"column 'date' must be datetime64, got {df['date'].dtype}", "date"
        )
    days = _date_values(df)
    for c in NUMERIC_COLUMNS:
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c]):
            not_num = ~df[c].map(_is_number).to_numpy(dtype=bool)
            _raise_type(df, not_num, "numeric_type", f"column {c!r} must be numeric, got {df[c].dtype}", c)

    _raise_for_mask(
        df, df.duplicated(["ticker", "date"], keep="first"), "duplicate_key", "(ticker, date) must be unique"
    )
    tick = df["ticker"].to_numpy()
    dates = df["date"].to_numpy()
    same = tick[1:] == tick[:-1]
    # sorted by ticker, then date: tickers non-decreasing, dates strictly increasing within a ticker
    out_of_order = np.zeros(len(df), dtype=bool)
    out_of_order[1:] = (tick[1:] < tick[:-1]) | (same & (dates[1:] <= dates[:-1]))
    _raise_for_mask(df, out_of_order, "sort_order", "rows must be sorted by (ticker, date)")

    for c in ("close", "open", "high", "low", "volume"):
        _raise_for_mask(
            df, df[c].isna().to_numpy(), "missing_value", f"column {c!r} must not be NaN", column=c
        )
    for c in FINITE_COLUMNS:
        if c in df.columns:
            inf = np.isinf(df[c].to_numpy(dtype=float))
            _raise_for_mask(df, inf, "finite_value", "prices and volume must be finite (no inf)", column=c)
    o, h, lo, c_ = (df[k].to_numpy(dtype=float) for k in PRICE_COLUMNS)
    _raise_for_mask(df, ~(c_ > 0), "close_positive", "close must be > 0", column="close")
    _raise_for_mask(df, ~((o > 0) & (h > 0) & (lo > 0)), "price_positive", "open, high and low must be > 0")
    _raise_for_mask(
        df, lo > np.minimum(o, c_) * (1 + _OHLC_RTOL), "low_le_open_close", "low must be <= min(open, close)"
    )
    _raise_for_mask(
        df, h < np.maximum(o, c_) * (1 - _OHLC_RTOL), "high_ge_open_close", "high must be >= max(open, close)"
    )
    _raise_for_mask(
        df,
        df["volume"].to_numpy(dtype=float) < 0,
        "volume_nonnegative",
        "volume must be >= 0",
        column="volume",
    )
    _raise_for_mask(
        df, ~np.is_busday(days), "trading_day", "dates must be trading days (Monday to Friday)", column="date"
    )
    limit = today_date(today)
    _raise_for_mask(
        df,
        days > limit.to_datetime64().astype("datetime64[D]"),
        "future_date",
        f"dates must not be after today ({limit:%Y-%m-%d})",
        column="date",
    )
    # fundamentals may be NaN or negative (losses give negative P/E): no rule beyond numeric type
    return df


def _is_number(v: object) -> bool:
    return v is None or (isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_))


def _raise_type(df: pd.DataFrame, mask: np.ndarray, rule: str, detail: str, column: str) -> None:
    """Raise for a dtype rule, naming the first rows whose values have the wrong type where there are any."""
    _raise_for_mask(df, mask, rule, detail, column=column)
    raise DataValidationError(rule, detail, column=column)


# ----------------------------------------------------------------------------------------------
# Cleaning: explicit, opt-in, and reported
# ----------------------------------------------------------------------------------------------


@dataclass
class CleaningAction:
    rule: str
    ticker: str
    date: pd.Timestamp | None  # None for table-wide actions (re-sorting)
    action: str  # 'dropped', 'repaired', 'sorted', ...
    detail: str = ""


@dataclass
class Finding:
    """Something suspicious that cleaning reports but does not change (a human should look)."""

    kind: str
    ticker: str
    date: pd.Timestamp | None
    detail: str


@dataclass
class CleaningReport:
    mode: str
    rows_in: int = 0
    rows_out: int = 0
    actions: list[CleaningAction] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def actions_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [a.__dict__ for a in self.actions], columns=["rule", "ticker", "date", "action", "detail"]
        )

    def findings_frame(self) -> pd.DataFrame:
        return pd.DataFrame([f.__dict__ for f in self.findings], columns=["kind", "ticker", "date", "detail"])

    def summary(self) -> str:
        lines = [f"cleaning mode={self.mode}: {self.rows_in} rows in, {self.rows_out} rows out"]
        act = self.actions_frame()
        if len(act):
            for (rule, action), g in act.groupby(["rule", "action"], sort=True):
                ex = ", ".join(
                    f"{t}{' ' + _fmt_date(d) if d is not None and not pd.isna(d) else ''}"
                    for t, d in zip(g["ticker"].head(4), g["date"].head(4), strict=False)
                )
                lines.append(f"  {action:9s} {len(g):5d} rows  [{rule}]  e.g. {ex}")
        else:
            lines.append("  no rows changed")
        fnd = self.findings_frame()
        if len(fnd):
            lines.append("findings (reported, not changed):")
            for kind, g in fnd.groupby("kind", sort=True):
                ex = "; ".join(
                    f"{t}{' ' + _fmt_date(d) if d is not None and not pd.isna(d) else ''}"
                    for t, d in zip(g["ticker"].head(6), g["date"].head(6), strict=False)
                )
                lines.append(f"  {kind:22s} {len(g):5d}  e.g. {ex}")
        return "\n".join(lines)


def clean(
    df: pd.DataFrame,
    mode: Literal["drop", "repair"] = "repair",
    *,
    spike_threshold: float = 0.25,
    jump_threshold: float = 0.40,
    short_history: int = 252,
    today: date | str | pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Make a real-world frame satisfy the contract, saying what was done.

    ``mode='drop'`` drops every offending row; ``mode='repair'`` repairs what can be repaired from
    information available on that day or before (a NaN open becomes the previous close; an
    inconsistent high/low is widened to include open and close) and drops the rest (NaN or
    non-positive close, negative volume, duplicate keys: the first row of a duplicate is kept).
    Both modes drop rows with an infinite price or volume, rows dated on a weekend and rows dated
    after ``today`` (see :func:`validate`): no value of such a row can be trusted. Repairs never use
    a later row, so cleaning keeps point-in-time correctness. Dates that are not calendar dates
    (a time of day, a time zone) are a format problem, not a row problem: :func:`coerce` refuses them.
    A table with no rows, or none left after cleaning, raises DataValidationError('empty'): an
    empty table does not satisfy the contract.

    Suspicious but valid rows are reported as findings and left as they are: one-day spikes that
    revert the next day (possible bad prints), large jumps (possible unadjusted splits or
    spin-offs), missing trading days inside a ticker's range, and short histories (fewer than
    ``short_history`` rows, or starting later or ending earlier than the table). Flagging a day uses
    data up to the next day at most.
    """
    if mode not in ("drop", "repair"):
        raise ValueError(f"cleaning mode must be 'drop' or 'repair', got {mode!r}")
    report = CleaningReport(mode=mode, rows_in=len(df))
    out = coerce(df)
    if len(out) == 0:
        raise DataValidationError("empty", "the table has no rows: nothing to clean")
    bad_key = out["ticker"].isna() | out["date"].isna()
    if bad_key.any():
        for t, d in out.loc[bad_key, ["ticker", "date"]].itertuples(index=False):
            report.actions.append(
                CleaningAction("key_null", "<null>" if pd.isna(t) else str(t), d, "dropped")
            )
        out = out.loc[~bad_key]

    order = out.sort_values(["ticker", "date"], kind="mergesort")
    if not order.index.equals(out.index):
        report.actions.append(
            CleaningAction("sort_order", "*", None, "sorted", "rows re-sorted by (ticker, date)")
        )
    out = order.reset_index(drop=True)

    def _drop(mask: np.ndarray, rule: str, detail: str = "") -> None:
        nonlocal out
        if mask.any():
            for t, d in out.loc[mask, ["ticker", "date"]].itertuples(index=False):
                report.actions.append(CleaningAction(rule, t, d, "dropped", detail))
            out = out.loc[~mask].reset_index(drop=True)

    _drop(out.duplicated(["ticker", "date"], keep="first").to_numpy(), "duplicate_key", "kept the first row")
    _drop(~np.is_busday(out["date"].to_numpy(dtype="datetime64[D]")), "trading_day", "weekend date")
    limit = today_date(today)
    _drop(
        out["date"].to_numpy(dtype="datetime64[ns]") > limit.to_datetime64(),
        "future_date",
        f"date after today ({limit:%Y-%m-%d})",
    )
    inf = np.zeros(len(out), dtype=bool)
    for col in FINITE_COLUMNS:
        if col in out.columns:
            inf |= np.isinf(out[col].to_numpy(dtype=float))
    _drop(inf, "finite_value", "inf in a price or volume column")
    close = out["close"].to_numpy(dtype=float)
    _drop(~(close > 0), "close_positive", "close NaN or <= 0")
    _drop(out["volume"].isna().to_numpy() | (out["volume"].to_numpy(dtype=float) < 0), "volume_nonnegative")

    o = out["open"].to_numpy(dtype=float)
    nan_ohl = np.isnan(o) | out["high"].isna().to_numpy() | out["low"].isna().to_numpy()
    if mode == "drop":
        _drop(nan_ohl, "missing_value", "open/high/low NaN")
        o = out["open"].to_numpy(dtype=float)
        nonpos = (o <= 0) | (out["high"].to_numpy(dtype=float) <= 0) | (out["low"].to_numpy(dtype=float) <= 0)
        _drop(nonpos, "price_positive", "open/high/low <= 0")
    else:
        prev_close = out.groupby("ticker", sort=False)["close"].shift(1)
        fix_open = np.isnan(o) | (o <= 0)
        new_open = np.where(fix_open, prev_close.fillna(out["close"]).to_numpy(), o)
        c = out["close"].to_numpy(dtype=float)
        h = out["high"].to_numpy(dtype=float)
        lo = out["low"].to_numpy(dtype=float)
        fix_h = np.isnan(h) | (h <= 0)
        fix_l = np.isnan(lo) | (lo <= 0)
        new_h = np.where(fix_h, np.maximum(new_open, c), h)
        new_l = np.where(fix_l, np.minimum(new_open, c), lo)
        # a filled-in open may lie outside a valid high-low range: widen it as part of the same repair
        new_h = np.where(fix_open, np.maximum(new_h, new_open), new_h)
        new_l = np.where(fix_open, np.minimum(new_l, new_open), new_l)
        fixed = fix_open | fix_h | fix_l
        rules = np.where(nan_ohl, "missing_value", "price_positive")
        for t, d, rule in zip(out.loc[fixed, "ticker"], out.loc[fixed, "date"], rules[fixed], strict=True):
            report.actions.append(
                CleaningAction(
                    str(rule),
                    t,
                    d,
                    "repaired",
                    "open := previous close; missing high/low := max/min(open, close)",
                )
            )
        out["open"], out["high"], out["low"] = new_open, new_h, new_l

    o, h, lo, c = (out[k].to_numpy(dtype=float) for k in PRICE_COLUMNS)
    bad_low = lo > np.minimum(o, c) * (1 + _OHLC_RTOL)
    bad_high = h < np.maximum(o, c) * (1 - _OHLC_RTOL)
    bad = bad_low | bad_high
    if mode == "drop":
        _drop(bad, "ohlc_consistency", "low > min(open, close) or high < max(open, close)")
    elif bad.any():
        for t, d in out.loc[bad, ["ticker", "date"]].itertuples(index=False):
            report.actions.append(
                CleaningAction(
                    "ohlc_consistency", t, d, "repaired", "high/low widened to include open and close"
                )
            )
        out["high"] = np.where(bad, np.maximum.reduce([h, o, c]), h)
        out["low"] = np.where(bad, np.minimum.reduce([lo, o, c]), lo)

    if len(out) == 0:
        dropped = report.actions_frame().groupby("rule").size()
        raise DataValidationError(
            "empty",
            f"all {report.rows_in} rows were dropped by cleaning ("
            + ", ".join(f"{rule} {n}" for rule, n in dropped.items())
            + ")",
        )
    _add_findings(out, report, spike_threshold, jump_threshold, short_history)
    report.rows_out = len(out)
    validate(out, today=limit)
    logger.info(
        "cleaned %d -> %d rows (%d actions, %d findings)",
        report.rows_in,
        report.rows_out,
        len(report.actions),
        len(report.findings),
    )
    return out, report


def _add_findings(
    df: pd.DataFrame, report: CleaningReport, spike: float, jump: float, short_history: int
) -> None:
    logc = np.log(df["close"].to_numpy(dtype=float))
    g = df["ticker"].to_numpy()
    first = np.r_[True, g[1:] != g[:-1]]
    last = np.r_[g[1:] != g[:-1], True]
    r = np.r_[np.nan, np.diff(logc)]
    r[first] = np.nan
    r_next = np.r_[r[1:], np.nan]
    r_next[last] = np.nan
    # one-day spike that reverts the next day: |r_t| large and r_{t+1} undoes most of it
    spike_mask = (np.abs(r) > np.log1p(spike)) & (np.abs(r + r_next) < 0.25 * np.abs(r))
    for t, d, x in zip(df.loc[spike_mask, "ticker"], df.loc[spike_mask, "date"], r[spike_mask], strict=True):
        report.findings.append(
            Finding("suspect_bad_print", t, d, f"close moved {np.expm1(x):+.0%} and reverted next day")
        )
    jump_mask = (np.abs(r) > np.log1p(jump)) & ~spike_mask & ~np.r_[False, spike_mask[:-1]]
    for t, d, x in zip(df.loc[jump_mask, "ticker"], df.loc[jump_mask, "date"], r[jump_mask], strict=True):
        report.findings.append(
            Finding(
                "large_jump", t, d, f"close moved {np.expm1(x):+.0%} (unadjusted split/spin-off or real move)"
            )
        )
    calendar = pd.DatetimeIndex(np.sort(df["date"].unique()))
    pos = pd.Series(calendar.get_indexer(pd.DatetimeIndex(df["date"])), index=df.index)
    gaps = pos.groupby(df["ticker"].to_numpy(), sort=False).diff().to_numpy() - 1
    for t, d, n in zip(df.loc[gaps > 0, "ticker"], df.loc[gaps > 0, "date"], gaps[gaps > 0], strict=True):
        report.findings.append(
            Finding("missing_days", t, d, f"{int(n)} trading days missing before this date")
        )
    # short history: fewer than `short_history` rows, or listed later / ended earlier than the table
    span = df.groupby("ticker", sort=True)["date"].agg(["size", "min", "max"])
    t0, t1 = df["date"].min(), df["date"].max()
    short = (span["size"] < short_history) | (span["min"] > t0) | (span["max"] < t1)
    for t, n, d0, d1 in span[short].itertuples():
        report.findings.append(
            Finding(
                "short_history",
                str(t),
                d0,
                f"only {int(n)} rows, {_fmt_date(d0)}..{_fmt_date(d1)} (table {_fmt_date(t0)}..{_fmt_date(t1)})",
            )
        )
