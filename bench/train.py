"""The full training job (jobs.train.run) on the default config: wall time and core use per stage, cost,
peak memory, validation Rank IC, and the previous bottleneck re-measured beside its fix.

Default: cluster/train.yaml (the synthetic market, 500 tickers x 1,260 days, every model, 30 tuning
trials per tree model, the cost limit of the config) on a private local Ray with every core.

Prints, from one run:
* per stage: wall seconds, billed CPU-seconds and $, and the core utilisation while it ran (busy
  CPU-seconds of the driver and every process it started, from /proc, / (wall x cores)): an idle core
  shows as a ratio below 1;
* the cost report (why tuning stopped early if it did) and peak memory (driver; driver + Ray);
* the validation Rank IC of each model and of the ensemble beside the oracle's;
* the previous bottleneck, Random Forest tuning, in the same run: one trial as it was in the 2,409 s
  run (32 trees on every training date) against one trial as it is now (every
  ``training.tuning_date_stride``-th date) with the same parameters and thread count, alternated and
  repeated (median of ``--repeat``): the ratio is the gain per trial.

Usage: ``.venv/bin/python bench/train.py [--config cluster/train.yaml] [--set training.tuning_trials=5]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from ensemble.config import load_settings  # noqa: E402
from ensemble.cost import CostMeter  # noqa: E402
from jobs.train import format_summary, parse_overrides, prepare_data, run  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")

# the full default job before the one training path (cluster/train.yaml on this 2-core box): each
# model's validation Rank IC at 5 days, printed beside this run's (the speed-up must not cost skill)
PREVIOUS_RUN = "2,527 s wall, before issue 10"
PREVIOUS_VALID_IC_H5 = {
    "lstm": 0.034,
    "transformer": 0.036,
    "xgboost": 0.029,
    "lightgbm": 0.028,
    "random_forest": 0.049,
}
# the last full run before the trials' date subsample and min_delta (2,409 s wall, same defaults)
LAST_RUN = "2,409 s run"
LAST_VALID_IC_H5 = {
    "lstm": 0.0617,
    "transformer": 0.0783,
    "xgboost": 0.0928,
    "lightgbm": 0.0898,
    "random_forest": 0.0916,
}


CLK = os.sysconf("SC_CLK_TCK")


def _tree_usage(root: int) -> tuple[int, float]:
    """(summed RSS in bytes, summed CPU seconds incl. reaped children) of ``root`` and its descendants."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parent[int(d)] = int(fields[1])
            # utime, stime, cutime, cstime (fields 14-17 of stat; here shifted by the 2 before ')')
            cpu[int(d)] = sum(int(x) for x in fields[11:15]) / CLK
        except (OSError, ValueError, IndexError):
            continue
    members, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p and c not in members:
                members.add(c)
                frontier.append(c)
    rss = 0
    for pid in members:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                rss += int(fh.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return rss, sum(cpu.get(pid, 0.0) for pid in members)


class Sampler(threading.Thread):
    """Samples the process tree every ``interval`` s: peak RSS and a (time, CPU-seconds) series.

    The CPU series never decreases: a process that exits takes its CPU time with it (unless reaped
    by a member), so each sample keeps the running maximum plus what disappeared."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, 0, threading.Event()
        self.series: list[tuple[float, float]] = []

    def run(self) -> None:
        me = os.getpid()
        lost, last = 0.0, 0.0
        while not self._done.is_set():
            rss, cpu = _tree_usage(me)
            if cpu < last:  # members exited: keep what they had used
                lost += last - cpu
            last = cpu
            self.peak = max(self.peak, rss)
            self.series.append((time.time(), cpu + lost))
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak

    def busy(self, start: float, end: float) -> float:
        """CPU-seconds used between ``start`` and ``end`` (linear between samples)."""
        if len(self.series) < 2:
            return float("nan")
        t = np.array([x[0] for x in self.series])
        c = np.array([x[1] for x in self.series])
        return float(np.interp(end, t, c) - np.interp(start, t, c))


def rf_trial_seconds(prep, settings, repeat: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median wall seconds of one Random Forest tuning trial as it was in the 2,409 s run (every
    training date) and as it is (every ``tuning_date_stride``-th date), same parameters, alternated."""
    from ensemble.models import get_model_class
    from jobs.ray_tune_trees import every_nth_date

    cls = get_model_class("random_forest")
    h = 5 if 5 in settings.horizons else min(settings.horizons)
    n_jobs = max(1, round(settings.ray.trial_cpus))
    params = {**cls.trial_overrides, "random_state": settings.training.seed, "n_jobs": n_jobs}
    strided = every_nth_date(prep.train, settings.training.tuning_date_stride)
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeat):
        for label, train in (("before", prep.train), ("after", strided)):
            t0 = time.perf_counter()
            m = cls(horizons=(h,), **params).fit(train, prep.valid)
            m.predict(prep.valid)
            times[label].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "cluster" / "train.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="write the whole summary here")
    ap.add_argument("--repeat", type=int, default=1, help="repeats of the before/after trial timing")
    ap.add_argument("--registry", help="keep the trained version in this registry (default: a temporary one)")
    args = ap.parse_args()
    settings = load_settings(args.config, parse_overrides(args.set))
    cores = os.cpu_count() or 1
    sampler = Sampler()
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        meter = CostMeter.from_config(settings.training)
        prep = prepare_data(settings, meter)
        root = args.registry or str(Path(tmp) / "registry")
        summary = run(settings, registry_root=root, progress=False, prepared=prep)
    tree_peak = sampler.stop()
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timeline = meter.report()["timeline"] + summary["cost"]["timeline"]
    if args.json:  # first: whatever the printing below does, the figures are kept
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))

    syn = settings.synthetic
    print(f"\n== bench/train.py: {settings.data.source} ({syn.n_tickers} x {syn.n_days} when synthetic), "
          f"{cores} CPUs, models {settings.training.models}")  # fmt: skip
    print(format_summary(summary))
    print(f"\nstages ({cores} cores; util = busy CPU-s of driver + Ray / (wall x cores)):")
    print(f"  {'stage':<26}{'wall s':>9}{'busy CPU-s':>12}{'util':>7}{'billed CPU-s':>14}{'$':>9}")
    spans: dict[str, list[tuple[float, float]]] = {}
    for t in timeline:
        spans.setdefault(t["stage"], []).append((t["start"], t["end"]))
    stages = {**meter.report()["stages"], **summary["cost"]["stages"]}
    for name, st in stages.items():
        busy = sum(sampler.busy(a, b) for a, b in spans.get(name, []))
        wall = sum(b - a for a, b in spans.get(name, [])) or st["wall_s"]
        util = busy / (wall * cores) if wall > 0 and spans.get(name) else float("nan")
        print(f"  {name:<26}{wall:>9.1f}{busy:>12.0f}{util:>7.2f}{st['cpu_s']:>14.0f}{st['usd']:>9.4f}")
    total = summary["wall_s"]["total"]
    t0, t1 = min(t["start"] for t in timeline), max(t["end"] for t in timeline)
    print(f"  {'total (job)':<26}{total:>9.1f}{sampler.busy(t0, t1):>12.0f}"
          f"{sampler.busy(t0, t1) / ((t1 - t0) * cores):>7.2f}")  # fmt: skip
    cost = summary["cost"]
    print(f"cost estimate: ${cost['total_usd']:.4f} (limit ${cost['limit_usd']:.2f})")
    for why in cost.get("stopped", []):
        print(f"  budget: {why}")
    for name, d in summary["details"].items():
        if "trials_run" in d:
            print(f"  {name}: {d['trials_run']} of {d['trials_requested']} trials; stop: {d['stop_reason']}")
    print(
        f"peak memory: driver {driver_peak / 2**20:.0f} MiB; driver + Ray processes {tree_peak / 2**20:.0f} MiB"
    )
    ref = {k: v for k, v in PREVIOUS_VALID_IC_H5.items() if k in summary["metrics"]}
    if ref and 5 in settings.horizons:
        print(f"validation Rank IC at 5 days, this run beside the previous full run ({PREVIOUS_RUN}):")
        for name, before in ref.items():
            now = summary["metrics"][name].get("valid_rank_ic_h5", float("nan"))
            last = LAST_VALID_IC_H5.get(name, float("nan"))
            print(
                f"  {name:<14} now {now:+.4f}   before {before:+.4f}   change {now - before:+.4f}"
                f"   ({LAST_RUN}: {last:+.4f})"
            )
    if "random_forest" in settings.training.models and args.repeat > 0:
        rf = rf_trial_seconds(prep, settings, args.repeat)
        print(
            f"previous bottleneck, one random_forest tuning trial (median of {args.repeat}, alternated): "
            f"before {rf['before']:.1f} s, now {rf['after']:.1f} s: {rf['before'] / rf['after']:.2f}x faster"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
