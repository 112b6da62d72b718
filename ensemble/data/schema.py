"""The data contract: one long table sorted by (ticker, date), validated with one clear error per rule.

Every loader returns this table and calls :func:`validate`. A violation raises
:class:`DataValidationError` naming the rule, the ticker and the first offending dates. Nothing is
dropped silently: :func:`clean` repairs or drops rows only when asked, and returns a
:class:`CleaningReport` that says exactly which rows it touched and what else it noticed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

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

# Relative slack for OHLC ordering checks (prices rounded to cents by vendors).
_OHLC_RTOL = 1e-9
_MAX_DATES_IN_MESSAGE = 3


class DataValidationError(ValueError):
    """A contract rule is violated. Carries the rule, the first offending ticker and its first dates."""

    def __init__(
        self,
        rule: str,
        detail: str,
        ticker: str | None = None,
        dates: list[pd.Timestamp] | None = None,
        n_rows: int = 0,
        n_tickers: int = 0,
    ) -> None:
        self.rule = rule
        self.ticker = ticker
        self.dates = list(dates or [])
        self.n_rows = n_rows
        self.n_tickers = n_tickers
        where = ""
        if ticker is not None:
            shown = ", ".join(_fmt_date(d) for d in self.dates[:_MAX_DATES_IN_MESSAGE])
            where = f"; ticker {ticker!r}"
            if shown:
                where += f", first dates {shown}"
            if n_rows:
                where += f" ({n_rows} offending rows in all"
                where += f", {n_tickers} tickers)" if n_tickers > 1 else ")"
        super().__init__(f"data contract rule '{rule}' violated: {detail}{where}")


def _fmt_date(d: object) -> str:
    try:
        return pd.Timestamp(d).strftime("%Y-%m-%d")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return str(d)


def _raise_for_mask(df: pd.DataFrame, mask: np.ndarray | pd.Series, rule: str, detail: str) -> None:
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return
    bad = df.loc[mask, ["ticker", "date"]]
    first_ticker = bad["ticker"].iloc[0]
    dates = bad.loc[bad["ticker"] == first_ticker, "date"].head(_MAX_DATES_IN_MESSAGE).tolist()
    raise DataValidationError(
        rule,
        detail,
        ticker=None if pd.isna(first_ticker) else str(first_ticker),
        dates=dates,
        n_rows=int(mask.sum()),
        n_tickers=int(bad["ticker"].nunique(dropna=False)),
    )


def coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Bring a raw frame to the contract's dtypes (no rows changed): datetime dates, str tickers, floats.

    Raises DataValidationError('missing_columns' / 'date_type' / 'numeric_type') where it cannot.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            "missing_columns", f"required columns {missing} are absent (have {list(df.columns)})"
        )
    out = df.copy()
    if not pd.api.types.is_datetime64_any_dtype(out["date"]):
        parsed = pd.to_datetime(out["date"], errors="coerce")
        _raise_for_mask(
            out, parsed.isna() & out["date"].notna(), "date_type", "date values that do not parse as dates"
        )
        out["date"] = parsed
    if getattr(out["date"].dt, "tz", None) is not None:
        out["date"] = out["date"].dt.tz_convert(None)
    out["date"] = out["date"].astype("datetime64[ns]")
    out["ticker"] = out["ticker"].astype(object).where(out["ticker"].notna(), None)
    out["ticker"] = out["ticker"].map(lambda t: t if t is None else str(t))
    for c in NUMERIC_COLUMNS:
        if c in out.columns and not pd.api.types.is_float_dtype(out[c]):
            conv = pd.to_numeric(out[c], errors="coerce")
            _raise_for_mask(out, conv.isna() & out[c].notna(), "numeric_type", f"column {c!r} is not numeric")
            out[c] = conv.astype("float64")
    if "sector" in out.columns:
        out["sector"] = out["sector"].astype(object)
    return out


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check every contract rule; return the frame unchanged or raise DataValidationError for the first rule broken.

    Rules, in order: missing_columns, empty, key_null, date_type, numeric_type, duplicate_key,
    sort_order, missing_value, close_positive, price_positive, low_le_open_close, high_ge_open_close,
    volume_nonnegative.
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
        _raise_type(df, not_dt, "date_type", f"column 'date' must be datetime64, got {df['date'].dtype}")
    for c in NUMERIC_COLUMNS:
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c]):
            not_num = ~df[c].map(_is_number).to_numpy(dtype=bool)
            _raise_type(df, not_num, "numeric_type", f"column {c!r} must be numeric, got {df[c].dtype}")

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
        _raise_for_mask(df, df[c].isna().to_numpy(), "missing_value", f"column {c!r} must not be NaN")
    o, h, lo, c_ = (df[k].to_numpy(dtype=float) for k in PRICE_COLUMNS)
    _raise_for_mask(df, ~(c_ > 0), "close_positive", "close must be > 0")
    _raise_for_mask(df, ~((o > 0) & (h > 0) & (lo > 0)), "price_positive", "open, high and low must be > 0")
    _raise_for_mask(
        df, lo > np.minimum(o, c_) * (1 + _OHLC_RTOL), "low_le_open_close", "low must be <= min(open, close)"
    )
    _raise_for_mask(
        df, h < np.maximum(o, c_) * (1 - _OHLC_RTOL), "high_ge_open_close", "high must be >= max(open, close)"
    )
    _raise_for_mask(df, df["volume"].to_numpy(dtype=float) < 0, "volume_nonnegative", "volume must be >= 0")
    # fundamentals may be NaN or negative (losses give negative P/E): no rule beyond numeric type
    return df


def _is_number(v: object) -> bool:
    return v is None or (isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_))


def _raise_type(df: pd.DataFrame, mask: np.ndarray, rule: str, detail: str) -> None:
    """Raise for a dtype rule, naming the first rows whose values have the wrong type where there are any."""
    _raise_for_mask(df, mask, rule, detail)
    raise DataValidationError(rule, detail)


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
) -> tuple[pd.DataFrame, CleaningReport]:
    """Make a real-world frame satisfy the contract, saying what was done.

    ``mode='drop'`` drops every offending row; ``mode='repair'`` repairs what can be repaired from
    information available on that day or before (a NaN open becomes the previous close; an
    inconsistent high/low is widened to include open and close) and drops the rest (NaN or
    non-positive close, negative volume, duplicate keys: the first row of a duplicate is kept).
    Repairs never use a later row, so cleaning keeps point-in-time correctness.

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

    _add_findings(out, report, spike_threshold, jump_threshold, short_history)
    report.rows_out = len(out)
    validate(out)
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
