"""Training the sequence models (LSTM, Transformer) with Ray Train's ``TorchTrainer``.

:func:`train_sequence_model` runs the library's training (``ensemble.models.sequence``) on Ray
Train workers, with what a long run on a cluster needs:

* ``ScalingConfig(num_workers, use_gpu, resources_per_worker={"CPU": cpus_per_worker})`` from
  ``settings.ray`` (``use_gpu='auto'``: when the cluster has a GPU);
* a checkpoint every epoch (``train_state.pt``: model state_dict, optimizer state, epoch, best
  validation loss and the best weights, the sampling generator and torch RNG states, the history),
  written with ``torch.save`` and read back with ``torch.load(weights_only=True)``;
* ``FailureConfig(max_failures)``: a failed worker group is restarted and the training function
  resumes from the latest checkpoint (``ray.train.get_checkpoint()``), not from epoch 1;
* early stopping on the validation loss or Rank IC (``eval_metric`` / ``patience`` / ``min_delta`` of
  the model's parameters) and at most ``max_epochs`` epochs (``settings.training.max_epochs`` unless
  the model's settings pin it).

Nothing of the training is re-implemented here: every worker calls the model's own
``SequenceForecaster.fit`` with a :class:`RayTrainHooks` callback (``ensemble.models.sequence.
SequenceTrainingHooks``), as Ray's ``lightgbm_quickstart`` and darts' Ray test do. The callback resumes
from ``ray.train.get_checkpoint()``, wraps the module for DDP, shards the batches, and after every
epoch saves the state the library hands it (``it.state()``) as a checkpoint with ``ray.train.report``.
With one worker the result equals a local ``fit`` with the same parameters, and a run resumed from a
checkpoint equals an uninterrupted one (the RNG states are checkpointed; a checkpoint of the epoch
that stopped the fit trains no further epoch). The refit on ``refit_on`` reports no checkpoint: a
failure during it resumes from the stopped fit's last one and refits again (the same seed).

With ``num_workers > 1`` the module is wrapped for data parallelism with
``ray.train.torch.prepare_model`` (DDP) and each epoch's sampled rows are sharded over the workers
with ``prepare_data_loader`` (a ``DistributedSampler``); every worker validates on all validation
rows with the same weights, so the early-stopping decision is the same everywhere.

The last checkpoint also holds the finished model saved by the library (``model/``: safetensors +
``meta.json``; best weights, or the refit on ``refit_on``): the driver loads it with the model class's own ``load``, so the result is
an ordinary ``LSTMForecaster`` / ``TransformerForecaster`` that predicts and saves as usual.

Cost: the run is metered as stage ``<name>`` (wall time x the reserved worker CPUs / GPUs).
Fault injection for tests: ``fail_at_epoch=k`` raises once, at the start of epoch k, on rank 0; a
marker file in the run's storage directory keeps the restarted run from failing again.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ensemble.config import Settings
from ensemble.cost import CostMeter
from ensemble.models import get_model_class
from ensemble.models.base import Forecaster, Iteration
from ensemble.models.sequence import SequenceForecaster, SequenceTrainingHooks

logger = logging.getLogger(__name__)

SEQUENCE_MODELS: tuple[str, ...] = ("lstm", "transformer")
STATE_FILE = "train_state.pt"
MODEL_DIR = "model"


@dataclass
class TrainOutcome:
    """What :func:`train_sequence_model` trained.

    ``model``: the fitted library Forecaster (best-validation weights; with ``refit_on``, the refit,
    recorded in ``model.refit_``). ``epochs_run``: epochs the fit that stopped trained in all (across
    restarts; the refit's are in ``model.refit_``). ``resumed_from_epoch``: for each restart after a
    failure, the epoch of the checkpoint it resumed from (empty when nothing failed). ``val_loss``:
    the validation loss of the best epoch of the fit that stopped (the lowest with ``eval_metric``
    'loss'; None without validation rows). ``checkpoint_path``: the run's last checkpoint (it holds the model
    under ``model/``). ``cost_usd``: what the run added to the meter.
    """

    name: str
    model: SequenceForecaster
    epochs_run: int
    best_epoch: int
    resumed_from_epoch: list[int]
    val_loss: float | None
    checkpoint_path: str
    cost_usd: float
    run_path: str = ""
    num_workers: int = 1
    use_gpu: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# the training function (runs on every Ray Train worker): the library's fit + a Ray callback
# --------------------------------------------------------------------------------------------------
class RayTrainHooks(SequenceTrainingHooks):
    """Ray Train around ``SequenceForecaster.fit``: resume, DDP, sharding, a checkpoint per epoch."""

    def __init__(self, rank: int, world: int, fail_at_epoch: int | None, marker: Path) -> None:
        self.rank, self.world = rank, world
        self.fail_at_epoch, self.marker = fail_at_epoch, marker
        self.restarts: list[int] = []
        self.last_state: dict[str, Any] | None = None  # rank 0: the latest epoch's checkpointed state

    def resume_state(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            st: dict[str, Any] = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        self.restarts = [*st.get("restarts", []), int(st["epoch"])]
        self.last_state = {**st, "restarts": self.restarts}
        return st

    def wrap_module(self, module: nn.Module) -> nn.Module:
        import ray.train.torch as rtt

        return rtt.prepare_model(module) if self.world > 1 else module

    def batches(self, perm: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
        if self.world == 1:  # exactly the library's batches
            return super().batches(perm, batch_size)
        import ray.train.torch as rtt
        from torch.utils.data import DataLoader, TensorDataset

        loader = DataLoader(TensorDataset(perm), batch_size=batch_size, shuffle=False)
        return (b[0] for b in rtt.prepare_data_loader(loader, move_to_device=False))

    def on_iteration(self, model: Forecaster, it: Iteration) -> bool:
        import ray.train

        assert it.state is not None
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                self.last_state = {**it.state(), "restarts": self.restarts}
                torch.save(self.last_state, Path(tmp) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            metrics = {"epoch": it.iteration, **it.metrics, "restarts": len(self.restarts)}
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{it.iteration:04d}")
        nxt = it.iteration + 1  # fault injection (tests): fail once, at the start of epoch k
        if self.fail_at_epoch == nxt and self.rank == 0 and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"failure injected at the start of epoch {nxt}\n")
            raise RuntimeError(f"injected failure at epoch {nxt} (fail_at_epoch)")
        return False


def _train_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch as rtt

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    train = ray.get(config["train_ref"])
    valid = ray.get(config["valid_ref"]) if config["valid_ref"] is not None else None
    refit_on = ray.get(config["refit_ref"]) if config["refit_ref"] is not None else None
    model = get_model_class(config["name"])(horizons=config["horizons"], **config["params"])
    assert isinstance(model, SequenceForecaster)
    hooks = RayTrainHooks(rank, world, config["fail_at_epoch"], Path(config["marker"]))
    model.fit(train, valid, callbacks=[hooks], refit_on=refit_on, device=rtt.get_device())
    # the finished model (best weights, or the refit), saved by the library, in one last checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            assert hooks.last_state is not None
            torch.save(hooks.last_state, Path(tmp) / STATE_FILE)
            model.save(Path(tmp) / MODEL_DIR)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"finished": 1}, checkpoint=ckpt, checkpoint_dir_name="final")


# --------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------
def _resolve_gpu(setting: str) -> bool:
    import ray

    if setting == "yes":
        return True
    if setting == "no":
        return False
    return float(ray.cluster_resources().get("GPU", 0.0)) > 0


def train_sequence_model(
    name: str,
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    settings: Settings,
    meter: CostMeter,
    *,
    storage_path: str | None = None,
    fail_at_epoch: int | None = None,
    refit_on: pd.DataFrame | None = None,
) -> TrainOutcome:
    """Train sequence model ``name`` ('lstm' or 'transformer') with Ray Train; see the module docstring.

    Parameters: ``ensemble.training.member_params`` (``settings.models[name]`` over the model's
    defaults; ``seq_len``, ``max_epochs`` and ``seed`` from the settings unless pinned there).
    ``valid`` (or, if None, the model's internal split of ``train``) drives early stopping; with
    ``refit_on`` every worker then trains the refit (``SequenceForecaster.fit``'s ``refit_on``),
    sharded as before, unreported. ``storage_path``: where the run's checkpoints go
    (default ``settings.ray.storage_path``). ``fail_at_epoch``: inject one failure (tests).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from ensemble.training import member_params  # the driver's only: keeps the workers' imports light

    if name not in SEQUENCE_MODELS:
        raise ValueError(
            f"train_sequence_model: {name!r} is not a sequence model; known: {list(SEQUENCE_MODELS)}"
        )
    cls = get_model_class(name)
    assert issubclass(cls, SequenceForecaster)
    params = member_params(settings, name)
    horizons = tuple(settings.horizons)
    cls(horizons=horizons, **params).check_targets(train)  # unknown parameters / missing targets: now
    if not ray.is_initialized():
        ray.init()
    rc = settings.ray
    use_gpu = _resolve_gpu(rc.use_gpu)
    root = Path(storage_path or rc.storage_path).expanduser().resolve()
    run_name = f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    config = {
        "name": name,
        "horizons": horizons,
        "params": params,
        "train_ref": ray.put(train),
        "valid_ref": None if valid is None else ray.put(valid),
        "refit_ref": None if refit_on is None else ray.put(refit_on),
        "fail_at_epoch": fail_at_epoch,
        "marker": str(root / run_name / "fault_injected"),
    }
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=rc.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": rc.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(root),
            failure_config=ray.train.FailureConfig(max_failures=rc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    spent0 = meter.spent_usd
    logger.info(
        "%s: Ray Train, %d worker(s) x %g CPU%s, max_failures %d",
        name,
        rc.num_workers,
        rc.cpus_per_worker,
        " + 1 GPU" if use_gpu else "",
        rc.max_failures,
    )
    with meter.stage(name, cpus=rc.num_workers * rc.cpus_per_worker, gpus=rc.num_workers if use_gpu else 0):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: the training run {run_name} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        if not (Path(d) / MODEL_DIR).is_dir():
            raise RuntimeError(f"{name}: the last checkpoint of {run_name} holds no finished model")
        model = cls.load(Path(d) / MODEL_DIR)
    val = float(state["best_val_loss"])
    outcome = TrainOutcome(
        name=name,
        model=model,
        epochs_run=int(state["epoch"]),
        best_epoch=int(model.best_epoch_),
        resumed_from_epoch=[int(e) for e in state["restarts"]],
        val_loss=val if math.isfinite(val) else None,
        checkpoint_path=str(result.checkpoint.path),
        cost_usd=meter.spent_usd - spent0,
        run_path=str(result.path),
        num_workers=rc.num_workers,
        use_gpu=use_gpu,
        history=list(model.history_),
    )
    logger.info(
        "%s: %d epochs (best %d, valid loss %s), restarts from %s, $%.4f",
        name,
        outcome.epochs_run,
        outcome.best_epoch,
        outcome.val_loss,
        outcome.resumed_from_epoch,
        outcome.cost_usd,
    )
    return outcome


__all__ = ["SEQUENCE_MODELS", "TrainOutcome", "train_sequence_model"]
