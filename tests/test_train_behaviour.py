"""jobs.train.run, in-process on the module's local Ray: a model that fails is excluded and reported as
degraded (never replaced), every model failing fails the run, and a new version becomes production
only when its ensemble validation Rank IC at the shortest horizon beats production's (and never with
``promote=False``).

Models fail for real, inside their fit (the boosters are not in ``training.tuned_models``: a plain,
metered fit): LightGBM refuses ``num_leaves=1``, XGBoost an unknown objective (both pass config
validation: the keys are known). An untuned fit is billed for the threads it runs on. The horizons are (4, 10), so
the promotion metric (``valid_rank_ic_h4``) is not the registry's default (``valid_rank_ic_h5``)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ensemble.config import Settings, load_settings
from ensemble.cost import CostMeter
from ensemble.registry import ModelRegistry
from ensemble.training import Prepared, prepare_data
from jobs.train import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]

XGB = {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1}
LGB = {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1}
BASE: dict[str, Any] = {
    "horizons": [4, 10],
    "synthetic": {"n_tickers": 40, "n_days": 300, "seed": 3},
    "features": {"selection_k": 12},
    "training": {"training_stocks": 40, "training_days": 200, "tuning_trials": 1, "models": ["xgboost"]},
    "ray": {"trial_cpus": 1.0, "max_concurrent_trials": 1},
    "models": {"xgboost": XGB, "lightgbm": LGB},
}
METRIC = "valid_rank_ic_h4"  # the shortest horizon's


def _settings(signal: float = 1.0, **sections: dict[str, Any]) -> Settings:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    raw["synthetic"] = {**BASE["synthetic"], "signal_strength": signal}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return load_settings(overrides=raw)


@dataclass
class Data:
    settings: Settings
    prepared: Prepared


def _prepare(signal: float) -> Data:
    s = _settings(signal)
    tr = s.training
    return Data(s, prepare_data(s, CostMeter(tr.cpu_hour_usd, tr.gpu_hour_usd, tr.cost_limit_usd)))


@pytest.fixture(scope="module")
def strong() -> Data:
    return _prepare(4.0)  # a planted signal four times the calibrated default


@pytest.fixture(scope="module")
def weak() -> Data:
    return _prepare(0.0)  # no signal: nothing to learn


def _run(data: Data, root: Path, *, promote: bool, **sections: dict[str, Any]) -> dict[str, Any]:
    sections.setdefault("ray", {"storage_path": str(root.parent / "ray_results")})  # not the repo's
    s = _settings(data.settings.synthetic.signal_strength, **sections)
    return run(s, registry_root=str(root), promote=promote, progress=False, prepared=data.prepared)


def test_a_failing_model_is_excluded_and_reported_as_degraded(
    ray_local, strong: Data, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    summary = _run(
        strong,
        root,
        promote=False,
        training={"models": ["xgboost", "lightgbm"]},
        models={"lightgbm": {**LGB, "num_leaves": 1}},
    )
    assert summary["models"] == ["xgboost"]
    assert list(summary["degraded"]) == ["lightgbm"]
    why = summary["degraded"]["lightgbm"]
    assert "num_leaves" in why, why  # the model's own error, not a generic one
    assert "lightgbm" not in summary["metrics"] and "lightgbm" not in summary["details"]

    reg = ModelRegistry(root)
    man = reg.manifest(summary["version"])
    assert man["models"] == ["xgboost"]
    assert man["notes"] == [f"degraded lightgbm: {why}"]
    assert reg.load_extra(summary["version"], "training")["degraded"] == {"lightgbm": why}
    assert set(reg.load_version(summary["version"])) == {"xgboost"}

    # the ensemble is built from the healthy model alone, and validated on real forecasts
    assert reg.load_extra(summary["version"], "ensemble")["members"] == ["xgboost"]
    assert math.isfinite(man["metrics"]["ensemble"][METRIC])


def test_an_untuned_fit_is_billed_for_its_threads(ray_local, strong: Data, tmp_path: Path) -> None:
    # XGBoost is not tuned (training.tuned_models): its fit and its validation forecasts run on
    # n_jobs threads (every core for n_jobs <= 0), so each stage is billed that many CPU-seconds per
    # second of wall time
    for n_jobs, cpus in ((1, 1), (2, 2), (-1, os.cpu_count())):
        summary = _run(strong, tmp_path / f"registry{n_jobs}", promote=False,
                       models={"xgboost": {**XGB, "n_jobs": n_jobs}})  # fmt: skip
        stages = summary["cost"]["stages"]
        assert "xgboost.tune" not in stages, stages
        for stage in ("xgboost", "xgboost.validate"):
            u = stages[stage]
            assert u["wall_s"] > 0 and u["cpu_s"] == pytest.approx(cpus * u["wall_s"]), (n_jobs, stage, u)


def test_the_run_fails_when_every_model_fails(ray_local, strong: Data, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    with pytest.raises(RuntimeError, match="every model failed") as info:
        _run(
            strong,
            root,
            promote=True,
            training={"models": ["xgboost", "lightgbm"]},
            models={
                "xgboost": {**XGB, "objective": "no_such_objective"},
                "lightgbm": {**LGB, "num_leaves": 1},
            },
        )
    assert "'xgboost'" in str(info.value) and "'lightgbm'" in str(info.value)
    assert "no_such_objective" in str(info.value) and "num_leaves" in str(info.value)
    assert not root.exists() or ModelRegistry(root).list_versions() == []  # nothing was stored


def test_a_new_version_is_promoted_only_when_it_beats_production(
    ray_local, strong: Data, weak: Data, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    reg = ModelRegistry(root)

    def ic(summary: dict[str, Any]) -> float:
        return float(summary["metrics"]["ensemble"][METRIC])

    # 1. the first version (no signal in its data) becomes production: there is nothing to beat
    first = _run(weak, root, promote=True)
    assert first["promotion"]["promoted"] and reg.resolve("production") == first["version"]

    # 2. a better version, stored with promote=False: production and every alias stay as they were
    aliases = reg.aliases()
    better = _run(strong, root, promote=False)
    assert ic(better) > ic(first) + 0.02, (ic(better), ic(first))  # it would have been promoted
    assert better["promotion"] is None
    assert reg.aliases() == aliases and reg.resolve("production") == first["version"]

    # 3. the same better version trained again, promoted: it beats production on the h4 metric
    again = _run(strong, root, promote=True)
    assert ic(again) == pytest.approx(ic(better))  # deterministic
    assert again["promotion"]["promoted"], again["promotion"]
    assert reg.resolve("production") == again["version"]
    assert f"metrics.ensemble.{METRIC}" in again["promotion"]["reason"]

    # 4. a worse one is stored but not promoted: production stays the better version
    worse = _run(weak, root, promote=True)
    assert ic(worse) < ic(again)
    assert not worse["promotion"]["promoted"], worse["promotion"]
    assert "does not beat" in worse["promotion"]["reason"]
    assert reg.resolve("production") == again["version"]
    assert sorted(reg.list_versions()) == sorted(s["version"] for s in (first, better, again, worse))
