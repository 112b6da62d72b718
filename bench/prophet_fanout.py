"""Prophet fan-out benchmark: Ray tasks over chunks of tickers vs a multiprocessing.Pool, same run.

Fits Prophet for every ticker of the synthetic market (default 500 tickers x 1,000 days, the default
``SyntheticConfig`` otherwise) with the same chunks (``jobs.ray_prophet.split_chunks``) and the same
chunk function (``jobs.ray_prophet.fit_chunk``) two ways:

* Pool: ``multiprocessing`` (spawn: fresh interpreters, like Ray's workers) with P processes, one
  BLAS/OpenMP thread each (what Ray gives a task that reserves 1 CPU);
* Ray: :func:`jobs.ray_prophet.fit_prophet_fanout` on a fresh private local Ray with ``num_cpus=P``
  (``RAY_AUTH_MODE=disabled``, no dashboard), shut down after each run.

P = ``os.cpu_count()``. Start-up is counted apart: both sides first warm every worker the same way
(``jobs.ray_prophet.warm_up``: import prophet + one tiny fit; Ray also pays ``ray.init``), then the
fits are timed (chunking, the fits, collecting and merging the parts). The machine is shared and its
speed drifts, so the runs alternate (``--rounds 2``: Pool, Ray, Ray, Pool) and the totals are compared.
Prints:

* throughput (fits/s) of each and Ray/Pool (aim >= 0.9), with warm workers and with start-up included;
* seconds per fit in each against a bare Prophet fit: ``prophet.Prophet(...).fit`` on a sample of
  tickers, one at a time in the driver, timed at the start and after every run (mean): wall per fit
  over bare (1 / the parallel speed-up), and in-task fit time over bare (the per-fit overhead or
  contention inside the workers), also matched ticker by ticker on the sample;
* a check that both give the same fitted tickers, failures and (on a sample) identical predictions.

Usage: ``.venv/bin/python bench/prophet_fanout.py [--tickers N --days N --rounds N --chunk-size N]``
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

from ensemble.config import DEFAULT_HORIZONS, SyntheticConfig
from ensemble.data.synthetic import generate_market
from ensemble.models.prophet_model import ProphetForecaster, quiet_stan
from jobs.ray_prophet import fit_chunk, plan_chunk_size, preload_prophet, split_chunks, warm_up

HORIZONS = tuple(DEFAULT_HORIZONS)
PARAMS: dict[str, Any] = {}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def bare_fits(train: pd.DataFrame, tickers: list[str]) -> dict[str, float]:
    """Seconds of one bare ``prophet.Prophet(...).fit`` (same settings as ProphetForecaster) per ticker,
    one after another in this process, after one untimed fit."""
    preload_prophet()
    out = {}
    with quiet_stan():
        for i, t in enumerate([tickers[0], *tickers]):
            g = train[train["ticker"] == t]
            hist = pd.DataFrame({"ds": g["date"].to_numpy(), "y": np.log(g["close"].to_numpy())})
            t0 = time.perf_counter()
            ProphetForecaster()._new_model().fit(hist)
            if i:
                out[t] = time.perf_counter() - t0
    return out


def run_pool(train: pd.DataFrame, procs: int, chunk_size: int) -> dict[str, Any]:
    """The baseline: a spawn Pool of ``procs`` processes, one ``fit_chunk`` call per chunk.

    Its workers get one BLAS/OpenMP thread each, as Ray gives a task reserving 1 CPU."""
    ctx = mp.get_context("spawn")
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
    t0 = time.perf_counter()
    try:
        pool = ctx.Pool(procs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        warm = [a.get() for a in [pool.apply_async(warm_up) for _ in range(procs)]]
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        chunks = split_chunks(train, chunk_size)
        asyncs = [pool.apply_async(fit_chunk, (c.frame, HORIZONS, PARAMS)) for c in chunks]
        results = [a.get() for a in asyncs]
        model = ProphetForecaster.merge([m for m, _ in results])
        wall = time.perf_counter() - t1
    finally:
        pool.close()
        pool.join()
    return {
        "model": model,
        "wall_s": wall,
        "startup_s": startup,
        "init_s": 0.0,
        "warm": warm,
        "n_chunks": len(chunks),
        "task_cpu_s": sum(w for _, w in results),
    }


def run_ray(train: pd.DataFrame, procs: int, chunk_size: int, progress: bool) -> dict[str, Any]:
    """The fan-out on a fresh private local Ray with ``num_cpus=procs``; shut down before returning."""
    import ray

    from jobs.ray_prophet import fit_prophet_fanout, warm_workers

    os.environ["RAY_AUTH_MODE"] = "disabled"
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=procs, include_dashboard=False)
    try:
        init = time.perf_counter() - t0
        warm = warm_workers(procs)
        startup = time.perf_counter() - t0
        r = fit_prophet_fanout(
            train, horizons=HORIZONS, params=PARAMS, chunk_size=chunk_size, task_cpus=1.0, progress=progress
        )
    finally:
        ray.shutdown()
    return {
        "model": r.model,
        "wall_s": r.wall_s,
        "startup_s": startup,
        "init_s": init,
        "warm": warm,
        "n_chunks": r.n_chunks,
        "task_cpu_s": r.task_cpu_s,
        "nodes": r.tickers_per_node,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--days", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunk-size", type=int, default=None, help="default: about 4 chunks per process")
    ap.add_argument("--rounds", type=int, default=2, help="Pool+Ray rounds, order alternating (ABBA...)")
    ap.add_argument("--bare-sample", type=int, default=8, help="tickers fitted bare at each checkpoint")
    ap.add_argument("--progress", action="store_true", help="show Ray's progress bar (stderr)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    t = time.perf_counter()
    prices = generate_market(SyntheticConfig(n_tickers=args.tickers, n_days=args.days)).prices
    train = prices[["date", "ticker", "close"]]
    gen_s = time.perf_counter() - t
    all_tickers = sorted(train["ticker"].unique())
    n = len(all_tickers)
    chunk_size = args.chunk_size or plan_chunk_size(n, args.procs)
    step = max(1, n // max(1, args.bare_sample))
    sample = all_tickers[step // 2 :: step][: args.bare_sample]

    bare: list[dict[str, float]] = [bare_fits(train, sample)]
    runs: list[tuple[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        for name in ("pool", "ray") if r % 2 == 0 else ("ray", "pool"):
            if name == "pool":
                runs.append((name, run_pool(train, args.procs, chunk_size)))
            else:
                runs.append((name, run_ray(train, args.procs, chunk_size, args.progress)))
            bare.append(bare_fits(train, sample))
    bare_mean = {t: float(np.mean([b[t] for b in bare])) for t in sample}
    bare_s = float(np.mean(list(bare_mean.values())))

    def agg(name: str, key: str) -> float:
        return float(sum(r[key] for m, r in runs if m == name))

    fits = {m: sum(len(r["model"].models_) for k, r in runs if k == m) for m in ("pool", "ray")}
    wall = {m: agg(m, "wall_s") for m in ("pool", "ray")}
    startup = {m: agg(m, "startup_s") for m in ("pool", "ray")}
    init = {m: agg(m, "init_s") for m in ("pool", "ray")}
    tp = {m: fits[m] / wall[m] for m in fits}
    e2e = {m: fits[m] / (wall[m] + startup[m]) for m in fits}
    per_fit = {m: wall[m] / fits[m] for m in fits}
    in_task = {
        m: float(
            np.mean([r["model"].fit_seconds_[t] for k, r in runs if k == m for t in r["model"].fit_seconds_])
        )
        for m in fits
    }
    # the sampled tickers' in-task fit time / their bare fit time (same tickers, matched)
    matched = {
        m: float(
            np.mean([r["model"].fit_seconds_[t] / bare_mean[t] for k, r in runs if k == m for t in sample])
        )
        for m in fits
    }

    def row(label: str, p: float, r: float, ratio: bool = True) -> str:
        rat = f"{r / p:>10.3f}" if ratio and p else f"{'':>10}"
        return f"  {label:<40}{p:>10.3f}{r:>10.3f}{rat}"

    first = runs[0][1]
    print(f"== bench/prophet_fanout.py: {n} tickers x {args.days} days, {args.procs} processes "
          f"(os.cpu_count()={os.cpu_count()}), {first['n_chunks']} chunks of <= {chunk_size} tickers, "
          f"{args.rounds} round(s) in the order {' '.join(m for m, _ in runs)}; market generated in {gen_s:.1f} s")  # fmt: skip
    print(f"bare Prophet fit, one at a time in the driver, on {len(sample)} sampled tickers at {len(bare)} "
          f"checkpoints (start, after each run): mean {bare_s:.3f} s per fit; per checkpoint "
          + " ".join(f"{np.mean(list(b.values())):.3f}" for b in bare))  # fmt: skip
    print(f"  {'(totals over rounds)':<40}{'Pool':>10}{'Ray':>10}{'Ray/Pool':>10}")
    print(row("start-up incl. warm-up (s)", startup["pool"], startup["ray"]))
    print(row("  of which ray.init (s)", init["pool"], init["ray"], ratio=False))
    print(row("fit wall (s)", wall["pool"], wall["ray"]))
    print(row("throughput, warm workers (fits/s)", tp["pool"], tp["ray"]))
    print(row("throughput, incl. start-up (fits/s)", e2e["pool"], e2e["ray"]))
    print(row("wall s per fit", per_fit["pool"], per_fit["ray"]))
    print(row("  / bare fit (1/speed-up)", per_fit["pool"] / bare_s, per_fit["ray"] / bare_s))
    print(row("mean in-task fit, all tickers (s)", in_task["pool"], in_task["ray"]))
    print(row("  / bare fit", in_task["pool"] / bare_s, in_task["ray"] / bare_s))
    print(row("in-task / bare, same sampled tickers", matched["pool"], matched["ray"]))
    print(row("task CPU-s (task wall x 1 CPU)", agg("pool", "task_cpu_s"), agg("ray", "task_cpu_s")))
    if args.rounds > 1:
        for r in range(args.rounds):
            pr = {m: res for m, res in runs[2 * r : 2 * r + 2]}
            ratio = (len(pr["ray"]["model"].models_) / pr["ray"]["wall_s"]) / (
                len(pr["pool"]["model"].models_) / pr["pool"]["wall_s"]
            )
            print(f"  round {r + 1}: Pool {pr['pool']['wall_s']:.1f} s, Ray {pr['ray']['wall_s']:.1f} s, "
                  f"throughput Ray/Pool {ratio:.3f}")  # fmt: skip
    print(f"THROUGHPUT RATIO Ray/Pool (warm workers): {tp['ray'] / tp['pool']:.3f} (aim >= 0.9); "
          f"including start-up: {e2e['ray'] / e2e['pool']:.3f}")  # fmt: skip
    for name in ("pool", "ray"):
        warm = [w for m, r in runs if m == name for w in r["warm"]]
        per_run = [len({w["pid"] for w in r["warm"]}) for m, r in runs if m == name]
        omp = sorted({str(w["omp_num_threads"]) for w in warm})
        print(f"{name}: warm-up reached {per_run} distinct worker processes of {args.procs} per run; "
              f"OMP_NUM_THREADS in workers: {', '.join(omp)}; "
              f"warm-up {statistics.median(w['seconds'] for w in warm):.2f} s per worker")  # fmt: skip
    print(f"ray: tickers fitted per node {[list(r['nodes'].values()) for m, r in runs if m == 'ray']}")

    pm = next(r["model"] for m, r in runs if m == "pool")
    rm = next(r["model"] for m, r in runs if m == "ray")
    same_tickers = pm.tickers_ == rm.tickers_ and pm.failed_ == rm.failed_
    check = sorted(rm.models_)[:: max(1, len(rm.models_) // 20)]
    frame = train[train["ticker"].isin(check)]
    frame = frame[frame["date"] >= frame["date"].max() - pd.Timedelta(days=30)].reset_index(drop=True)
    cols = [f"pred_h{h}" for h in HORIZONS]
    same_pred = np.array_equal(
        pm.predict(frame)[cols].to_numpy(), rm.predict(frame)[cols].to_numpy(), equal_nan=True
    )
    print(f"same fits: tickers and failures {'identical' if same_tickers else 'DIFFER'} "
          f"({len(rm.models_)} fitted, {len(rm.failed_)} failed); predictions on {len(check)} sampled "
          f"tickers {'bit-identical' if same_pred else 'DIFFER'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
