"""CostMeter: CPU-/GPU-seconds per stage, priced per hour, against a limit."""

from __future__ import annotations

import json
import time

import pytest

from ensemble.config import TrainingConfig
from ensemble.cost import CostMeter


def test_record_prices_cpu_and_gpu_seconds() -> None:
    m = CostMeter(cpu_hour_usd=0.36, gpu_hour_usd=3.6, limit_usd=1.0)
    m.record("prophet", cpu_s=1000.0)
    m.record("lstm", gpu_s=100.0, cpu_s=100.0)
    assert m.estimate_usd(cpu_s=1000.0) == pytest.approx(0.1)
    assert m.estimate_usd(gpu_s=100.0) == pytest.approx(0.1)
    assert m.spent_usd == pytest.approx(0.1 + 0.1 + 0.01)
    assert m.remaining_usd == pytest.approx(1.0 - 0.21)
    r = m.report()
    assert r["stages"]["prophet"] == pytest.approx({"cpu_s": 1000.0, "gpu_s": 0.0, "wall_s": 0.0, "usd": 0.1})
    assert r["stages"]["lstm"]["usd"] == pytest.approx(0.11)
    assert r["total_cpu_s"] == pytest.approx(1100.0) and r["total_gpu_s"] == pytest.approx(100.0)
    assert r["total_usd"] == pytest.approx(0.21) and r["limit_usd"] == 1.0
    assert r["over_limit"] is False and r["stopped"] == []


def test_record_accumulates_per_stage_name() -> None:
    m = CostMeter(3.6, 0.0, 10.0)
    m.record("xgboost", cpu_s=10.0)
    m.record("xgboost", cpu_s=5.0, wall_s=2.0)
    assert m.report()["stages"]["xgboost"] == pytest.approx(
        {"cpu_s": 15.0, "gpu_s": 0.0, "wall_s": 2.0, "usd": 0.015}
    )


def test_stage_bills_wall_time_times_reserved_resources() -> None:
    m = CostMeter(cpu_hour_usd=3600.0, gpu_hour_usd=36000.0, limit_usd=1e6)
    with m.stage("train", cpus=2, gpus=0.5):
        time.sleep(0.2)
    s = m.report()["stages"]["train"]
    assert 0.2 <= s["wall_s"] < 1.5
    assert s["cpu_s"] == pytest.approx(2 * s["wall_s"])
    assert s["gpu_s"] == pytest.approx(0.5 * s["wall_s"])
    assert s["usd"] == pytest.approx(s["cpu_s"] * 1.0 + s["gpu_s"] * 10.0)


def test_stage_with_zero_cpus_keeps_wall_time_only() -> None:
    m = CostMeter(1.0, 1.0, 1.0)
    with m.stage("driver", cpus=0.0):
        time.sleep(0.05)
    s = m.report()["stages"]["driver"]
    assert s["wall_s"] >= 0.05 and s["cpu_s"] == 0.0 and s["usd"] == 0.0


def test_stage_is_billed_when_the_block_raises() -> None:
    m = CostMeter(3600.0, 0.0, 100.0)
    with pytest.raises(RuntimeError), m.stage("boom", cpus=1):
        time.sleep(0.05)
        raise RuntimeError("x")
    assert m.report()["stages"]["boom"]["cpu_s"] >= 0.05


def test_open_stage_counts_while_running() -> None:
    m = CostMeter(cpu_hour_usd=3600.0, gpu_hour_usd=0.0, limit_usd=0.5)  # $1 per CPU-second
    with m.stage("tune", cpus=1):
        assert not m.would_exceed(0.0)
        time.sleep(0.2)
        assert m.spent_usd >= 0.2
        assert m.would_exceed(0.4)  # 0.2 spent + 0.4 > 0.5
        assert m.report()["stages"]["tune"]["cpu_s"] >= 0.2
    assert m.spent_usd >= 0.2


def test_would_exceed_and_remaining() -> None:
    m = CostMeter(cpu_hour_usd=3600.0, gpu_hour_usd=0.0, limit_usd=10.0)
    m.record("a", cpu_s=7.0)
    assert m.remaining_usd == pytest.approx(3.0)
    assert not m.would_exceed(3.0)  # reaching the limit exactly is allowed
    assert m.would_exceed(3.01)
    m.record("b", cpu_s=5.0)
    assert m.remaining_usd == 0.0  # never negative
    assert m.would_exceed(0.0)
    assert m.report()["over_limit"] is True


def test_note_stop_and_json_ready_report() -> None:
    m = CostMeter(0.05, 1.2, 5.0)
    m.record("xgboost", cpu_s=60.0)
    m.note_stop("xgboost", "12 of 30 trials: the next would pass the $5.00 limit")
    r = m.report()
    assert r["stopped"] == ["xgboost: 12 of 30 trials: the next would pass the $5.00 limit"]
    assert json.loads(json.dumps(r)) == r


def test_from_config_uses_training_prices() -> None:
    cfg = TrainingConfig(cost_limit_usd=2.5, cpu_hour_usd=0.1, gpu_hour_usd=2.0)
    m = CostMeter.from_config(cfg)
    assert (m.cpu_hour_usd, m.gpu_hour_usd, m.limit_usd) == (0.1, 2.0, 2.5)
    d = CostMeter.from_config(TrainingConfig())
    assert (d.cpu_hour_usd, d.gpu_hour_usd, d.limit_usd) == (0.05, 1.20, 5.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.record("a", cpu_s=-1.0),
        lambda m: m.record("a", gpu_s=float("nan")),
        lambda m: m.estimate_usd(cpu_s=float("inf")),
        lambda m: m.would_exceed(-0.1),
        lambda m: m.stage("a", cpus=-1).__enter__(),
    ],
)
def test_negative_or_non_finite_values_are_refused(call) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        call(CostMeter(1.0, 1.0, 1.0))


def test_negative_prices_are_refused() -> None:
    with pytest.raises(ValueError, match="cpu_hour_usd"):
        CostMeter(-0.1, 1.0, 1.0)
