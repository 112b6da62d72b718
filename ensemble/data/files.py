"""File source: the contract table from Parquet or CSV (pyarrow), and back.

:func:`load_file` maps common column spellings onto the contract's names, optionally joins a
ticker -> sector CSV, then either validates strictly (``clean="none"``: a violation raises
:class:`~ensemble.data.schema.DataValidationError`) or cleans with :func:`~ensemble.data.schema.clean`
and returns its report. Rows are never reordered or dropped unless cleaning was asked for.

A file that is not what its suffix says (binary data in a CSV, a corrupt Parquet file), a value of
the wrong type or a date that is not a calendar date raises ``DataValidationError`` whose one-line
message names the file, the column as the file spells it, the first bad data row (1-based, header
not counted) and its value.
"""

from __future__ import annotations

import codecs
import csv
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ensemble.data import schema

logger = logging.getLogger(__name__)

CleanMode = Literal["none", "drop", "repair"]

PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
CSV_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz")
_MAX_NAMES_IN_LOG = 10
_TEXT_COLUMNS: tuple[str, ...] = ("date", "ticker", "sector")
_SNIFF_BYTES = 1 << 16
_MAX_ARROW_MESSAGE = 200

# Accepted spellings per contract column, compared after _norm (case, spaces, '_', '-', '.', '/'
# removed); the contract's own name always wins over an alias when a file has both.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("date", "datetime", "timestamp", "tradedate", "tradingday"),
    "ticker": ("ticker", "symbol", "name", "tickersymbol", "tic"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume", "vol"),
    "adj_close": ("adjclose", "adjustedclose"),
    "pe": ("pe", "peratio", "priceearnings"),
    "pb": ("pb", "pbratio", "pricebook"),
    "market_cap": ("marketcap", "mktcap"),
    "dividend_yield": ("dividendyield", "divyield"),
    "sector": ("sector", "gicssector"),
    "sentiment": ("sentiment",),
}
_SECTOR_FILE_ALIASES: dict[str, tuple[str, ...]] = {
    "ticker": ("ticker", "symbol"),  # not "name": sector files carry the company name there
    "sector": ("sector", "gicssector"),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-./]+", "", name.strip().lower())


def map_columns(
    names: Sequence[str], aliases: dict[str, tuple[str, ...]] = COLUMN_ALIASES
) -> tuple[dict[str, str], list[str]]:
    """Map source column names to contract names: ``({source: contract}, [ignored sources])``."""
    by_norm: dict[str, str] = {}
    for n in names:
        by_norm.setdefault(_norm(n), n)  # first spelling of a duplicate wins
    rename: dict[str, str] = {}
    for canon, spellings in aliases.items():
        for s in (_norm(canon), *spellings):
            src = by_norm.get(s)
            if src is not None and src not in rename:
                rename[src] = canon
                break
    return rename, [n for n in names if n not in rename]


def _kind(path: Path) -> Literal["parquet", "csv"]:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise ValueError(
        f"unsupported data file type for {str(path)!r}: expected one of {PARQUET_SUFFIXES + CSV_SUFFIXES}"
    )


def _existing(path: str | Path, what: str = "data file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {str(p)!r}")
    return p


def _format_error(path: Path, what: str, exc: BaseException | None = None) -> schema.DataValidationError:
    """A 'file_format' contract error naming the file, with the reader's message on one line."""
    detail = what
    if exc is not None:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if len(msg) > _MAX_ARROW_MESSAGE:
            msg = msg[:_MAX_ARROW_MESSAGE] + "..."
        detail += f" ({msg})"
    return schema.DataValidationError("file_format", detail, path=str(path))


def _csv_header(path: Path) -> list[str]:
    """The header of a text CSV; a file with binary content or that is not UTF-8 is refused."""
    head = b""
    try:
        with pa.input_stream(str(path), compression="detect") as f:
            while b"\n" not in head and (chunk := f.read(_SNIFF_BYTES)):
                head += chunk
            sniff = head + f.read(max(0, _SNIFF_BYTES - len(head)))
    except (pa.ArrowInvalid, OSError) as exc:  # e.g. a corrupt .csv.gz
        raise _format_error(path, "is not a readable CSV file", exc) from None
    try:
        # final=False: a character cut in two at the end of the sniffed bytes is not an error
        codecs.getincrementaldecoder("utf-8")().decode(sniff, final=False)
    except UnicodeDecodeError:
        raise _format_error(path, "is not a text CSV file (it is binary or not UTF-8)") from None
    if b"\x00" in sniff:
        raise _format_error(path, "is not a text CSV file (it holds NUL bytes: binary data)")
    first = head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    return next(csv.reader([first]), [])


def _read_csv(path: Path, rename: dict[str, str]) -> pa.Table:
    """The mapped columns of a CSV: numbers as float64 (pyarrow's usual null spellings are NaN);
    tickers, sectors and dates as text, where only an empty cell is missing (a ticker "NA" stays
    "NA"); dates are parsed by ``schema.coerce``, so no digit string is taken for a number."""
    types = {s: pa.string() if c in _TEXT_COLUMNS else pa.float64() for s, c in rename.items()}
    convert = pacsv.ConvertOptions(include_columns=list(rename), column_types=types)
    try:
        tbl = pacsv.read_csv(str(path), convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _csv_problem(path, rename, exc) from None
    for i, name in enumerate(tbl.column_names):
        if rename[name] in _TEXT_COLUMNS:
            col = tbl.column(i)
            tbl = tbl.set_column(i, name, pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col))
    return tbl


def _first_non_number(values: pa.Array) -> int | None:
    """Position of the first value pyarrow cannot read as a float (nulls are fine), else None.

    Bisects with pyarrow's own cast, so "bad" means exactly what the CSV reader refused."""

    def ok(a: pa.Array) -> bool:
        try:
            pc.cast(pc.utf8_trim_whitespace(a), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
        return True

    if ok(values):
        return None
    lo, hi = 0, len(values)  # values[lo:hi] holds a bad value
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(values.slice(lo, mid - lo)):
            lo = mid
        else:
            hi = mid
    return lo


def _csv_problem(path: Path, rename: dict[str, str], exc: BaseException) -> schema.DataValidationError:
    """The contract error for a CSV that pyarrow refused: the first non-numeric cell of a numeric
    column (file, column, data row, value, ticker) or, for a CSV that does not parse, the reason."""
    numeric = [s for s, c in rename.items() if c not in _TEXT_COLUMNS]
    convert = pacsv.ConvertOptions(
        include_columns=list(rename),
        column_types=dict.fromkeys(rename, pa.string()),
        strings_can_be_null=True,  # pyarrow's null spellings ("", "NA", "null", ...) are missing values
    )
    try:
        raw = pacsv.read_csv(str(path), convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc2:
        return _format_error(path, "is not a readable CSV file", exc2)
    found: list[tuple[int, str]] = []
    for src in numeric:
        pos = _first_non_number(raw.column(src).combine_chunks())
        if pos is not None:
            found.append((pos, src))
    if not found:
        return _format_error(path, "is not a readable CSV file", exc)
    pos, src = min(found, key=lambda f: (f[0], numeric.index(f[1])))
    tick = next((s for s, c in rename.items() if c == "ticker"), None)
    ticker = None if tick is None else raw.column(tick)[pos].as_py()
    return schema.DataValidationError(
        "numeric_type",
        "values of a numeric column must be numbers",
        ticker=ticker,
        column=src,
        row=pos,
        value=raw.column(src)[pos].as_py(),
        path=str(path),
    )


def _pushdown(
    arrow_schema: pa.Schema,
    ticker_col: str,
    date_col: str,
    tickers: list[str] | None,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
) -> tuple[pc.Expression | None, bool, bool]:
    """A Parquet row filter for what can be pushed down: (expression, tickers pushed, dates pushed)."""
    exprs: list[pc.Expression] = []
    t_type = arrow_schema.field(ticker_col).type
    push_t = tickers is not None and (
        pa.types.is_string(t_type) or pa.types.is_large_string(t_type) or pa.types.is_string_view(t_type)
    )
    if push_t:
        exprs.append(pc.field(ticker_col).isin(pa.array(tickers, type=t_type)))
    d_type = arrow_schema.field(date_col).type
    push_d = (start is not None or end is not None) and (
        (pa.types.is_timestamp(d_type) and d_type.tz is None) or pa.types.is_date(d_type)
    )
    if push_d:
        for bound, op in ((start, "ge"), (end, "le")):
            if bound is None:
                continue
            value = bound.date() if pa.types.is_date(d_type) else bound.to_pydatetime()
            scalar = pa.scalar(value, type=d_type)
            exprs.append(pc.field(date_col) >= scalar if op == "ge" else pc.field(date_col) <= scalar)
    expr = None
    for e in exprs:
        expr = e if expr is None else expr & e
    return expr, push_t, push_d


def _sectors(path: str | Path) -> pd.Series:
    """ticker -> sector from a CSV with (case-insensitive) ticker/symbol and sector columns."""
    p = _existing(path, "sector file")
    if _kind(p) != "csv":
        raise ValueError(f"sector file must be a CSV: {str(p)!r}")
    header = _csv_header(p)
    rename, _ = map_columns(header, _SECTOR_FILE_ALIASES)
    if sorted(rename.values()) != ["sector", "ticker"]:
        raise ValueError(f"sector file {str(p)!r} needs columns 'ticker' and 'sector' (have {header})")
    tbl = _read_csv(p, rename)
    df = tbl.rename_columns([rename[c] for c in tbl.column_names]).to_pandas()
    df = df.dropna(subset=["ticker"]).drop_duplicates()
    dup = df["ticker"][df["ticker"].duplicated()]
    if len(dup):
        raise ValueError(f"sector file {str(p)!r} gives more than one sector for {sorted(set(dup))[:10]}")
    return pd.Series(df["sector"].to_numpy(dtype=object), index=df["ticker"].astype(str).to_numpy())


def _names(items: Iterable[object]) -> str:
    items = list(items)
    more = f" ... (+{len(items) - _MAX_NAMES_IN_LOG} more)" if len(items) > _MAX_NAMES_IN_LOG else ""
    return ", ".join(map(str, items[:_MAX_NAMES_IN_LOG])) + more


def load_file(
    path: str | Path,
    *,
    sectors_path: str | Path | None = None,
    clean: CleanMode = "none",
    tickers: Sequence[str] | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, schema.CleaningReport | None]:
    """The contract table from a Parquet or CSV file, validated (``clean="none"``) or cleaned.

    ``tickers`` and the inclusive date range [start, end] select rows (pushed down into the Parquet
    reader where the column types allow). Columns outside the contract are left out (logged).
    With ``sectors_path`` (a CSV with ticker and sector columns) the sector column comes from that
    file; tickers it lacks get NaN (logged). ``clean="drop"``/``"repair"`` run
    :func:`schema.clean` and return its report; ``"none"`` returns ``None`` as the report and
    raises ``DataValidationError`` for the first contract rule broken.
    """
    if clean not in ("none", "drop", "repair"):
        raise ValueError(f"clean must be 'none', 'drop' or 'repair', got {clean!r}")
    if isinstance(tickers, str):
        raise TypeError("tickers must be a list of strings, not a single string")
    p = _existing(path)
    kind = _kind(p)
    where = _Where()
    try:
        return _load(p, kind, where, sectors_path, clean, tickers, start, end)
    except schema.DataValidationError as exc:
        if exc.path is not None:  # already names its file (this one, or the sectors file)
            raise
        raise exc.located(str(p), where.rows, where.columns) from None


@dataclass
class _Where:
    """What a contract error needs to point into the file: the file's data row of each table row
    (None where a pushed-down filter or cleaning lost it) and each contract column's name in the file."""

    rows: np.ndarray | None = None
    columns: dict[str, str] = field(default_factory=dict)


def _load(
    p: Path,
    kind: Literal["parquet", "csv"],
    where: _Where,
    sectors_path: str | Path | None,
    clean: CleanMode,
    tickers: Sequence[str] | None,
    start: str | pd.Timestamp | None,
    end: str | pd.Timestamp | None,
) -> tuple[pd.DataFrame, schema.CleaningReport | None]:
    want = None if tickers is None else [str(t) for t in tickers]
    t0 = None if start is None else pd.Timestamp(start)
    t1 = None if end is None else pd.Timestamp(end)

    arrow_schema = None
    if kind == "parquet":
        try:
            arrow_schema = pq.read_schema(p)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _format_error(p, "is not a readable Parquet file", exc) from None
    names = arrow_schema.names if arrow_schema is not None else _csv_header(p)
    rename, ignored = map_columns(names)
    if sectors_path is not None and "sector" in rename.values():
        src = next(s for s, c in rename.items() if c == "sector")
        del rename[src]
        logger.info("%s: column %r replaced by the sectors from %s", p, src, sectors_path)
    if ignored:
        logger.info("%s: ignored %d columns outside the data contract: %s", p, len(ignored), _names(ignored))
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in rename.values()]
    if missing:
        raise schema.DataValidationError("missing_columns", f"lacks required columns {missing} (has {names})")
    src_of = {c: s for s, c in rename.items()}
    where.columns = src_of

    pushed_t = pushed_d = False
    if arrow_schema is not None:
        expr, pushed_t, pushed_d = _pushdown(arrow_schema, src_of["ticker"], src_of["date"], want, t0, t1)
        try:
            tbl = pq.read_table(p, columns=list(rename), filters=expr)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise _format_error(p, "is not a readable Parquet file", exc) from None
    else:
        tbl = _read_csv(p, rename)
    df = tbl.rename_columns([rename[c] for c in tbl.column_names]).to_pandas()
    # a pushed-down filter skips rows unseen, so table positions are file rows only without one
    where.rows = None if pushed_t or pushed_d else np.arange(len(df))
    df = schema.coerce(df)

    keep = pd.Series(True, index=df.index)
    if want is not None and not pushed_t:
        keep &= df["ticker"].isin(want)
    if not pushed_d:
        if t0 is not None:
            keep &= df["date"] >= t0
        if t1 is not None:
            keep &= df["date"] <= t1
    if not keep.all():
        df = df.loc[keep].reset_index(drop=True)
        if where.rows is not None:
            where.rows = where.rows[keep.to_numpy()]
    if want is not None:
        absent = sorted(set(want) - set(df["ticker"].unique()))
        if absent:
            logger.warning("%s: %d requested tickers not found: %s", p, len(absent), _names(absent))

    if sectors_path is not None:
        sector = _sectors(sectors_path)
        df["sector"] = df["ticker"].map(sector).astype(object)
        lacking = sorted(df.loc[df["sector"].isna(), "ticker"].dropna().unique())
        if lacking:
            logger.warning(
                "%s: %d tickers have no sector in %s (sector NaN): %s",
                p,
                len(lacking),
                sectors_path,
                _names(lacking),
            )
    df = df[[c for c in schema.ALL_COLUMNS if c in df.columns]]

    if clean == "none":
        return schema.validate(df), None
    where.rows = None  # cleaning sorts and drops rows: its errors name ticker and dates instead
    return schema.clean(df, mode=clean)


def save_file(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate ``df`` and write its contract columns to Parquet (zstd) or CSV, chosen by suffix."""
    p = Path(path)
    kind = _kind(p)
    schema.validate(df)
    cols = [c for c in schema.ALL_COLUMNS if c in df.columns]
    extra = [c for c in df.columns if c not in cols]
    if extra:
        logger.info("%s: not writing %d columns outside the data contract: %s", p, len(extra), _names(extra))
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        pq.write_table(pa.Table.from_pandas(df[cols], preserve_index=False), p, compression="zstd")
    else:
        df[cols].to_csv(p, index=False)
    logger.info("wrote %d rows to %s", len(df), p)
    return p
