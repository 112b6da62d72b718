"""jobs.train under a tiny cost budget: fewer tuning trials run than were asked for, and the version's
manifest says why (and what the run cost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble.config import load_settings
from ensemble.registry import ModelRegistry
from jobs.train import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_tiny_budget_runs_fewer_trials_and_the_manifest_says_why(ray_local, tmp_path: Path) -> None:
    # $1 per CPU-second: the data and feature stages alone cost a few dollars; $12 leaves a few
    # seconds of one CPU for tuning, far less than the 200 trials asked for need (a tenth of a second
    # each at the least, Tune's overhead included). Should the early stages eat the whole budget on a
    # slow machine, no trial runs at all and the reason says so: still fewer, still explained.
    settings = load_settings(
        overrides={
            "synthetic": {"n_tickers": 20, "n_days": 300, "seed": 2},
            "features": {"selection_k": 15},
            "training": {
                "training_days": 200,
                "models": ["xgboost"],
                "tuning_trials": 200,
                "cpu_hour_usd": 3600.0,
                "cost_limit_usd": 12.0,
            },
            "ray": {"trial_cpus": 1.0, "max_concurrent_trials": 1, "storage_path": str(tmp_path / "ray")},
            "models": {"xgboost": {"n_estimators": 30, "n_jobs": 1}},
        }
    )
    summary = run(settings, registry_root=str(tmp_path / "registry"), progress=False)

    reg = ModelRegistry(tmp_path / "registry")
    man = reg.manifest(summary["version"])
    assert man["models"] == ["xgboost"]
    details = reg.load_extra(summary["version"], "training")["models"]["xgboost"]
    assert details["trials_requested"] == 200
    assert details["trials_run"] < 200
    assert details["stop_reason"].startswith("cost budget")
    stopped = man["cost"]["stopped"]
    assert len(stopped) == 1 and stopped[0] == f"xgboost.tune: {details['stop_reason']}"
    assert man["cost"]["limit_usd"] == 12.0 and man["cost"]["total_usd"] > 0
    assert {"data", "features", "xgboost.refit"} <= set(man["cost"]["stages"])
    # a model was still fitted and validated: the best trial's configuration, or the defaults
    assert "valid_rank_ic_h5" in man["metrics"]["xgboost"]
