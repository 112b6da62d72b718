"""The one training path: every model's own ``fit`` takes callbacks (ensemble.models.base.FitCallback).

Ray Tune trials and Ray Train workers add their Ray reporting through these hooks instead of copying
the training loop, so what the hooks see and can do is tested here, without Ray."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _frames import make_feature_frame  # noqa: E402

from ensemble.backtest.metrics import rank_ic  # noqa: E402
from ensemble.models import create_model  # noqa: E402
from ensemble.models.base import FitCallback, Forecaster, Iteration  # noqa: E402
from ensemble.models.sequence import SequenceTrainingHooks  # noqa: E402

HORIZONS = (5, 20)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    f = make_feature_frame(n_tickers=12, n_days=200, n_features=8, seed=5)
    dates = np.sort(f["date"].unique())
    train = f[f["date"] < dates[120]].reset_index(drop=True)
    valid = f[f["date"] >= dates[125]].reset_index(drop=True)
    return train, valid


class Recorder(FitCallback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.seen: list[Iteration] = []
        self.started = self.ended = 0

    def on_fit_start(self, model: Forecaster) -> None:
        self.started += 1

    def on_iteration(self, model: Forecaster, it: Iteration) -> bool:
        self.seen.append(it)
        return self.stop_at is not None and it.iteration >= self.stop_at

    def on_fit_end(self, model: Forecaster) -> None:
        self.ended += 1


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_boosters_report_every_round_with_validation_predictions(frames, name: str) -> None:
    train, valid = frames
    rec = Recorder()
    # every horizon its own model (label_horizons={}), so every horizon reports its rounds
    model = create_model(
        name, horizons=HORIZONS, n_estimators=15, early_stopping_rounds=0, n_jobs=1, label_horizons={}
    )
    model.fit(train, valid, callbacks=[rec])
    assert rec.started == 1 and rec.ended == 1
    for h in HORIZONS:
        its = [it for it in rec.seen if it.horizon == h]
        assert [it.iteration for it in its] == list(range(1, 16))
        assert all(np.isfinite(it.metrics["valid_rmse"]) for it in its)
        # the round's reported RMSE is the RMSE of the model cut at that round on the validation rows
        y = valid[f"target_h{h}"].to_numpy()
        ok = np.isfinite(y)
        p7 = its[6].predict_valid(7)
        assert len(p7) == ok.sum()
        assert np.sqrt(np.mean((p7 - y[ok]) ** 2)) == pytest.approx(its[6].metrics["valid_rmse"], rel=1e-4)
        # the full model's validation predictions are the last round's
        full = model.predict(valid.loc[ok])[f"pred_h{h}"].to_numpy()
        np.testing.assert_allclose(its[-1].predict_valid(15), full, rtol=1e-5, atol=1e-7)
        assert rank_ic(valid["date"].to_numpy()[ok], full, y[ok]) == pytest.approx(
            rank_ic(valid["date"].to_numpy()[ok], its[-1].predict_valid(15), y[ok]), abs=1e-9
        )


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_a_callback_can_stop_a_booster(frames, name: str) -> None:
    train, valid = frames
    rec = Recorder(stop_at=4)
    model = create_model(name, horizons=(5,), n_estimators=50, early_stopping_rounds=0, n_jobs=1)
    model.fit(train, valid, callbacks=[rec])
    assert [it.iteration for it in rec.seen] == [1, 2, 3, 4]
    assert 1 <= model.fit_info_[5]["n_rounds"] <= 4


def test_random_forest_has_no_rounds_but_sees_start_and_end(frames) -> None:
    train, valid = frames
    rec = Recorder()
    create_model("random_forest", horizons=HORIZONS, n_estimators=5, n_jobs=1).fit(
        train, valid, callbacks=[rec]
    )
    assert rec.seen == [] and rec.started == 1 and rec.ended == 1


SEQ: dict[str, Any] = {
    "seq_len": 8,
    "batch_size": 64,
    "max_samples_per_epoch": 256,
    "patience": 50,
    "num_threads": 1,
    "device": "cpu",
    "hidden": 8,
    "attn_dim": 8,
    "max_epochs": 5,
    "seed": 3,
}


class Interrupt(SequenceTrainingHooks):
    """Keeps the state of epoch ``at`` and stops there (a crash after a checkpoint, simulated)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.state: dict[str, Any] | None = None

    def on_iteration(self, model: Forecaster, it: Iteration) -> bool:
        if it.iteration == self.at:
            assert it.state is not None
            self.state = it.state()
            return True
        return False


class Resume(SequenceTrainingHooks):
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def resume_state(self) -> dict[str, Any] | None:
        return self.state


def test_a_sequence_fit_resumed_from_an_epoch_state_equals_an_uninterrupted_fit(frames) -> None:
    train, valid = frames
    cols = [f"pred_h{h}" for h in HORIZONS]
    whole = create_model("lstm", horizons=HORIZONS, **SEQ).fit(train, valid)

    cut = Interrupt(at=2)
    first = create_model("lstm", horizons=HORIZONS, **SEQ).fit(train, valid, callbacks=[cut])
    assert first.n_epochs_ == 2 and cut.state is not None and cut.state["epoch"] == 2
    rec = Recorder()
    resumed = create_model("lstm", horizons=HORIZONS, **SEQ).fit(
        train, valid, callbacks=[Resume(cut.state), rec]
    )
    assert [it.iteration for it in rec.seen] == [3, 4, 5]  # no epoch repeated
    assert [h["epoch"] for h in resumed.history_] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert resumed.best_epoch_ == whole.best_epoch_
    np.testing.assert_array_equal(
        resumed.predict(valid)[cols].to_numpy(), whole.predict(valid)[cols].to_numpy()
    )
    # every epoch after the resume trained on the same batches from the same weights: same losses
    for key in ("train_loss", "valid_loss"):
        assert [h[key] for h in resumed.history_] == [h[key] for h in whole.history_]


def test_sequence_hooks_choose_the_batches(frames) -> None:
    """A distributed runner shards the epoch's rows: the hook's batches are what the model trains on."""
    train, valid = frames

    class HalfBatches(SequenceTrainingHooks):
        def __init__(self) -> None:
            self.rows = 0

        def batches(self, perm: Any, batch_size: int) -> Any:
            half = perm[: len(perm) // 2]
            self.rows += len(half)
            return super().batches(half, batch_size)

    hooks = HalfBatches()
    create_model("lstm", horizons=HORIZONS, **{**SEQ, "max_epochs": 2}).fit(train, valid, callbacks=[hooks])
    assert hooks.rows == 2 * (SEQ["max_samples_per_epoch"] // 2)
