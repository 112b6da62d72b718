"""Ray Tune for the tree models and Ray Train for the sequence models (jobs.ray_tune_trees,
jobs.ray_train_torch), on one local 2-CPU Ray cluster for the module."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _budget import LimitAtFirstPricing  # noqa: E402
from _frames import make_feature_frame  # noqa: E402

from ensemble.config import Settings, load_settings  # noqa: E402
from ensemble.cost import CostMeter  # noqa: E402
from ensemble.models import create_model, get_model_class  # noqa: E402

pytestmark = pytest.mark.ray

BOOSTER_PARAMS = {"n_estimators": 60, "early_stopping_rounds": 0}  # no in-trial early stop: ASHA only
SEQ_PARAMS: dict[str, Any] = {
    "seq_len": 8,
    "batch_size": 64,
    "max_samples_per_epoch": 256,
    "patience": 50,
    "num_threads": 1,
    "device": "cpu",
    "hidden": 8,
    "attn_dim": 8,
}


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    f = make_feature_frame(n_tickers=12, n_days=200, seed=3)
    dates = np.sort(f["date"].unique())
    return f[f["date"] < dates[120]].reset_index(drop=True), f[f["date"] >= dates[125]].reset_index(drop=True)


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "ray": {"trial_cpus": 1.0, "max_concurrent_trials": 2, "asha_grace_period": 5, "max_failures": 1},
        "models": {
            "xgboost": dict(BOOSTER_PARAMS),
            "lightgbm": dict(BOOSTER_PARAMS),
            "random_forest": {"n_estimators": 20},
            "lstm": dict(SEQ_PARAMS),
        },
    }
    return load_settings(overrides={**base, **overrides})


def _meter(s: Settings) -> CostMeter:
    return CostMeter(s.training.cpu_hour_usd, s.training.gpu_hour_usd, s.training.cost_limit_usd)


def _check_predicts(model: Any, valid: pd.DataFrame, horizons: list[int]) -> None:
    pred = model.predict(valid)
    assert len(pred) == len(valid)
    for h in horizons:
        assert np.isfinite(pred[f"pred_h{h}"]).all()


# --------------------------------------------------------------------------------------------------
# Ray Tune
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_tune_booster_runs_trials_asha_prunes_and_refits(
    ray_local, frames, tmp_path: Path, name: str
) -> None:
    from jobs.ray_tune_trees import search_space, tune_tree_model

    train, valid = frames
    s = _settings(training={"tuning_trials": 6})
    meter = _meter(s)
    out = tune_tree_model(name, train, valid, s, meter, storage_path=str(tmp_path))

    assert out.trials_requested == 6 and out.trials_run == 6
    assert out.stop_reason is None
    assert len(out.trial_nodes) == 6 and all(out.trial_nodes.values())
    # the first trial is the model's defaults; every other searched value lies in the space
    assert set(search_space(name)) <= set(out.best_params)
    assert out.best_params["n_estimators"] == 60  # pinned in settings.models: not searched
    # ASHA: in-trial early stopping is off, so a trial that reported fewer than all 60 rounds (+ the
    # final report) was stopped by ASHA on the validation RMSE
    rounds = sorted(t["iterations"] for t in out.trials)
    assert any(not t["completed"] and t["iterations"] < 61 for t in out.trials), rounds
    assert all(t["iterations"] == 61 for t in out.trials if t["completed"]), rounds
    assert rounds[0] < rounds[-1]
    best_completed = max(t["rank_ic"] for t in out.trials if t["completed"])
    assert out.best_score == pytest.approx(best_completed)
    assert isinstance(out.model, get_model_class(name))
    _check_predicts(out.model, valid, s.horizons)
    stages = meter.report()["stages"]
    assert {f"{name}.tune", f"{name}.refit"} <= set(stages)
    assert out.cost_usd == pytest.approx(meter.spent_usd) and out.cost_usd > 0


def test_tune_random_forest_runs_trials_and_refits(ray_local, frames, tmp_path: Path) -> None:
    from jobs.ray_tune_trees import tune_tree_model

    train, valid = frames
    s = _settings()
    meter = _meter(s)
    out = tune_tree_model("random_forest", train, valid, s, meter, num_samples=3, storage_path=str(tmp_path))

    assert out.trials_requested == 3 and out.trials_run == 3 and out.stop_reason is None
    assert all(t["completed"] and t["iterations"] == 1 for t in out.trials)  # one report per trial
    assert len(out.trial_nodes) == 3
    assert math.isfinite(out.best_score) and -1 <= out.best_score <= 1
    assert isinstance(out.model, get_model_class("random_forest"))
    assert out.model.resolved_params()["n_estimators"] == 20
    _check_predicts(out.model, valid, s.horizons)


def test_tune_stops_launching_trials_at_the_cost_budget(ray_local, frames, tmp_path: Path) -> None:
    """The budget guard, not Tune's ``time_budget_s`` backstop, ends the search, within the limit.

    $1 per CPU-second, 500 trials asked for. The limit is fixed when the guard first prices a trial
    (tests/_budget.py): what was billed by then (Tune's start-up, which takes seconds to tens of
    seconds depending on the machine's load, and the first trial) + 1.5 x what the guard asked to
    spend, so it has room for more trials and runs out of it after a few dozen of these tiny ones. The
    $1000 limit before that sets the backstop at 500 s, far beyond the test's run."""
    from jobs.ray_tune_trees import tune_tree_model

    train, valid = frames
    requested = 500
    s = _settings(training={"tuning_trials": requested, "cpu_hour_usd": 3600.0, "cost_limit_usd": 1000.0})
    meter = LimitAtFirstPricing(s.training.cpu_hour_usd, s.training.gpu_hour_usd, s.training.cost_limit_usd)
    out = tune_tree_model("xgboost", train, valid, s, meter, storage_path=str(tmp_path))

    # the guard priced trials against this meter (it is wired into Tune) and, with the room it had
    # after that, let at least one more trial through before it stopped the search
    assert meter.priced_at is not None
    assert out.time_budget_s == pytest.approx(1000.0 / 2)  # the backstop: $1000 at 2 reserved CPUs
    assert out.trials_requested == requested
    assert 3 <= out.trials_run < requested, out.stop_reason
    assert out.stop_reason is not None and out.stop_reason.startswith("cost budget guard: "), out.stop_reason
    assert f"cost_limit_usd ${meter.limit_usd:.4f}" in out.stop_reason
    assert f"stopped launching trials after {out.trials_run} of {requested}" in out.stop_reason
    # the refit is priced as the models it fits: 5, 20 and 60 days, the 20-day one learning the
    # 5-day return (label_horizons' default), so two fits, not three
    assert "+ the refit (2 fits, ~$" in out.stop_reason, out.stop_reason
    assert meter.report()["stopped"] == [f"xgboost.tune: {out.stop_reason}"]
    # billed by the end of tuning (Tune's wind-down after the stop included): within the limit + one
    # trial (the costliest trial's own time x its CPU, at $1 per CPU-second)
    one_trial = max(float(t["time_s"]) for t in out.trials) * s.ray.trial_cpus
    at_end_of_tuning = meter.report()["stages"]["xgboost.tune"]["usd"]
    assert at_end_of_tuning <= meter.limit_usd + one_trial, (at_end_of_tuning, meter.limit_usd, one_trial)
    _check_predicts(out.model, valid, s.horizons)  # the best trial's configuration, refitted


def test_budget_guard_prices_a_trial_at_its_cost_or_the_billed_cost_per_trial() -> None:
    """The decision rule alone (no cluster): spent + running + one more trial + refit vs the limit, a
    trial priced at the larger of its own cost and what the stage was billed per finished trial."""
    from ray.tune.search import Searcher

    from jobs.ray_tune_trees import _GUARDS, BudgetedSearcher, _BudgetGuard

    meter = CostMeter(cpu_hour_usd=3600.0, gpu_hour_usd=0.0, limit_usd=10.0)  # $1 per CPU-second
    guard = _BudgetGuard(meter, "xgboost.tune", trial_cpus=1.0, refit_trials=3, requested=10)

    class Fixed(Searcher):  # type: ignore[misc]
        def suggest(self, trial_id: str) -> dict[str, Any]:
            return {"a": 1}

        def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
            pass

    search = BudgetedSearcher(Fixed(metric="m", mode="max"), "tok")
    _GUARDS["tok"] = guard
    try:
        assert search.suggest("t1") == {"a": 1} and search.suggest("t2") == {"a": 1}  # no estimate yet
        search.on_trial_complete("t1", {"time_total_s": 1.0, "m": 0.1})  # one trial's own time = $1
        assert search.suggest("t3") == {"a": 1}  # 0 spent + running 1 + next 1 + refit 3 = 5 <= 10
        # the stage is billed $3 between the first finish and the second (Tune's overhead, reserved
        # CPUs left idle): $3 per trial, not $1. 3 + running 3 + next 3 + refit 9 = 18 > 10, where the
        # trials' own $1 would say 3 + 1 + 1 + 3 = 8 <= 10
        meter.record("xgboost.tune", cpu_s=3.0)
        search.on_trial_complete("t2", {"time_total_s": 1.0, "m": 0.1})
        assert search.suggest("t4") == Searcher.FINISHED
        assert search.suggest("t5") == Searcher.FINISHED  # stays stopped
    finally:
        _GUARDS.pop("tok", None)
    assert guard.launched == 3
    assert guard.stop_reason is not None and guard.stop_reason.startswith("cost budget guard: $3.0000 spent")
    assert "cost_limit_usd $10.0000" in guard.stop_reason
    assert (
        "one more trial (~$3.0000, from 2 finished)" in guard.stop_reason
        and "after 3 of 10" in guard.stop_reason
    )


# --------------------------------------------------------------------------------------------------
# Ray Train
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torch_trainer_resumes_from_checkpoint_after_a_failure(ray_local, frames, tmp_path: Path) -> None:
    from jobs.ray_train_torch import STATE_FILE, train_sequence_model

    train, valid = frames
    s = _settings(training={"max_epochs": 5, "seed": 1})
    meter = _meter(s)
    out = train_sequence_model("lstm", train, valid, s, meter, storage_path=str(tmp_path), fail_at_epoch=3)

    # failed once at the start of epoch 3, resumed from the checkpoint of epoch 2, then finished
    assert out.resumed_from_epoch == [2]
    assert (Path(out.run_path) / "fault_injected").exists()
    assert out.epochs_run == 5
    assert [h["epoch"] for h in out.history] == [1.0, 2.0, 3.0, 4.0, 5.0]  # no epoch repeated
    assert out.val_loss is not None and out.val_loss == pytest.approx(
        min(h["valid_loss"] for h in out.history)
    )
    ckpt = Path(out.checkpoint_path)
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["epoch"] == 5 and state["restarts"] == [2]
    assert out.cost_usd > 0 and "lstm" in meter.report()["stages"]

    # the result is the library's LSTMForecaster with the best weights, and since the RNG states are
    # checkpointed, the resumed run equals an uninterrupted local fit with the same parameters
    assert isinstance(out.model, get_model_class("lstm"))
    local = create_model("lstm", horizons=s.horizons, **{**SEQ_PARAMS, "max_epochs": 5, "seed": 1})
    local.fit(train, valid)
    assert out.best_epoch == local.best_epoch_
    a, b = out.model.predict(valid), local.predict(valid)
    cols = [f"pred_h{h}" for h in s.horizons]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-6, atol=1e-9)
    saved = out.model.save(tmp_path / "saved")
    again = get_model_class("lstm").load(saved)
    np.testing.assert_array_equal(again.predict(valid)[cols].to_numpy(), a[cols].to_numpy())


def test_tuning_trials_fit_every_nth_training_date() -> None:
    """Trials fit every ``tuning_date_stride``-th training date, with every ticker of those dates."""
    from jobs.ray_tune_trees import every_nth_date

    dates = pd.bdate_range("2024-01-01", periods=9)
    frame = pd.DataFrame([(d, t) for d in dates for t in ("AAA", "BBB")], columns=["date", "ticker"])
    half = every_nth_date(frame, 2)
    assert list(pd.DatetimeIndex(half["date"].unique())) == list(dates[::2])
    assert (half.groupby("date")["ticker"].count() == 2).all()
    assert every_nth_date(frame, 1) is frame
    assert Settings().training.tuning_date_stride == 2
