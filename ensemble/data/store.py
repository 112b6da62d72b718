"""PostgreSQL price store: the contract table in a ``prices`` table keyed by (ticker, date).

Writes validate first, bulk-load with COPY into a temporary staging table and upsert from there in
one transaction, so re-ingesting a file changes nothing and a failure leaves the table as it was.
Into an empty table (checked under a lock that queues concurrent writers) the rows are COPYed
straight in: validated keys are unique, so no row can conflict and the merge would be pure cost.
Creating the table and writing take a transaction-scoped advisory lock on the table's name first, so
two first writers into a table that does not exist yet queue instead of both running CREATE TABLE
(concurrent ``CREATE TABLE IF NOT EXISTS`` is not safe in PostgreSQL: one fails on a catalog key).
Reads stream ``COPY (SELECT ...) TO STDOUT`` through pyarrow's CSV reader. All SQL is built with
``psycopg2.sql`` (identifiers) and bound parameters (values); no value is ever pasted into SQL text.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extensions import cursor as PgCursor
from psycopg2.extensions import make_dsn, parse_dsn

from ensemble.config import PostgresConfig
from ensemble.data import schema

logger = logging.getLogger(__name__)

TEXT_COLUMNS: tuple[str, ...] = ("ticker", "sector")
KEY_COLUMNS: tuple[str, ...] = ("ticker", "date")
_MAX_IDENTIFIER = 63 - len("_date_idx")
DEFAULT_CHUNK_ROWS = 100_000
_COPY_READ_SIZE = 1 << 16


def _sql_type(col: str) -> str:
    if col == "date":
        return "DATE"
    if col in TEXT_COLUMNS:
        return "TEXT"
    return "DOUBLE PRECISION"


def _arrow_type(col: str) -> pa.DataType:
    if col == "date":
        return pa.date32()
    if col in TEXT_COLUMNS:
        return pa.string()
    return pa.float64()


@lru_cache(maxsize=1)
def _contract_dtypes() -> dict[str, Any]:
    """The dtype ``schema.coerce`` gives each contract column (read from a one-row frame)."""
    row: dict[str, Any] = {c: [1.0] for c in schema.ALL_COLUMNS}
    row.update(date=[pd.Timestamp("2020-01-02")], ticker=["A"], sector=["S"])
    return {str(c): t for c, t in schema.coerce(pd.DataFrame(row)).dtypes.items()}


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by '***' (for logs and error messages)."""
    try:
        parts = parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return "<unparseable DSN>"
    if "password" in parts:
        parts["password"] = "***"
    return make_dsn(**parts)


def check_table_name(table: str) -> str:
    """A plain lower-case ASCII identifier, else ValueError (the name is never trusted as SQL)."""
    if (
        not isinstance(table, str)
        or not table.isascii()
        or not table.isidentifier()
        or len(table) > _MAX_IDENTIFIER
    ):
        raise ValueError(
            f"table name must be a plain ASCII SQL identifier of at most {_MAX_IDENTIFIER} characters, got {table!r}"
        )
    return table.lower()


@contextmanager
def pg_transaction(dsn: str) -> Iterator[PgConnection]:
    """A PostgreSQL connection whose transaction commits on success and rolls back on any exception,
    closed afterwards; floats round-trip bit for bit (shortest exact float text, PostgreSQL >= 12); a
    failed connect is a ConnectionError naming the server (password redacted). Every store uses it."""
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.OperationalError as exc:
        raise ConnectionError(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {str(exc).strip()}"
        ) from None
    try:
        with conn:  # commit / rollback
            with conn.cursor() as cur:
                cur.execute("SET extra_float_digits = 1")
            yield conn
    finally:
        conn.close()


class PriceStore:
    """The contract table in PostgreSQL.

    ``dsn`` defaults to the environment variable named by ``PostgresConfig.dsn_env``
    (``ENSEMBLE_PG_DSN``). The table name must be a plain identifier; it is always quoted with
    ``sql.Identifier``. Each call opens its own short-lived connection.
    """

    def __init__(
        self, dsn: str | None = None, table: str = "prices", chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> None:
        cfg = PostgresConfig()
        dsn = dsn or cfg.dsn()
        if not dsn:
            raise ValueError(f"no PostgreSQL DSN: pass one or set the environment variable {cfg.dsn_env}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self._dsn = dsn
        self.table = check_table_name(table)
        self.chunk_rows = chunk_rows
        self._ident = sql.Identifier(self.table)

    def __repr__(self) -> str:
        return f"PriceStore({redact_dsn(self._dsn)!r}, table={self.table!r})"

    @contextmanager
    def _connect(self) -> Iterator[PgConnection]:
        """:func:`pg_transaction`; a missing table is a LookupError saying how to create it."""
        try:
            with pg_transaction(self._dsn) as conn:
                yield conn
        except psycopg2.errors.UndefinedTable as exc:
            raise LookupError(
                f"table {self.table!r} does not exist: call create_schema() or ingest data first ({exc.pgerror})"
            ) from exc

    # ------------------------------------------------------------------ schema
    def create_schema(self) -> None:
        """Create the table (primary key (ticker, date)) and its date index if they do not exist."""
        with self._connect() as conn, conn.cursor() as cur:
            self._lock_name(cur)
            self._create_schema(cur)
        logger.info("schema ready for table %s", self.table)

    def _lock_name(self, cur: PgCursor) -> None:
        """Queue behind any other transaction creating or writing this table (held until commit).

        The key is the table name qualified by the schema it would be created in; unlike a table
        lock it exists before the table does."""
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(coalesce(current_schema(), '') || '.' || %s, 0))",
            (self.table,),
        )

    def _create_schema(self, cur: PgCursor) -> None:
        cols = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(c),
                sql.SQL(_sql_type(c)),
                sql.SQL(" NOT NULL" if c in schema.REQUIRED_COLUMNS else ""),
            )
            for c in schema.ALL_COLUMNS
        ]
        cur.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {t} ({cols}, PRIMARY KEY (ticker, date))").format(
                t=self._ident, cols=sql.SQL(", ").join(cols)
            )
        )
        cur.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (date)").format(
                i=sql.Identifier(f"{self.table}_date_idx"), t=self._ident
            )
        )

    # ------------------------------------------------------------------ write
    def write(self, df: pd.DataFrame, progress: Callable[[int], None] | None = None) -> int:
        """Validate ``df`` and upsert it; return the number of rows inserted or changed.

        Bad data raises ``schema.DataValidationError`` before anything is written. Rows are COPYed
        in chunks of ``chunk_rows`` into a temporary staging table and merged with
        ``INSERT ... ON CONFLICT (ticker, date) DO UPDATE`` in one transaction; identical rows are
        not rewritten, so writing the same frame twice returns 0 the second time. Optional columns
        missing from ``df`` are NULL on new rows and left as they are on existing rows; columns
        outside the contract are not stored (logged). ``progress(n)`` is called after each chunk.
        """
        schema.validate(df)
        cols = [c for c in schema.ALL_COLUMNS if c in df.columns]
        extra = [c for c in df.columns if c not in schema.ALL_COLUMNS]
        if extra:
            logger.warning("columns %s are not part of the contract and are not stored", extra)
        table = self._to_arrow(df, cols)

        with self._connect() as conn, conn.cursor() as cur:
            self._lock_name(cur)  # before the existence check: see the module docstring
            if not self._exists(cur):
                self._create_schema(cur)
            # writers queue behind each other (readers do not); then an empty table needs no merge.
            # The lock comes first: CREATE INDEX IF NOT EXISTS would take a weaker one to upgrade.
            cur.execute(sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=self._ident))
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {t})").format(t=self._ident))
            row = cur.fetchone()
            if row is not None and not row[0]:
                # no existing row can conflict (keys are unique after validate): COPY straight in
                self._copy_into(cur, self._ident, cols, table, progress)
                n = table.num_rows
            else:
                stage = sql.Identifier(f"_stage_{self.table}")
                cur.execute(
                    sql.SQL("CREATE TEMP TABLE {s} ({cols}) ON COMMIT DROP").format(
                        s=stage,
                        cols=sql.SQL(", ").join(
                            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_sql_type(c))) for c in cols
                        ),
                    )
                )
                self._copy_into(cur, stage, cols, table, progress)
                n = self._merge(cur, stage, cols)
        logger.info("wrote %d rows to %s (%d inserted or changed)", len(df), self.table, n)
        return n

    @staticmethod
    def _to_arrow(df: pd.DataFrame, cols: list[str]) -> pa.Table:
        dates = df["date"].to_numpy(dtype="datetime64[ns]")
        days = dates.astype("datetime64[D]")
        off_midnight = days != dates
        if off_midnight.any():
            i = int(np.argmax(off_midnight))
            raise schema.DataValidationError(
                "date_midnight",
                "dates must be calendar days (midnight, no time of day) to be stored",
                ticker=str(df["ticker"].iloc[i]),
                dates=[pd.Timestamp(dates[i])],
                n_rows=int(off_midnight.sum()),
            )
        arrays: list[pa.Array] = []
        for c in cols:
            if c == "date":
                arrays.append(pa.array(days, type=pa.date32()))
            elif c in TEXT_COLUMNS:
                try:
                    arr = pa.array(df[c], type=pa.string(), from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise ValueError(f"column {c!r} must hold strings: {exc}") from None
                bad = pc.fill_null(pc.match_substring(arr, "\x00"), False).to_numpy(zero_copy_only=False)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise ValueError(
                        f"column {c!r} holds a NUL character, which PostgreSQL text cannot store "
                        f"(ticker {df['ticker'].iloc[i]!r}, date {pd.Timestamp(dates[i]):%Y-%m-%d})"
                    )
                arrays.append(arr)
            else:
                values = df[c].to_numpy(dtype="float64", na_value=np.nan)
                arrays.append(pa.array(values, type=pa.float64(), from_pandas=True))
        return pa.Table.from_arrays(arrays, names=cols)

    def _copy_into(
        self,
        cur: PgCursor,
        target: sql.Identifier,
        cols: list[str],
        table: pa.Table,
        progress: Callable[[int], None] | None,
    ) -> None:
        copy = sql.SQL("COPY {t} ({cols}) FROM STDIN WITH (FORMAT csv)").format(
            t=target, cols=sql.SQL(", ").join(map(sql.Identifier, cols))
        )
        stmt = copy.as_string(cur)
        # "needed" quotes every string, so an empty string stays '' and only an unquoted empty field is NULL
        opts = pacsv.WriteOptions(include_header=False, quoting_style="needed")

        def render(start: int) -> tuple[io.BytesIO, int]:
            chunk = table.slice(start, self.chunk_rows)
            buf = io.BytesIO()
            pacsv.write_csv(chunk, buf, write_options=opts)
            buf.seek(0)
            return buf, chunk.num_rows

        # render chunk i+1 (pyarrow, GIL released) while the server ingests chunk i
        starts = range(0, table.num_rows, self.chunk_rows)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="csv") as pool:
            pending: Future[tuple[io.BytesIO, int]] = pool.submit(render, starts[0])
            for nxt in [*starts[1:], None]:
                buf, rows = pending.result()
                if nxt is not None:
                    pending = pool.submit(render, nxt)
                cur.copy_expert(stmt, buf, size=_COPY_READ_SIZE)
                if progress is not None:
                    progress(rows)

    def _merge(self, cur: PgCursor, stage: sql.Identifier, cols: list[str]) -> int:
        values = [c for c in cols if c not in KEY_COLUMNS]
        col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
        action: sql.Composable
        if values:
            action = sql.SQL("DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new})").format(
                sets=sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in values
                ),
                old=sql.SQL(", ").join(
                    sql.SQL("{t}.{c}").format(t=self._ident, c=sql.Identifier(c)) for c in values
                ),
                new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in values),
            )
        else:
            action = sql.SQL("DO NOTHING")
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ON CONFLICT (ticker, date) {action}"
            ).format(t=self._ident, cols=col_list, s=stage, action=action)
        )
        return int(cur.rowcount)

    # ------------------------------------------------------------------ read
    def read(
        self,
        tickers: Sequence[str] | None = None,
        start: str | pd.Timestamp | None = None,
        end: str | pd.Timestamp | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """The contract table for ``tickers`` (all if None) and dates in [start, end] (inclusive).

        ``columns`` restricts the value columns (date and ticker are always returned). Rows come
        sorted by (ticker, date) with the dtypes ``schema.coerce`` gives; optional columns that are
        entirely NULL in the result are dropped. An empty result has the requested columns.
        """
        if columns is None:
            cols = list(schema.ALL_COLUMNS)
        else:
            unknown = [c for c in columns if c not in schema.ALL_COLUMNS]
            if unknown:
                raise ValueError(f"unknown columns {unknown}; the contract has {list(schema.ALL_COLUMNS)}")
            cols = [c for c in schema.ALL_COLUMNS if c in ("date", "ticker") or c in columns]
        where: list[sql.Composable] = []
        params: list[Any] = []
        if tickers is not None:
            if isinstance(tickers, str):
                raise TypeError("tickers must be a list of strings, not a single string")
            where.append(sql.SQL("ticker = ANY(%s)"))
            params.append([str(t) for t in tickers])
        if start is not None:
            where.append(sql.SQL("date >= %s"))
            params.append(pd.Timestamp(start).date())
        if end is not None:
            where.append(sql.SQL("date <= %s"))
            params.append(pd.Timestamp(end).date())
        query = sql.SQL('SELECT {cols} FROM {t}{where} ORDER BY ticker COLLATE "C", date').format(
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            t=self._ident,
            where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        )
        copy = sql.SQL("COPY ({q}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(q=query)
        buf = io.BytesIO()
        with self._connect() as conn, conn.cursor() as cur:
            # COPY takes no bind parameters: psycopg2 binds (quotes) them client-side with mogrify
            cur.copy_expert(cur.mogrify(copy, params), buf)
        buf.seek(0)
        return self._frame_from_csv(buf, cols)

    @staticmethod
    def _frame_from_csv(buf: io.BytesIO, cols: list[str]) -> pd.DataFrame:
        convert = pacsv.ConvertOptions(
            column_types={c: _arrow_type(c) for c in cols},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # PostgreSQL quotes '' and leaves NULL unquoted
            null_values=[""],
        )
        tbl = pacsv.read_csv(buf, read_options=pacsv.ReadOptions(use_threads=True), convert_options=convert)
        keep = [c for c in cols if c in schema.REQUIRED_COLUMNS or tbl.column(c).null_count < tbl.num_rows]
        if tbl.num_rows == 0:
            keep = cols
        out = tbl.select(keep).to_pandas()
        out["date"] = pd.to_datetime(out["date"])
        return out.astype({c: t for c, t in _contract_dtypes().items() if c in out.columns})

    # ------------------------------------------------------------------ metadata
    def count(self) -> int:
        """Number of rows in the table."""
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self._ident))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def tickers(self) -> list[str]:
        """Distinct tickers, sorted as the contract sorts them (code point order)."""
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL('SELECT DISTINCT ticker COLLATE "C" AS ticker FROM {t} ORDER BY 1').format(
                    t=self._ident
                )
            )
            return [r[0] for r in cur.fetchall()]

    def date_range(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """(first date, last date) in the table, or None when it is empty."""
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT min(date), max(date) FROM {t}").format(t=self._ident))
            row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        return pd.Timestamp(row[0]), pd.Timestamp(row[1])

    def exists(self) -> bool:
        """Whether the table exists (in the connection's search path)."""
        with self._connect() as conn, conn.cursor() as cur:
            return self._exists(cur)

    def _exists(self, cur: PgCursor) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (self._ident.as_string(cur),))
        row = cur.fetchone()
        return bool(row and row[0])
