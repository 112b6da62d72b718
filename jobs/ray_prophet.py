"""Prophet fan-out on Ray: one fit per ticker, Ray tasks over chunks of tickers.

:func:`fit_prophet_fanout` sorts the tickers, cuts them into contiguous chunks and submits one Ray
task per chunk (not one per ticker: a Prophet fit takes ~0.3-1 s, a task is worth several). Each
task fits :class:`ensemble.models.prophet_model.ProphetForecaster` on its slice; the driver collects
the parts with a ``ray.wait`` loop (driving a tqdm bar: tickers done / total) and joins them with
:meth:`ProphetForecaster.merge`.

Chunking: ``chunk_size=None`` gives about ``CHUNKS_PER_SLOT`` (4) chunks per task slot of the cluster
(CPUs / ``task_cpus``): enough for load balance and a short tail, few enough that per-task overhead
(scheduling, the first chunk's Prophet import in each worker) is paid rarely.

Data: each task gets only its own slice and only the columns a fit reads (date, ticker, close and
any extra regressor columns named in the Prophet parameters),
so a worker never deserialises the whole frame; Ray puts each slice in the object store once.

Failures: a ticker whose data are broken or whose fit raises is recorded by the forecaster
(``failed_``) while the others fit. A chunk task whose worker dies is retried by Ray
(``max_retries``, system failures only); if it still fails, or if the task raised, its tickers go
into ``failures`` with the error and the job goes on. Parameter errors (unknown Prophet
parameters) and a frame without the needed columns raise at once on the driver.

Cost: ``task_cpu_s`` is the sum over completed tasks of the task's wall time x ``task_cpus`` (what
the reservation costs); a task that crashed is not in it (its time is unknown to the driver).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import ray
from tqdm import tqdm

from ensemble.models.prophet_model import ProphetForecaster

logger = logging.getLogger(__name__)

FIT_COLUMNS = ("date", "ticker", "close")
CHUNKS_PER_SLOT = 4
MAX_RETRIES = 2  # Ray retries of a chunk task whose worker died (not of Python exceptions)


@dataclass
class ProphetFanoutResult:
    model: ProphetForecaster  # every fitted ticker; model.failed_ == failures
    failures: dict[str, str]  # ticker -> reason (bad data, failed fit, failed chunk task)
    n_chunks: int
    tickers_per_node: dict[str, int]  # Ray node id -> tickers fitted there
    wall_s: float
    task_cpu_s: float  # sum over completed tasks of task wall x task_cpus


@dataclass
class ChunkResult:
    """What one chunk task returns."""

    model: ProphetForecaster
    wall_s: float
    node_id: str
    pid: int


@dataclass
class Chunk:
    index: int
    tickers: list[str]
    frame: pd.DataFrame = field(repr=False)


# -- work done in a worker (plain functions: the same code for Ray and for a multiprocessing baseline) --
def preload_prophet() -> None:
    """Import prophet and its Stan backend and let cmdstanpy configure its logger now.

    cmdstanpy sets up its logger (level DEBUG, its own handler) lazily, on first use, i.e. inside
    the first fit, after ``quiet_stan`` has set the level: each fresh worker would then print
    cmdstanpy's INFO lines on its first fit. Configured here, before any fit, ``quiet_stan`` holds."""
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    import cmdstanpy.utils
    import prophet  # noqa: F401

    cmdstanpy.utils.get_logger()


def fit_chunk(
    chunk: pd.DataFrame, horizons: Sequence[int], params: dict[str, Any]
) -> tuple[ProphetForecaster, float]:
    """Fit one ProphetForecaster on ``chunk``; returns it and the seconds it took (import included)."""
    t0 = time.perf_counter()
    preload_prophet()
    model = ProphetForecaster(horizons, **params).fit(chunk)
    return model, time.perf_counter() - t0


def warm_up() -> dict[str, Any]:
    """Import prophet and fit one tiny series, so that a worker's import and first-fit costs are paid.

    Returns the worker's pid, seconds taken and thread settings (to compare Ray and a Pool)."""
    t0 = time.perf_counter()
    preload_prophet()
    dates = pd.bdate_range("2020-01-01", periods=120)
    y = np.log(100.0) + 0.001 * np.arange(len(dates)) + 0.01 * np.sin(np.arange(len(dates)) / 5.0)
    frame = pd.DataFrame({"date": dates, "ticker": "WARM", "close": np.exp(y)})
    ProphetForecaster().fit(frame)
    return {
        "pid": os.getpid(),
        "seconds": time.perf_counter() - t0,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


@ray.remote
def _fit_chunk_task(chunk: pd.DataFrame, horizons: Sequence[int], params: dict[str, Any]) -> ChunkResult:
    model, wall = fit_chunk(chunk, horizons, params)
    return ChunkResult(model, wall, ray.get_runtime_context().get_node_id(), os.getpid())


@ray.remote
def _warm_up_task() -> dict[str, Any]:
    return {**warm_up(), "node_id": ray.get_runtime_context().get_node_id()}


# -- driver side -------------------------------------------------------------------------------------
def plan_chunk_size(n_tickers: int, cluster_cpus: float, task_cpus: float = 1.0) -> int:
    """Tickers per chunk for about ``CHUNKS_PER_SLOT`` chunks per task slot (CPUs / task_cpus)."""
    if n_tickers < 1:
        raise ValueError("plan_chunk_size: no tickers")
    slots = max(1, int(cluster_cpus // task_cpus)) if task_cpus > 0 else 1
    return max(1, math.ceil(n_tickers / (CHUNKS_PER_SLOT * slots)))


def split_chunks(train: pd.DataFrame, chunk_size: int, regressors: Sequence[str] = ()) -> list[Chunk]:
    """Contiguous chunks of the sorted tickers, each with only the columns a fit reads
    (date, ticker, close and the Prophet ``regressors``, if any)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    key = train["ticker"].astype(str).to_numpy()
    tickers = np.sort(pd.unique(key))
    codes = pd.Index(tickers).get_indexer(pd.Index(key))
    chunk_of_row = codes // chunk_size
    order = np.argsort(chunk_of_row, kind="stable")  # keeps each ticker's row order
    n_chunks = math.ceil(len(tickers) / chunk_size)
    bounds = np.r_[0, np.cumsum(np.bincount(chunk_of_row, minlength=n_chunks))]
    cols = pd.DataFrame(
        {
            "date": train["date"].to_numpy(),
            "ticker": key,
            "close": train["close"].to_numpy(dtype=np.float64, na_value=np.nan),
            **{r: train[r].to_numpy(dtype=np.float64, na_value=np.nan) for r in regressors},
        }
    )
    return [
        Chunk(
            index=i,
            tickers=[str(t) for t in tickers[i * chunk_size : (i + 1) * chunk_size]],
            frame=cols.iloc[order[bounds[i] : bounds[i + 1]]].reset_index(drop=True),
        )
        for i in range(n_chunks)
    ]


def _reason(exc: BaseException) -> str:
    """A one-line reason for a failed chunk task (the full error goes to the log)."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"chunk task failed: {first[:300]}"


def run_chunks(
    task: Any,
    chunks: Sequence[Chunk],
    *,
    horizons: Sequence[int],
    params: dict[str, Any],
    task_cpus: float = 1.0,
    max_retries: int = MAX_RETRIES,
    progress: bool = True,
) -> ProphetFanoutResult:
    """Submit ``task`` (a Ray remote function returning :class:`ChunkResult`) once per chunk, collect
    with a ``ray.wait`` loop and merge. A chunk that fails after Ray's retries is reported, not raised."""
    t0 = time.perf_counter()
    n_tickers = sum(len(c.tickers) for c in chunks)
    opts = task.options(num_cpus=task_cpus, max_retries=max_retries, retry_exceptions=False)
    pending = {opts.remote(c.frame, tuple(horizons), dict(params)): c for c in chunks}
    parts: dict[int, ProphetForecaster] = {}
    chunk_failures: dict[str, str] = {}
    per_node: Counter[str] = Counter()
    task_cpu_s = 0.0
    with tqdm(total=n_tickers, unit="ticker", desc="prophet", disable=not progress, smoothing=0.1) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                chunk = pending.pop(ref)
                try:
                    res: ChunkResult = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    reason = _reason(exc)
                    logger.warning(
                        "prophet: chunk %d (%d tickers, %s..%s) failed after Ray's retries: %s",
                        chunk.index, len(chunk.tickers), chunk.tickers[0], chunk.tickers[-1], exc,
                    )  # fmt: skip
                    chunk_failures.update(dict.fromkeys(chunk.tickers, reason))
                else:
                    parts[chunk.index] = res.model
                    per_node[res.node_id] += len(res.model.models_)
                    task_cpu_s += res.wall_s * task_cpus
                bar.update(len(chunk.tickers))
                failed = sum(len(p.failed_) for p in parts.values()) + len(chunk_failures)
                bar.set_postfix(failed=failed, refresh=False)

    if parts:
        model = ProphetForecaster.merge([parts[i] for i in sorted(parts)])
    else:  # every chunk failed: an empty, fitted model that knows why
        model = ProphetForecaster(horizons, **params)
        model.models_, model.failed_, model.fit_seconds_ = {}, {}, {}
    model.failed_.update(chunk_failures)
    model.failed_ = dict(sorted(model.failed_.items()))
    wall = time.perf_counter() - t0
    logger.info(
        "prophet fan-out: %d tickers fitted, %d failed, %d chunks on %d node(s), %.1f s wall, %.0f task CPU-s",
        len(model.models_), len(model.failed_), len(chunks), len(per_node), wall, task_cpu_s,
    )  # fmt: skip
    return ProphetFanoutResult(
        model=model,
        failures=dict(model.failed_),
        n_chunks=len(chunks),
        tickers_per_node=dict(per_node),
        wall_s=wall,
        task_cpu_s=task_cpu_s,
    )


def fit_prophet_fanout(
    train: pd.DataFrame,
    *,
    horizons: Sequence[int],
    params: dict[str, Any],
    chunk_size: int | None = None,
    task_cpus: float = 1.0,
    progress: bool = True,
) -> ProphetFanoutResult:
    """Fit Prophet per ticker of ``train`` (a frame with date, ticker, close) over Ray tasks.

    ``chunk_size``: tickers per task (None: about 4 chunks per task slot of the cluster).
    ``task_cpus``: CPUs each task reserves. Ray must be initialised (``ray.init`` or ``jobs.train``)."""
    t0 = time.perf_counter()
    missing = [c for c in FIT_COLUMNS if c not in train.columns]
    if missing:
        raise ValueError(f"prophet fan-out: training frame lacks column(s) {missing}")
    if task_cpus <= 0:
        raise ValueError(f"task_cpus must be > 0, got {task_cpus}")
    regressors = ProphetForecaster(horizons, **params).regressors  # bad parameters raise here, not in tasks
    missing = [c for c in regressors if c not in train.columns]
    if missing:
        raise ValueError(f"prophet fan-out: training frame lacks regressor column(s) {missing}")
    if train.empty:
        raise ValueError("prophet fan-out: the training frame has no rows")
    if not ray.is_initialized():
        raise RuntimeError(
            "prophet fan-out: Ray is not initialised (call ray.init or jobs.train.connect_ray)"
        )
    n_tickers = int(train["ticker"].astype(str).nunique())
    if chunk_size is None:
        chunk_size = plan_chunk_size(n_tickers, float(ray.cluster_resources().get("CPU", 1.0)), task_cpus)
    chunks = split_chunks(train, chunk_size, regressors)
    logger.info("prophet fan-out: %d tickers in %d chunks of <= %d", n_tickers, len(chunks), chunk_size)
    result = run_chunks(
        _fit_chunk_task, chunks, horizons=horizons, params=params, task_cpus=task_cpus, progress=progress
    )
    result.wall_s = time.perf_counter() - t0
    return result


def warm_workers(n: int, task_cpus: float = 1.0) -> list[dict[str, Any]]:
    """Run ``n`` concurrent warm-up tasks (prophet import + one tiny fit); returns what each reported.

    Optional: a fan-out works cold too (each worker's first chunk then pays the import)."""
    opts = _warm_up_task.options(num_cpus=task_cpus)
    return list(ray.get([opts.remote() for _ in range(n)]))
