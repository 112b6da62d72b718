"""The full training job (jobs.train.run) on the default config: wall time per stage, cost, peak memory.

Default: cluster/train.yaml (the synthetic market, 500 tickers x 1,260 days, every model, 30 tuning
trials per tree model, the cost limit of the config) on a private local Ray with every core.

Prints, from one run:
* wall seconds per stage (data + features, and per model: fit + validation), also in units of one
  ``groupby('ticker').rolling(20).mean()`` pass over the same panel timed in the same run (this machine
  is shared and noisy: the ratio travels better than the seconds);
* the cost report (CPU- and GPU-seconds and $ per stage, the limit, why tuning stopped early if it did);
* peak memory: the driver's peak RSS and the peak of the summed RSS of the driver and every process it
  started (the local Ray: raylet, GCS, workers), sampled every 0.5 s from /proc;
* the validation Rank IC of each model and of the ensemble beside the oracle's.

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

from ensemble.config import load_settings  # noqa: E402
from ensemble.data.sources import load_prices  # noqa: E402
from jobs.train import format_summary, parse_overrides, run  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of ``root`` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    members, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p and c not in members:
                members.add(c)
                frontier.append(c)
    total = 0
    for pid in members:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, 0, threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._done.is_set():
            self.peak = max(self.peak, _tree_rss(me))
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def rolling_baseline(settings) -> float:  # type: ignore[no-untyped-def]
    prices, _ = load_prices(settings)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        prices.groupby("ticker", sort=False)["close"].rolling(20).mean()
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "cluster" / "train.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="write the whole summary here")
    args = ap.parse_args()
    settings = load_settings(args.config, parse_overrides(args.set))
    base = rolling_baseline(settings)
    sampler = PeakSampler()
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        summary = run(settings, registry_root=str(Path(tmp) / "registry"), progress=False)
    tree_peak = sampler.stop()
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.json:  # first: whatever the printing below does, the figures are kept
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))

    syn = settings.synthetic
    print(f"\n== bench/train.py: {settings.data.source} ({syn.n_tickers} x {syn.n_days} when synthetic), "
          f"{os.cpu_count()} CPUs, models {settings.training.models}")  # fmt: skip
    print(f"baseline groupby('ticker').rolling(20).mean() over close: {base:.3f} s")
    print(format_summary(summary))
    print("\nstage wall times:")
    cost = summary["cost"]
    for name, st in cost["stages"].items():
        print(f"  {name:<24}{st['wall_s']:>9.1f} s  = {st['wall_s'] / base:>8.0f}x baseline   "
              f"{st['cpu_s']:>9.0f} CPU-s  ${st['usd']:.4f}")  # fmt: skip
    total = summary["wall_s"]["total"]
    print(f"  {'total':<24}{total:>9.1f} s  = {total / base:>8.0f}x baseline")
    print(f"cost estimate: ${cost['total_usd']:.4f} (limit ${cost['limit_usd']:.2f})")
    for why in cost.get("stopped", []):
        print(f"  budget: {why}")
    for name, d in summary["details"].items():
        if "trials_run" in d:
            print(f"  {name}: {d['trials_run']} of {d['trials_requested']} trials; stop: {d['stop_reason']}")
    print(
        f"peak memory: driver {driver_peak / 2**20:.0f} MiB; driver + Ray processes {tree_peak / 2**20:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
