"""Ray Train with two workers (jobs.ray_train_torch): DDP plus the sharded sampler.

Each epoch's sampled rows are split over the workers by ``prepare_data_loader``'s
``DistributedSampler`` (worker r takes positions r, r + 2, ... of the epoch's permutation), and DDP
averages the two workers' gradients. With batch size b per worker, step k therefore sees exactly the
rows of a single process's batch k of size 2b, and the averaged gradient of the two per-worker mean
losses is the gradient of the mean loss over those 2b rows: two workers with batch b train the same
model as one local ``fit`` with batch 2b (up to float rounding), and not the one a local fit with
batch b trains. That holds only if every worker trains on its own half of the rows (sharding) and the
gradients are synchronised (DDP); either one missing changes the model.

Conditions for the equality: one horizon with finite targets on every training row (equal counts per
worker), epoch size divisible by 2b (no padding by the sampler), no dropout (its masks would be drawn
per process)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _frames import make_feature_frame  # noqa: E402

from ensemble.config import load_settings  # noqa: E402
from ensemble.cost import CostMeter  # noqa: E402
from ensemble.models import create_model  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BATCH = 32  # per worker
SEQ: dict[str, Any] = {
    "seq_len": 8,
    "batch_size": BATCH,
    "max_samples_per_epoch": 8 * BATCH,  # 4 steps of 2 x 32 rows per epoch
    "max_epochs": 3,
    "patience": 50,
    "dropout": 0.0,
    "num_threads": 1,
    "device": "cpu",
    "hidden": 8,
    "attn_dim": 8,
    "seed": 4,
}


def test_two_workers_shard_the_rows_and_average_the_gradients(ray_local, tmp_path: Path) -> None:
    from jobs.ray_train_torch import train_sequence_model

    f = make_feature_frame(n_tickers=8, n_days=140, seed=2, horizons=(5,))
    dates = np.sort(f["date"].unique())
    train = f[f["date"] < dates[90]].reset_index(drop=True)
    valid = f[(f["date"] >= dates[95]) & (f["date"] < dates[125])].reset_index(drop=True)
    assert np.isfinite(train["target_h5"]).all() and np.isfinite(valid["target_h5"]).all()

    s = load_settings(
        overrides={
            "horizons": [5],
            "ray": {"num_workers": 2, "cpus_per_worker": 0.5, "max_failures": 0, "use_gpu": "no"},
            "models": {"lstm": SEQ},
        }
    )
    meter = CostMeter(s.training.cpu_hour_usd, s.training.gpu_hour_usd, s.training.cost_limit_usd)
    out = train_sequence_model("lstm", train, valid, s, meter, storage_path=str(tmp_path))
    assert out.num_workers == 2 and out.epochs_run == 3
    got = out.model.predict(valid)["pred_h5"].to_numpy()
    assert np.isfinite(got).all() and got.std() > 0

    def local(batch_size: int) -> tuple[np.ndarray, int]:
        m = create_model("lstm", horizons=(5,), **{**SEQ, "batch_size": batch_size}).fit(train, valid)
        return np.asarray(m.predict(valid)["pred_h5"].to_numpy()), int(m.best_epoch_)

    (union, best_epoch), (unsharded, _) = local(2 * BATCH), local(BATCH)
    assert out.best_epoch == best_epoch
    gap_union = float(np.abs(got - union).max())
    gap_unsharded = float(np.abs(got - unsharded).max())
    spread = float(np.ptp(union))
    # the two workers' model is the local batch-2b model: float rounding apart, far closer than the
    # local batch-b model (what every worker training all rows would give) is
    assert gap_union < 1e-4 * spread, (gap_union, spread)
    assert gap_unsharded > 100 * max(gap_union, 1e-9 * spread), (gap_unsharded, gap_union)

    # the refit on the whole window (jobs.train's refit_on) is sharded the same way on both workers
    whole = f[f["date"] < dates[125]].reset_index(drop=True)
    out = train_sequence_model("lstm", train, valid, s, meter, storage_path=str(tmp_path), refit_on=whole)
    assert out.best_epoch == best_epoch and out.model.refit_["epochs"] == best_epoch
    got = out.model.predict(valid)["pred_h5"].to_numpy()
    m = create_model("lstm", horizons=(5,), **{**SEQ, "batch_size": 2 * BATCH}).fit(
        train, valid, refit_on=whole
    )
    refit = np.asarray(m.predict(valid)["pred_h5"].to_numpy())
    assert m.refit_["n_train_rows"] == out.model.refit_["n_train_rows"] > len(train)
    assert float(np.abs(got - refit).max()) < 1e-4 * float(np.ptp(refit))
    assert float(np.abs(refit - union).max()) > 1e-2 * spread  # the refit is another model
