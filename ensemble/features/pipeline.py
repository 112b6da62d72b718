"""The feature pipeline: a contract table in, a point-in-time feature frame with targets out.

``build_features(prices)`` returns one row per input row, sorted by (ticker, date): ``date``,
``ticker``, every feature of :func:`ensemble.features.catalog.catalogue` for the table's columns
(float32 by default), then ``target_h{h}`` (float64) for each horizon.

Point in time: a feature dated t uses only rows dated <= t (see each family module). The work
is a list of tasks that fill disjoint parts of one output block: each vectorised family (returns,
cross_section, ...: whole-panel numpy) is one task, and the technical family (TA-Lib, per ticker)
is split into chunks of tickers. With ``n_jobs > 1`` the tasks run in forked worker processes that
write straight into a shared output block; the result does not depend on ``n_jobs``.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ensemble.config import DEFAULT_HORIZONS
from ensemble.data.schema import REQUIRED_COLUMNS, DataValidationError
from ensemble.features import technical
from ensemble.features.catalog import FAMILIES, FeatureSpec, family_module, family_specs, missing_inputs
from ensemble.features.panel import Panel
from ensemble.features.targets import feature_columns as feature_columns
from ensemble.features.targets import forward_log_returns

logger = logging.getLogger(__name__)

# The only input columns the pipeline reads (never ``oracle*`` or anything else).
INPUT_COLUMNS: tuple[str, ...] = (
    *REQUIRED_COLUMNS,
    "pe",
    "pb",
    "market_cap",
    "dividend_yield",
    "sector",
    "sentiment",
)
AUTO_PARALLEL_MIN_ROWS = 150_000  # below this, worker start-up costs more than it saves
CHUNKS_PER_JOB = 4


def resolve_n_jobs(n_jobs: int | None, n_rows: int) -> int:
    """``None`` = automatic: every available core (at most 8) for large panels, 1 for small ones."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs is None:
        return min(cores, 8) if n_rows >= AUTO_PARALLEL_MIN_ROWS else 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)  # -1 = all cores
    return max(1, n_jobs)


def _prepare(prices: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in prices.columns]
    if missing:
        raise DataValidationError(
            "missing_columns", f"required columns {missing} are absent (have {list(prices.columns)})"
        )
    if len(prices) == 0:
        raise DataValidationError("empty", "the table has no rows")
    df = prices[[c for c in INPUT_COLUMNS if c in prices.columns]]
    if not pd.api.types.is_datetime64_any_dtype(df["date"]):
        df = df.assign(date=pd.to_datetime(df["date"]))
    tick = df["ticker"].to_numpy(dtype=object)
    dates = df["date"].to_numpy(dtype="datetime64[ns]")
    if len(df) > 1:
        same = tick[1:] == tick[:-1]
        unsorted = (tick[1:] < tick[:-1]) | (same & (dates[1:] < dates[:-1]))
        if unsorted.any():
            logger.info("prices are not sorted by (ticker, date): sorting %d rows", len(df))
            df = df.sort_values(["ticker", "date"], kind="mergesort")
            tick = df["ticker"].to_numpy(dtype=object)
            dates = df["date"].to_numpy(dtype="datetime64[ns]")
            same = tick[1:] == tick[:-1]
        dup = same & (dates[1:] == dates[:-1])
        if dup.any():
            i = int(np.flatnonzero(dup)[0]) + 1
            raise DataValidationError(
                "duplicate_key",
                "(ticker, date) must be unique",
                ticker=str(tick[i]),
                dates=[pd.Timestamp(dates[i])],
            )
    return df.reset_index(drop=True)


def plan(columns: Iterable[str], families: Sequence[str] | None = None) -> dict[str, list[FeatureSpec]]:
    """The specs each family will compute for a table with ``columns``; logs one line per skipped family."""
    cols = frozenset(columns)
    out: dict[str, list[FeatureSpec]] = {}
    for fam in families or FAMILIES:
        miss = missing_inputs(fam, cols)
        if miss:
            logger.info("feature family %r skipped: input columns %s absent", fam, miss)
            continue
        out[fam] = family_specs(fam, cols)
        partial = getattr(family_module(fam), "ANY_OF", ())
        absent = [c for c in partial if c not in cols]
        if partial and absent:
            logger.info("feature family %r: columns %s absent, their features skipped", fam, absent)
        if fam == "cross_section" and "sector" not in cols:
            logger.info(
                "feature family 'cross_section': no 'sector' column, sector-relative features skipped"
            )
    return out


def _shared_empty(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in an anonymous MAP_SHARED mapping (inherited by forked children)."""
    count = shape[0] * shape[1]
    mm = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    return np.frombuffer(mm, dtype=dtype, count=count).reshape(shape)


class _Writer:
    """Collects feature columns into one (n_features, n_rows) block, in catalogue order."""

    def __init__(self, panel: Panel, names: list[str], dtype: np.dtype, shared: bool = False) -> None:
        self.panel = panel
        self.names = names
        self.index = {n: j for j, n in enumerate(names)}
        shape = (len(names), panel.n_rows)
        self.shared = shared
        # every cell is written exactly once; `shared`: an anonymous shared mapping that forked
        # workers write into directly (nothing is pickled back)
        self.buf = _shared_empty(shape, dtype) if shared else np.empty(shape, dtype=dtype)
        self.done = np.zeros(len(names), dtype=bool)
        self.all_valid = bool(panel.valid.all())

    def _put(self, j: int, rows: np.ndarray | None, vals: np.ndarray) -> None:
        vals = np.where(np.isfinite(vals), vals, np.nan)
        if rows is None:
            if self.all_valid:
                self.buf[j] = vals
                return
            self.buf[j] = np.nan
            self.buf[j, self.panel.valid] = vals
        else:
            self.buf[j, rows] = vals

    def add(self, family: str, name: str, layout: str, values: np.ndarray) -> None:
        j = self.index.get(name)
        if j is None:
            raise RuntimeError(f"family {family!r} computed {name!r}, which is not in its catalogue")
        if self.done[j]:
            raise RuntimeError(f"family {family!r} computed {name!r} twice")
        p = self.panel
        if layout == "ts":
            vals = p.ts_to_valid(values)
        elif layout == "date":
            vals = values[p.vdidx, p.vt]
        elif layout == "dvec":
            vals = values[p.vdidx]
        else:
            raise ValueError(f"unknown layout {layout!r}")
        self._put(j, None, vals)
        self.done[j] = True

    def init_block(self, names: list[str]) -> None:
        """NaN on the invalid rows of features that arrive in blocks of valid rows."""
        if not self.all_valid:
            for n in names:
                self.buf[self.index[n], ~self.panel.valid] = np.nan

    def add_block(self, names: list[str], rows: np.ndarray, block: np.ndarray) -> None:
        """A (len(names), len(rows)) block of values for the given row indices (technical chunks)."""
        js = [self.index[n] for n in names]
        for k, j in enumerate(js):
            self._put(j, rows, block[k])
        self.done[js] = True

    def mark_done(self, names: list[str]) -> None:
        self.done[[self.index[n] for n in names]] = True

    def check_complete(self) -> None:
        if not self.done.all():
            missing = [n for n, d in zip(self.names, self.done, strict=True) if not d]
            raise RuntimeError(f"features in the catalogue but not computed: {missing}")


def _technical_chunks(panel: Panel, n_chunks: int) -> list[tuple[int, int]]:
    """Split tickers into contiguous ranges with about equal numbers of valid rows."""
    counts = panel.vcount
    n = len(counts)
    if n == 0:
        return []
    cum = np.cumsum(counts)
    total = int(cum[-1])
    bounds = [0]
    for k in range(1, n_chunks):
        b = int(np.searchsorted(cum, total * k / n_chunks, side="left")) + 1
        if bounds[-1] < b < n:
            bounds.append(b)
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _can_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


@dataclass(frozen=True)
class _Task:
    family: str
    lo: int = 0  # technical: ticker range [lo, hi)
    hi: int = 0


class _Job:
    """One build: the panel, the output block, and the tasks (a vectorised family, or a chunk of
    tickers for TA-Lib) that fill disjoint parts of it."""

    def __init__(self, panel: Panel, writer: _Writer, specs_by_family: dict[str, list[FeatureSpec]]) -> None:
        self.panel = panel
        self.writer = writer
        self.specs = specs_by_family
        self.tech_names = [s.name for s in specs_by_family.get("technical", [])]
        if self.tech_names and self.tech_names != technical.names():
            raise RuntimeError("technical catalogue and implementation disagree")
        self.valid_rows = np.flatnonzero(panel.valid)
        self.vcols = (
            {k: panel.raw(k)[panel.valid] for k in ("open", "high", "low", "close", "volume")}
            if self.tech_names
            else {}
        )

    def tasks(self, n_chunks: int) -> list[_Task]:
        """Vectorised families, largest first, then the TA-Lib chunks (a rough longest-first order)."""
        fams = sorted((f for f in self.specs if f != "technical"), key=lambda f: -len(self.specs[f]))
        out = [_Task(f) for f in fams]
        if self.tech_names:
            out += [_Task("technical", lo, hi) for lo, hi in _technical_chunks(self.panel, n_chunks)]
        return out

    def chunk_inputs(self, lo: int, hi: int) -> list[tuple[np.ndarray, ...]]:
        p, out = self.panel, []
        for i in range(lo, hi):
            a, b = int(p.vstart[i]), int(p.vstart[i] + p.vcount[i])
            out.append(tuple(self.vcols[k][a:b] for k in ("open", "high", "low", "close", "volume")))
        return out

    def write_chunk(self, lo: int, hi: int, block: np.ndarray) -> None:
        p = self.panel
        a, b = int(p.vstart[lo]), int(p.vstart[hi - 1] + p.vcount[hi - 1])
        self.writer.add_block(self.tech_names, self.valid_rows[a:b], block)

    def run(self, task: _Task) -> float:
        """Compute one task and write its values into the output block; returns its seconds."""
        t = time.perf_counter()
        if task.family == "technical":
            self.write_chunk(task.lo, task.hi, technical.compute_chunk(self.chunk_inputs(task.lo, task.hi)))
        else:
            got = []
            for name, layout, values in family_module(task.family).compute(self.panel):
                self.writer.add(task.family, name, layout, values)
                got.append(name)
            want = [s.name for s in self.specs[task.family]]
            if got != want:
                raise RuntimeError(f"family {task.family!r} computed {got}, its catalogue lists {want}")
        return time.perf_counter() - t

    def names_of(self, task: _Task) -> list[str]:
        return self.tech_names if task.family == "technical" else [s.name for s in self.specs[task.family]]


_FORKED_JOB: _Job | None = None  # set in the parent just before forking workers; they inherit it


def _run_forked(task: _Task) -> float:
    if _FORKED_JOB is None:
        raise RuntimeError("worker started without a job (the fork start method is required)")
    return _FORKED_JOB.run(task)


def _execute(job: _Job, jobs: int) -> dict[str, float]:
    """Run every task: in process (jobs=1); in forked workers writing into a shared output block;
    or, where fork is unavailable, the TA-Lib chunks in spawned workers and the rest in process."""
    global _FORKED_JOB
    timings: dict[str, float] = {}

    def note(task: _Task, secs: float) -> None:
        timings[task.family] = timings.get(task.family, 0.0) + secs

    if job.tech_names:
        job.writer.init_block(job.tech_names)
    tasks = job.tasks(jobs * CHUNKS_PER_JOB if jobs > 1 else 1)
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            note(task, job.run(task))
        return timings
    if _can_fork() and job.writer.shared:
        _FORKED_JOB = job
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork")) as pool:
                futures = [(task, pool.submit(_run_forked, task)) for task in tasks]
                for task, fut in futures:
                    note(task, fut.result())
                    job.writer.mark_done(job.names_of(task))
        finally:
            _FORKED_JOB = None
        return timings
    chunks = [t for t in tasks if t.family == "technical"]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        pending = [(t, pool.submit(technical.compute_chunk, job.chunk_inputs(t.lo, t.hi))) for t in chunks]
        for task in tasks:
            if task.family != "technical":
                note(task, job.run(task))
        for task, block in pending:
            t = time.perf_counter()
            job.write_chunk(task.lo, task.hi, block.result())
            note(task, time.perf_counter() - t)
    return timings


def build_features(
    prices: pd.DataFrame,
    horizons: Iterable[int] = DEFAULT_HORIZONS,
    *,
    n_jobs: int | None = 1,
    families: Sequence[str] | None = None,
    dtype: type[np.floating] = np.float32,
) -> pd.DataFrame:
    """Turn a contract table into a feature frame keyed by (ticker, date), with forward-return targets.

    ``n_jobs``: worker processes (1 = all in this process; None = automatic: every core for large
    panels; -1 = every core). The output is bit-identical for every value. ``families`` restricts
    the families (default: all whose inputs are present). Rows with a missing or non-positive price
    get NaN features but are kept; targets are ``log(close[t+h] / close[t])``, NaN where row t+h of
    the ticker is not in the table.
    """
    t0 = time.perf_counter()
    df = _prepare(prices)
    specs_by_family = plan(df.columns, families)
    names = [s.name for specs in specs_by_family.values() for s in specs]
    panel = Panel(df)
    if panel.n_invalid:
        logger.info("%d rows with a missing or non-positive price/volume get NaN features", panel.n_invalid)
    jobs = resolve_n_jobs(n_jobs, len(df))
    writer = _Writer(panel, names, np.dtype(dtype), shared=jobs > 1 and _can_fork())
    timings = _execute(_Job(panel, writer, specs_by_family), jobs)
    writer.check_complete()

    out = pd.DataFrame(writer.buf.T, columns=names, copy=False)
    out.insert(0, "date", df["date"].to_numpy(dtype="datetime64[ns]"))
    out.insert(1, "ticker", df["ticker"].array)
    tg = forward_log_returns(df, list(horizons))
    for col in tg.columns:
        out[col] = tg[col].to_numpy()
    logger.info(
        "built %d features x %d rows (%d tickers) in %.2fs, n_jobs=%d (task seconds: %s)",
        len(names),
        len(out),
        panel.n_tickers,
        time.perf_counter() - t0,
        jobs,
        ", ".join(f"{k} {v:.2f}" for k, v in timings.items()),
    )
    return out
