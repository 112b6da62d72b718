"""Cost accounting for a training run: CPU- and GPU-seconds per named stage, priced per hour.

Two ways to meter a stage:

* ``with meter.stage("features", cpus=2):`` bills wall time x the *reserved* resources, the way a
  cloud bills cores that are held whether busy or idle;
* ``meter.record("prophet", cpu_s=..., gpu_s=...)`` adds seconds measured elsewhere (e.g. summed over
  Ray tasks: task wall x the CPUs each task reserved).

A stage name may be used more than once; its seconds add up. The time of a ``stage`` still open
counts in :attr:`CostMeter.spent_usd` as it runs, so a loop inside a metered stage (e.g. one adding
hyperparameter trials) can ask :meth:`CostMeter.would_exceed` before each step. Why a stage stopped
early is recorded with :meth:`CostMeter.note_stop` and appears in :meth:`CostMeter.report`.

Prices and the limit come from :class:`ensemble.config.TrainingConfig` (``cpu_hour_usd``,
``gpu_hour_usd``, ``cost_limit_usd``): :meth:`CostMeter.from_config`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ensemble.config import TrainingConfig

SECONDS_PER_HOUR = 3600.0


@dataclass
class _Usage:
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class _Open:
    name: str
    cpus: float
    gpus: float
    t0: float


def _non_negative(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


class CostMeter:
    """CPU/GPU-seconds per stage, priced at ``cpu_hour_usd`` / ``gpu_hour_usd``, against ``limit_usd``.

    Thread-safe: stages may be recorded from callbacks running on other threads."""

    def __init__(self, cpu_hour_usd: float, gpu_hour_usd: float, limit_usd: float) -> None:
        self.cpu_hour_usd = _non_negative("cpu_hour_usd", cpu_hour_usd)
        self.gpu_hour_usd = _non_negative("gpu_hour_usd", gpu_hour_usd)
        self.limit_usd = _non_negative("limit_usd", limit_usd)
        self._stages: dict[str, _Usage] = {}
        self._open: dict[int, _Open] = {}
        self._next_id = 0
        self._stopped: list[str] = []
        self._timeline: list[dict[str, Any]] = []  # closed stage blocks: name, start, end (epoch s)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: TrainingConfig) -> CostMeter:
        return cls(cfg.cpu_hour_usd, cfg.gpu_hour_usd, cfg.cost_limit_usd)

    # -- metering -------------------------------------------------------------------------------------
    @contextmanager
    def stage(self, name: str, *, cpus: float = 1.0, gpus: float = 0.0) -> Iterator[None]:
        """Bill the wall time of the block x the reserved ``cpus`` / ``gpus`` to stage ``name``.

        The time is billed even when the block raises (reserved resources are paid for)."""
        cpus = _non_negative("cpus", cpus)
        gpus = _non_negative("gpus", gpus)
        with self._lock:
            key = self._next_id
            self._next_id += 1
            self._stages.setdefault(name, _Usage())
            self._open[key] = _Open(name, cpus, gpus, time.perf_counter())
        start = time.time()
        try:
            yield
        finally:
            with self._lock:
                o = self._open.pop(key)
                wall = time.perf_counter() - o.t0
                self._timeline.append({"stage": name, "start": start, "end": start + wall})
                u = self._stages[name]
                u.wall_s += wall
                u.cpu_s += wall * o.cpus
                u.gpu_s += wall * o.gpus

    def record(self, stage: str, *, cpu_s: float = 0.0, gpu_s: float = 0.0, wall_s: float = 0.0) -> None:
        """Add explicitly measured CPU-/GPU-seconds (and optionally wall seconds) to ``stage``."""
        cpu = _non_negative("cpu_s", cpu_s)
        gpu = _non_negative("gpu_s", gpu_s)
        wall = _non_negative("wall_s", wall_s)
        with self._lock:
            u = self._stages.setdefault(stage, _Usage())
            u.cpu_s += cpu
            u.gpu_s += gpu
            u.wall_s += wall

    def note_stop(self, stage: str, reason: str) -> None:
        """Record why ``stage`` stopped early (e.g. the budget would be passed); listed in the report."""
        with self._lock:
            self._stopped.append(f"{stage}: {reason}")

    # -- pricing --------------------------------------------------------------------------------------
    def estimate_usd(self, cpu_s: float = 0.0, gpu_s: float = 0.0) -> float:
        """The price of ``cpu_s`` CPU-seconds and ``gpu_s`` GPU-seconds."""
        cpu = _non_negative("cpu_s", cpu_s)
        gpu = _non_negative("gpu_s", gpu_s)
        return (cpu * self.cpu_hour_usd + gpu * self.gpu_hour_usd) / SECONDS_PER_HOUR

    def _usage(self) -> dict[str, _Usage]:
        """Closed usage plus the time so far of the stages still open (caller holds the lock)."""
        out = {k: _Usage(u.cpu_s, u.gpu_s, u.wall_s) for k, u in self._stages.items()}
        now = time.perf_counter()
        for o in self._open.values():
            wall = now - o.t0
            u = out[o.name]
            u.wall_s += wall
            u.cpu_s += wall * o.cpus
            u.gpu_s += wall * o.gpus
        return out

    @property
    def spent_usd(self) -> float:
        """Everything metered so far, including the running time of open stages."""
        with self._lock:
            usage = self._usage()
        return sum(self.estimate_usd(u.cpu_s, u.gpu_s) for u in usage.values())

    def stage_usd(self, name: str) -> float:
        """What stage ``name`` has cost so far (0 for a stage never metered), its open time included."""
        with self._lock:
            u = self._usage().get(name)
        return 0.0 if u is None else self.estimate_usd(u.cpu_s, u.gpu_s)

    @property
    def remaining_usd(self) -> float:
        """What is left of the limit (0 once it is passed)."""
        return max(0.0, self.limit_usd - self.spent_usd)

    def would_exceed(self, extra_usd: float) -> bool:
        """True when spending ``extra_usd`` more would pass the limit."""
        return self.spent_usd + _non_negative("extra_usd", extra_usd) > self.limit_usd

    # -- report ---------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """A JSON-ready summary: per stage ``cpu_s``, ``gpu_s``, ``wall_s``, ``usd``; totals; the limit
        and the prices; ``stopped`` (the reasons given to :meth:`note_stop`, in order); ``timeline``
        (every closed ``stage`` block: its name, start and end in seconds since the epoch)."""
        with self._lock:
            usage = self._usage()
            stopped = list(self._stopped)
            timeline = [dict(t) for t in self._timeline]
        stages = {
            name: {
                "cpu_s": u.cpu_s,
                "gpu_s": u.gpu_s,
                "wall_s": u.wall_s,
                "usd": self.estimate_usd(u.cpu_s, u.gpu_s),
            }
            for name, u in usage.items()
        }
        total_usd = sum(s["usd"] for s in stages.values())
        return {
            "stages": stages,
            "total_cpu_s": sum(u.cpu_s for u in usage.values()),
            "total_gpu_s": sum(u.gpu_s for u in usage.values()),
            "total_usd": total_usd,
            "limit_usd": self.limit_usd,
            "remaining_usd": max(0.0, self.limit_usd - total_usd),
            "over_limit": total_usd > self.limit_usd,
            "cpu_hour_usd": self.cpu_hour_usd,
            "gpu_hour_usd": self.gpu_hour_usd,
            "stopped": stopped,
            "timeline": timeline,
        }
