"""The prediction log: every forecast scored or served, recorded for monitoring (ensemble/monitor.py).

One row per (forecast, horizon) in one long format, :data:`BASE_COLUMNS` then one column per member
that forecast (``lstm``, ``xgboost``, ... in :data:`ensemble.catalog.MODEL_NAMES`, each the
ensemble's calibration of that member to a log return, as :func:`ensemble.scoring.score` writes it)
and the interval bounds ``lo{L}`` / ``hi{L}`` (L: the level in percent):

    logged_at   when the row was logged (UTC)        as_of    the date the forecast is as of
    ticker      horizon (trading days)               version  the registry version that produced it
    arm         the A/B arm ('A', 'B'; '-' without a split)   source  'score', 'serve', ...
    ensemble    the ensemble's expected log return   excess   ... in excess of the universe's
    confidence  n_models

Two backends, chosen by :func:`open_backend`: PostgreSQL when a DSN is configured (a table created if
missing, members and intervals as JSONB, bound parameters only), else Parquet part files under a
directory (each flush writes a new part file next to the old ones, which are never rewritten: written
to a temporary name, fsynced, renamed, the directory fsynced).

:class:`PredictionLog` is buffered and asynchronous: :meth:`~PredictionLog.log` converts the frame and
enqueues it and returns at once; a background thread writes when ``flush_rows`` rows are buffered or
the oldest is ``flush_seconds`` old. :meth:`~PredictionLog.flush` (or ``log(..., wait=True)``) returns
only once the rows are durable (committed in PostgreSQL, renamed into place and fsynced in Parquet):
what it acknowledged survives the process being killed. :meth:`~PredictionLog.close` (also the context
manager's exit, and at interpreter exit for a log never closed) writes everything still buffered. A
failed write keeps its rows buffered and is retried; a waiter whose rows it held gets the error.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extras import Json, execute_values

from ensemble.catalog import MODEL_NAMES
from ensemble.config import Settings
from ensemble.data.store import check_table_name, pg_transaction, redact_dsn

logger = logging.getLogger(__name__)

NO_ARM = "-"  # the arm of a forecast made without an A/B split
BASE_COLUMNS: tuple[str, ...] = (
    "logged_at",
    "as_of",
    "ticker",
    "horizon",
    "version",
    "arm",
    "source",
    "ensemble",
    "excess",
    "confidence",
    "n_models",
)
_FLOATS = ("ensemble", "excess", "confidence", "n_models")
_PRED = re.compile(r"^pred_h(\d+)$")
_BOUND = re.compile(r"^(lo|hi)(\d+)$")
PART_PREFIX = "part-"


class PredictionLogError(RuntimeError):
    """Rows could not be made durable (the backend failed, the log is closed or its buffer is full)."""


# -- the row format -------------------------------------------------------------------------------------
_HORIZON_COL = re.compile(r"_h(\d+)$")


def interval_columns(columns: Iterable[Any]) -> list[str]:
    """The interval bound columns (``lo80``, ``hi80``, ...) of a log frame, by level then lo/hi."""
    found = [(int(m.group(2)), m.group(1)) for c in columns if (m := _BOUND.match(str(c)))]
    return [f"{side}{lvl}" for lvl, side in sorted(found, key=lambda t: (t[0], t[1] != "lo"))]


def member_columns(columns: Iterable[Any]) -> list[str]:
    """The member columns of a log frame, in catalogue order."""
    have = {str(c) for c in columns}
    return [m for m in MODEL_NAMES if m in have]


def records_from_scores(
    frame: pd.DataFrame,
    *,
    version: str,
    source: str,
    arm: str | None = None,
    as_of: Any = None,
    logged_at: Any = None,
) -> pd.DataFrame:
    """The log rows of a scoring frame (:attr:`ensemble.scoring.ScoreResult.frame`: ``date, ticker``,
    ``pred_h{h}``, ``excess_h{h}``, ``lo{L}_h{h}`` / ``hi{L}_h{h}``, ``confidence_h{h}``,
    ``n_models_h{h}``, ``{member}_h{h}``): one row per ticker and horizon. ``as_of`` stands in for a
    missing ``date`` column; ``logged_at`` defaults to now (UTC)."""
    horizons = sorted(int(pm.group(1)) for c in frame.columns if (pm := _PRED.match(str(c))))
    if not horizons:
        raise ValueError(f"no forecast columns pred_h<h> in the frame (columns: {list(frame.columns)[:12]})")
    if "ticker" not in frame.columns:
        raise ValueError("the frame has no 'ticker' column")
    if "date" in frame.columns:
        day = pd.to_datetime(frame["date"]).dt.normalize().to_numpy(dtype="datetime64[ns]")
    elif as_of is not None:
        day = np.full(len(frame), pd.Timestamp(as_of).normalize().to_datetime64(), dtype="datetime64[ns]")
    else:
        raise ValueError("the frame has no 'date' column and no as_of was given")
    stamp = pd.Timestamp.now(tz="UTC") if logged_at is None else pd.Timestamp(logged_at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    n = len(frame)
    parts = []
    for h in horizons:

        def col(name: str) -> np.ndarray:
            if name in frame.columns:
                return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            return np.full(n, np.nan)

        part: dict[str, Any] = {
            "as_of": day,
            "ticker": frame["ticker"].astype(str).to_numpy(),
            "horizon": np.full(n, h, dtype=np.int64),
            "ensemble": col(f"pred_h{h}"),
            "excess": col(f"excess_h{h}"),
            "confidence": col(f"confidence_h{h}"),
            "n_models": col(f"n_models_h{h}"),
        }
        for m in MODEL_NAMES:
            if f"{m}_h{h}" in frame.columns:
                part[m] = col(f"{m}_h{h}")
        for c in frame.columns:
            if (b := re.match(rf"^(lo|hi)(\d+)_h{h}$", str(c))) is not None:
                part[f"{b.group(1)}{b.group(2)}"] = col(str(c))
        parts.append(pd.DataFrame(part))
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "logged_at", pd.Series([stamp] * len(out), dtype="datetime64[ns, UTC]"))
    out["version"] = str(version)
    out["arm"] = str(arm) if arm else NO_ARM
    out["source"] = str(source)
    return normalise(out)


def select(frame: pd.DataFrame, tickers: set[str] | None, horizons: set[int] | None) -> pd.DataFrame:
    """The rows of ``tickers`` and the columns of ``horizons`` (``*_h{h}``) of a scoring frame (None:
    all of them)."""
    if tickers is not None:
        frame = frame.loc[frame["ticker"].astype(str).isin(tickers)]
    if horizons is not None:
        frame = frame[[c for c in frame.columns
                       if not (m := _HORIZON_COL.search(str(c))) or int(m.group(1)) in horizons]]  # fmt: skip
    return frame


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """A log frame in the canonical column order and dtypes (what every backend reads back)."""
    missing = [c for c in BASE_COLUMNS if c not in frame.columns and c not in _FLOATS]
    if missing:
        raise ValueError(f"a prediction log frame needs the columns {missing}")
    out = frame.copy()
    for c in _FLOATS:
        if c not in out.columns:
            out[c] = np.nan
    cols = [*BASE_COLUMNS, *member_columns(out.columns), *interval_columns(out.columns)]
    out = out[cols]
    logged = pd.to_datetime(out["logged_at"], utc=True)
    out["logged_at"] = logged.astype("datetime64[ns, UTC]")
    out["as_of"] = pd.to_datetime(out["as_of"]).dt.tz_localize(None).astype("datetime64[ns]")
    out["horizon"] = out["horizon"].astype(np.int64)
    for c in ("ticker", "version", "arm", "source"):
        out[c] = out[c].astype(str)
    for c in cols[len(BASE_COLUMNS) - len(_FLOATS) :]:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(np.float64)
    return out.reset_index(drop=True)


def _empty() -> pd.DataFrame:
    return normalise(pd.DataFrame({c: pd.Series(dtype=object) for c in BASE_COLUMNS}))


def _select(frame: pd.DataFrame, start: Any, end: Any) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    if start is not None:
        keep &= (frame["as_of"] >= pd.Timestamp(start)).to_numpy()
    if end is not None:
        keep &= (frame["as_of"] <= pd.Timestamp(end)).to_numpy()
    return frame.loc[keep]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["logged_at", "as_of", "ticker", "horizon"], kind="stable").reset_index(
        drop=True
    )


# -- backends ---------------------------------------------------------------------------------------------
class LogBackend(Protocol):
    """Where log rows go: ``write`` returns only once they are durable."""

    def write(self, frame: pd.DataFrame) -> None: ...

    def read(self, start: Any = None, end: Any = None) -> pd.DataFrame: ...


class ParquetLogBackend:
    """Part files ``part-<UTC time>-<pid>-<n>-<random>.parquet`` under ``directory``: each write is a
    new file (temporary name, fsync, rename, directory fsync), old files are never touched; readers
    see only complete files."""

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self._counter = itertools.count()

    def __repr__(self) -> str:
        return f"ParquetLogBackend({str(self.directory)!r})"

    def parts(self) -> list[Path]:
        """The complete part files, oldest name first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(f"{PART_PREFIX}*.parquet") if p.is_file())

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        now = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{PART_PREFIX}{now}-{os.getpid()}-{next(self._counter):06d}-{uuid.uuid4().hex[:8]}.parquet"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        table = pa.Table.from_pandas(normalise(frame), preserve_index=False)
        try:
            pq.write_table(table, tmp)
            if self.fsync:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self, start: Any = None, end: Any = None) -> pd.DataFrame:
        frames = [_select(normalise(pq.read_table(p).to_pandas()), start, end) for p in self.parts()]
        frames = [f for f in frames if not f.empty]
        if not frames:
            return _empty()
        return _sorted(normalise(pd.concat(frames, ignore_index=True)))


_PG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("logged_at", "timestamptz NOT NULL"),
    ("as_of", "date NOT NULL"),
    ("ticker", "text NOT NULL"),
    ("horizon", "integer NOT NULL"),
    ("version", "text NOT NULL"),
    ("arm", "text NOT NULL"),
    ("source", "text NOT NULL"),
    ("ensemble", "double precision"),
    ("excess", "double precision"),
    ("confidence", "double precision"),
    ("n_models", "double precision"),
    ("members", "jsonb NOT NULL"),
    ("intervals", "jsonb NOT NULL"),
)
_PG_NAMES = tuple(c for c, _ in _PG_COLUMNS)


def _num(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


class PostgresLogBackend:
    """The table ``table`` (created if missing, with an index on ``as_of``): one row per log row,
    members and interval bounds as JSONB objects; one transaction per write; bound parameters only."""

    def __init__(self, dsn: str, table: str = "prediction_log") -> None:
        if not dsn:
            raise ValueError("PostgresLogBackend needs a DSN")
        self._dsn = dsn
        self.table = check_table_name(table)
        self._ident = sql.Identifier(self.table)
        self._created = False

    def __repr__(self) -> str:
        return f"PostgresLogBackend({redact_dsn(self._dsn)!r}, table={self.table!r})"

    def _connect(self) -> AbstractContextManager[PgConnection]:
        return pg_transaction(self._dsn)

    def create_schema(self) -> None:
        with self._connect() as conn, conn.cursor() as cur:
            self._create(cur)

    def _create(self, cur: Any) -> None:
        # queue behind any other writer creating this table (concurrent CREATE IF NOT EXISTS can fail)
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(coalesce(current_schema(), '') || '.' || %s, 0))",
            (self.table,),
        )
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in _PG_COLUMNS
        )
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {t} ({cols})").format(t=self._ident, cols=cols))
        cur.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (as_of)").format(
                i=sql.Identifier(f"{self.table}_as_of_idx"), t=self._ident
            )
        )

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        df = normalise(frame)
        members = member_columns(df.columns)
        bounds = interval_columns(df.columns)

        def dumps(o: Any) -> str:
            return json.dumps(o, sort_keys=True)

        rows = []
        for r in df.to_dict("records"):
            rows.append(
                (
                    pd.Timestamp(r["logged_at"]).to_pydatetime(),
                    pd.Timestamp(r["as_of"]).date(),
                    r["ticker"],
                    int(r["horizon"]),
                    r["version"],
                    r["arm"],
                    r["source"],
                    *(_num(r[c]) for c in _FLOATS),
                    Json({m: _num(r[m]) for m in members if _num(r[m]) is not None}, dumps=dumps),
                    Json({b: _num(r[b]) for b in bounds if _num(r[b]) is not None}, dumps=dumps),
                )
            )
        with self._connect() as conn, conn.cursor() as cur:
            if not self._created:
                self._create(cur)
            execute_values(
                cur,
                sql.SQL("INSERT INTO {t} ({cols}) VALUES %s").format(
                    t=self._ident, cols=sql.SQL(", ").join(map(sql.Identifier, _PG_NAMES))
                ),
                rows,
                page_size=1000,
            )
        self._created = True  # committed: later writes skip the CREATE

    def read(self, start: Any = None, end: Any = None) -> pd.DataFrame:
        where: list[sql.Composable] = []
        params: list[Any] = []
        if start is not None:
            where.append(sql.SQL("as_of >= %s"))
            params.append(pd.Timestamp(start).date())
        if end is not None:
            where.append(sql.SQL("as_of <= %s"))
            params.append(pd.Timestamp(end).date())
        query = sql.SQL("SELECT {cols} FROM {t}{w}").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, _PG_NAMES)),
            t=self._ident,
            w=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        )
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (sql.Identifier(self.table).as_string(conn),))
            if cur.fetchone()[0] is None:  # type: ignore[index]
                return _empty()
            cur.execute(query, params)
            data = cur.fetchall()
        if not data:
            return _empty()
        base = pd.DataFrame([r[:-2] for r in data], columns=list(_PG_NAMES[:-2]))
        extra = pd.DataFrame([{**r[-2], **r[-1]} for r in data], index=base.index, dtype=np.float64)
        return _sorted(normalise(pd.concat([base, extra], axis=1)))


def open_backend(settings: Settings, log_dir: str | os.PathLike[str] | None = None) -> LogBackend:
    """The configured backend: Parquet under ``log_dir`` when given; else PostgreSQL (table
    ``monitoring.table``) when the DSN variable ``postgres.dsn_env`` is set; else Parquet under
    ``monitoring.log_dir``."""
    mc = settings.monitoring
    if log_dir is not None:
        return ParquetLogBackend(log_dir, fsync=mc.fsync)
    dsn = settings.postgres.dsn()
    if dsn:
        return PostgresLogBackend(dsn, mc.table)
    return ParquetLogBackend(mc.log_dir, fsync=mc.fsync)


def read_log(
    settings: Settings, log_dir: str | os.PathLike[str] | None = None, start: Any = None, end: Any = None
) -> pd.DataFrame:
    """The configured log's rows with ``start <= as_of <= end`` (either bound optional)."""
    return open_backend(settings, log_dir).read(start, end)


# -- the buffered, asynchronous writer ----------------------------------------------------------------------
@dataclass
class _Batch:
    """Rows enqueued by one call: converted (``frame``) or to be converted by the writer (``make``)."""

    rows: int
    frame: pd.DataFrame | None = None
    make: Callable[[], pd.DataFrame] | None = None

    def materialise(self) -> None:
        if self.frame is None and self.make is not None:
            self.frame, self.make = self.make(), None
            self.rows = len(self.frame)


_OPEN: weakref.WeakSet[PredictionLog] = weakref.WeakSet()


@atexit.register
def _close_open_logs() -> None:
    """A clean interpreter exit writes what logs left open still buffer."""
    for plog in list(_OPEN):
        try:
            plog.close(timeout=30.0)
        except Exception as exc:  # noqa: BLE001 - at exit: report, never raise
            logger.error("prediction log %r: rows lost at exit: %s", plog.backend, exc)


class PredictionLog:
    """Buffered, asynchronous writer of log rows to a backend (see the module docstring).

    ``log(frame, version=..., source=..., arm=...)`` logs a scoring frame; ``log_records(rows)`` an
    already converted frame (:func:`records_from_scores`). Both return the number of rows enqueued;
    with ``wait=True`` they return only once those rows (and every row enqueued before) are durable.
    ``stats()``: rows enqueued, written, buffered and refused; failed writes; the last error."""

    def __init__(
        self,
        backend: LogBackend,
        *,
        flush_rows: int = 1000,
        flush_seconds: float = 5.0,
        max_buffer_rows: int = 1_000_000,
        retry_seconds: float = 1.0,
        close_retries: int = 3,
    ) -> None:
        if flush_rows < 1 or flush_seconds <= 0 or max_buffer_rows < 1:
            raise ValueError("flush_rows and max_buffer_rows must be >= 1 and flush_seconds > 0")
        self.backend = backend
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)
        self.max_buffer_rows = int(max_buffer_rows)
        self.retry_seconds = float(retry_seconds)
        self.close_retries = int(close_retries)
        self._cond = threading.Condition()
        self._pending: list[_Batch] = []
        self._pending_rows = 0
        self._oldest: float | None = None  # monotonic time of the oldest buffered batch
        self._enqueued = 0  # batches enqueued (their sequence numbers are 1..)
        self._durable = 0  # every batch up to this sequence number is durable
        self._attempts = 0  # write attempts finished
        self._failure: tuple[int, int, BaseException] | None = None  # (attempt, through batch, error)
        self._retry_at = 0.0
        self._flush_wanted = False
        self._closing = False
        self._closed = False
        self._counts = {"enqueued": 0, "written": 0, "dropped": 0, "failures": 0, "lost": 0}
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()
        _OPEN.add(self)

    @classmethod
    def from_settings(
        cls, settings: Settings, log_dir: str | os.PathLike[str] | None = None
    ) -> PredictionLog:
        """A log on :func:`open_backend`'s backend with the ``monitoring`` section's flush settings."""
        mc = settings.monitoring
        return cls(
            open_backend(settings, log_dir),
            flush_rows=mc.flush_rows,
            flush_seconds=mc.flush_seconds,
            max_buffer_rows=mc.max_buffer_rows,
        )

    def __repr__(self) -> str:
        return f"PredictionLog({self.backend!r})"

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the caller's side
    def log(
        self,
        frame: pd.DataFrame,
        *,
        version: str,
        source: str,
        arm: str | None = None,
        as_of: Any = None,
        wait: bool = False,
        timeout: float | None = None,
        tickers: Iterable[str] | None = None,
        horizons: Iterable[int] | None = None,
        copy: bool = True,
    ) -> int:
        """Log a scoring frame (see :func:`records_from_scores`), or only the rows of ``tickers`` and
        the columns of ``horizons`` in it; returns the rows enqueued (tickers x horizons). Without
        ``wait`` the frame is only checked (and copied, unless ``copy=False``: the caller promises
        never to change it) here; the selection and the conversion run in the writer thread."""
        keep_h = None if horizons is None else {int(h) for h in horizons}
        n_h = sum(
            1
            for c in frame.columns
            if (m := _PRED.match(str(c))) and (keep_h is None or int(m.group(1)) in keep_h)
        )
        if not n_h and keep_h is not None:
            raise ValueError(f"no forecast columns pred_h<h> for the horizons {sorted(keep_h)} in the frame")
        if not n_h or "ticker" not in frame.columns or ("date" not in frame.columns and as_of is None):
            records_from_scores(frame.iloc[:0], version=version, source=source, as_of=as_of)  # raises why
        stamp = pd.Timestamp.now(tz="UTC")
        want = None if tickers is None else {str(t) for t in tickers}
        snapshot = frame.copy() if copy and not wait else frame  # converted at once when waiting

        def make() -> pd.DataFrame:
            return records_from_scores(
                select(snapshot, want, keep_h),
                version=version,
                source=source,
                arm=arm,
                as_of=as_of,
                logged_at=stamp,
            )

        if wait:
            rows = make()
            return self._enqueue(_Batch(len(rows), frame=rows), wait, timeout)
        n = len(frame) if want is None else len(want)
        return self._enqueue(_Batch(n * n_h, make=make), wait, timeout)

    def log_records(self, rows: pd.DataFrame, *, wait: bool = False, timeout: float | None = None) -> int:
        """Log rows already in the log's format (see :func:`normalise`)."""
        missing = [c for c in BASE_COLUMNS if c not in rows.columns and c not in _FLOATS]
        if missing:
            raise ValueError(f"a prediction log frame needs the columns {missing}")
        if wait:
            return self._enqueue(_Batch(len(rows), frame=normalise(rows)), wait, timeout)
        snapshot = rows.copy()
        return self._enqueue(_Batch(len(rows), make=lambda: normalise(snapshot)), wait, timeout)

    def _enqueue(self, item: _Batch, wait: bool, timeout: float | None) -> int:
        n = item.rows
        with self._cond:
            if self._closing:
                raise PredictionLogError(f"{self!r} is closed")
            if self._pending_rows + n > self.max_buffer_rows:
                self._counts["dropped"] += n
                msg = (
                    f"{self!r}: {n} rows refused, the buffer holds {self._pending_rows} of at most "
                    f"{self.max_buffer_rows} (last error: {self._last_error()})"
                )
                logger.error(msg)
                if wait:
                    raise PredictionLogError(msg)
                return 0
            if n == 0:
                seq = self._enqueued
            else:
                self._pending.append(item)
                self._pending_rows += n
                self._counts["enqueued"] += n
                if self._oldest is None:
                    self._oldest = time.monotonic()
                self._enqueued += 1
                seq = self._enqueued
                self._cond.notify_all()
            if wait:
                self._wait_durable(seq, timeout)
        return n

    def flush(self, timeout: float | None = None) -> None:
        """Return once every row logged before the call is durable; raises :class:`PredictionLogError`
        if a write attempt that held them failed (they stay buffered and are retried), TimeoutError
        after ``timeout`` seconds."""
        with self._cond:
            self._wait_durable(self._enqueued, timeout)

    def _wait_durable(self, seq: int, timeout: float | None) -> None:
        # called with the lock held
        if self._durable >= seq:
            return
        start_attempt = self._attempts
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flush_wanted = True
        self._cond.notify_all()
        while self._durable < seq:
            f = self._failure
            if f is not None and f[0] > start_attempt and f[1] >= seq:
                raise PredictionLogError(f"{self!r}: the write failed: {type(f[2]).__name__}: {f[2]}") from f[
                    2
                ]
            if self._closed:
                raise PredictionLogError(f"{self!r} closed before the rows were written")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{self!r}: rows not durable after {timeout} s")
            self._cond.wait(left)

    def close(self, timeout: float | None = None) -> None:
        """Write every buffered row and stop the writer (idempotent). Raises
        :class:`PredictionLogError` when rows could not be written (after ``close_retries`` attempts)."""
        with self._cond:
            self._closing = True
            self._flush_wanted = True
            self._cond.notify_all()
        self._thread.join(timeout)
        _OPEN.discard(self)
        with self._cond:
            lost = self._pending_rows
            if self._thread.is_alive():
                raise PredictionLogError(f"{self!r}: {lost} rows still being written after {timeout} s")
        if lost:
            raise PredictionLogError(f"{self!r}: {lost} rows could not be written: {self._last_error()}")

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {**self._counts, "buffered": self._pending_rows, "last_error": self._last_error()}

    def _last_error(self) -> str | None:
        f = self._failure
        return None if f is None else f"{type(f[2]).__name__}: {f[2]}"

    # -- the writer thread
    def _materialise(self, batch: list[_Batch]) -> list[_Batch]:
        """Convert what callers enqueued unconverted; a frame that cannot be converted (it was checked
        when logged, so a bug) is dropped and reported, never retried forever."""
        kept = []
        for b in batch:
            try:
                b.materialise()
                kept.append(b)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not block the log
                logger.error("%r: %d rows could not be converted (dropped): %s", self, b.rows, exc)
                with self._cond:
                    self._counts["dropped"] += b.rows
        return kept

    def _due(self, now: float) -> bool:
        if not self._pending:
            return False
        if self._closing or self._flush_wanted:
            return True
        if now < self._retry_at:
            return False
        old = self._oldest is not None and now - self._oldest >= self.flush_seconds
        return self._pending_rows >= self.flush_rows or old

    def _run(self) -> None:
        failures_closing = 0
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._due(now):
                        break
                    if self._closing and not self._pending:
                        self._closed = True
                        self._cond.notify_all()
                        return
                    if not self._pending:
                        self._flush_wanted = False  # nothing to write: a flush is already satisfied
                    waits = [self._retry_at - now] if self._retry_at > now else []
                    if self._oldest is not None:
                        waits.append(self._oldest + self.flush_seconds - now)
                    self._cond.wait(max(0.0, min(waits)) if waits else None)
                batch, through = self._pending, self._enqueued
                self._pending, self._pending_rows, self._oldest = [], 0, None
                self._flush_wanted = False
            batch = self._materialise(batch)
            rows = sum(b.rows for b in batch)
            try:
                frames = [b.frame for b in batch if b.frame is not None]
                if frames:
                    self.backend.write(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0])
            except Exception as exc:  # noqa: BLE001 - kept buffered, retried, reported to waiters
                logger.error("%r: writing %d rows failed (kept, retried): %s", self, rows, exc)
                with self._cond:
                    self._pending = batch + self._pending
                    self._pending_rows += rows
                    self._oldest = time.monotonic()
                    self._attempts += 1
                    self._counts["failures"] += 1
                    self._failure = (self._attempts, through, exc)
                    self._retry_at = time.monotonic() + self.retry_seconds
                    if self._closing:
                        failures_closing += 1
                        if failures_closing >= self.close_retries:
                            self._counts["lost"] += self._pending_rows
                            logger.error("%r: closing with %d rows unwritten", self, self._pending_rows)
                            self._closed = True
                            self._cond.notify_all()
                            return
                    self._cond.notify_all()
                if self._closing:
                    time.sleep(min(self.retry_seconds, 1.0))
                continue
            with self._cond:
                self._attempts += 1
                self._durable = through
                self._counts["written"] += rows
                self._failure = None
                self._retry_at = 0.0
                self._cond.notify_all()
