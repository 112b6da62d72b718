"""Training the sequence models (LSTM, Transformer) with Ray Train's ``TorchTrainer``.

:func:`train_sequence_model` runs the library's training (``ensemble.models._torch_common``) on Ray
Train workers, with what a long run on a cluster needs:

* ``ScalingConfig(num_workers, use_gpu, resources_per_worker={"CPU": cpus_per_worker})`` from
  ``settings.ray`` (``use_gpu='auto'``: when the cluster has a GPU);
* a checkpoint every epoch (``train_state.pt``: model state_dict, optimizer state, epoch, best
  validation loss and the best weights, the sampling generator and torch RNG states, the history),
  written with ``torch.save`` and read back with ``torch.load(weights_only=True)``;
* ``FailureConfig(max_failures)``: a failed worker group is restarted and the training function
  resumes from the latest checkpoint (``ray.train.get_checkpoint()``), not from epoch 1;
* early stopping on the validation loss (``patience`` / ``min_delta`` of the model's parameters) and
  at most ``max_epochs`` epochs (``settings.training.max_epochs`` unless the model's settings pin it).

Nothing of the network or the loss is re-implemented: the worker builds the module with the model's
own ``_build_module``, windows with ``SequenceData``, the loss with ``masked_loss_terms`` /
``combine_loss``, validates with the model's ``_evaluate`` and runs under ``torch_runtime`` (the same
seeding and deterministic settings). With one worker the epochs draw the same samples in the same
order as ``SequenceForecaster.fit``: the result equals a local ``fit`` with the same parameters, and
a run resumed from a checkpoint equals an uninterrupted one (the RNG states are checkpointed).

With ``num_workers > 1`` the module is wrapped for data parallelism with
``ray.train.torch.prepare_model`` (DDP) and each epoch's sampled rows are sharded over the workers
with ``prepare_data_loader`` (a ``DistributedSampler``); every worker validates on all validation
rows with the same weights, so the early-stopping decision is the same everywhere.

The last checkpoint also holds the finished model saved by the library (``model/``: safetensors +
``meta.json``, best weights): the driver loads it with the model class's own ``load``, so the result is
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ensemble.config import Settings
from ensemble.cost import CostMeter
from ensemble.models import get_model_class
from ensemble.models._torch_common import (
    SequenceData,
    SequenceForecaster,
    combine_loss,
    fit_scaler,
    masked_loss_terms,
    torch_runtime,
)
from ensemble.models.base import feature_columns, target_col

logger = logging.getLogger(__name__)

SEQUENCE_MODELS: tuple[str, ...] = ("lstm", "transformer")
STATE_FILE = "train_state.pt"
MODEL_DIR = "model"


@dataclass
class TrainOutcome:
    """What :func:`train_sequence_model` trained.

    ``model``: the fitted library Forecaster (best-validation weights). ``epochs_run``: epochs trained
    in all (across restarts). ``resumed_from_epoch``: for each restart after a failure, the epoch of
    the checkpoint it resumed from (empty when nothing failed). ``val_loss``: the best validation loss
    (None without validation rows). ``checkpoint_path``: the run's last checkpoint (it holds the model
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
# data preparation (the same steps as SequenceForecaster.fit)
# --------------------------------------------------------------------------------------------------
def _prepare(
    model: SequenceForecaster, train: pd.DataFrame, valid: pd.DataFrame | None, device: torch.device
) -> tuple[SequenceData, np.ndarray, SequenceData, np.ndarray]:
    """Fit the model's scalers on ``train`` (fitted state set on ``model``) and build the windows.

    Returns (train data, training rows, validation data, validation rows) as ``fit`` builds them."""
    model._check_targets(train)
    if valid is not None:
        model._check_targets(valid)
    p = model.resolved_params()
    names = feature_columns(train)
    if not names:
        raise ValueError(f"{model.name}: training frame has no feature columns")
    raw = train[names].to_numpy(dtype=np.float64, na_value=np.nan)
    center, scale = fit_scaler(raw, p["scaler"], names)
    del raw
    y = train[[target_col(h) for h in model.horizons]].to_numpy(dtype=np.float64, na_value=np.nan)
    t_mean = np.zeros(len(model.horizons))
    t_std = np.ones(len(model.horizons))
    for j, h in enumerate(model.horizons):
        col = y[:, j][np.isfinite(y[:, j])]
        if col.size == 0:
            raise ValueError(
                f"{model.name}: target {target_col(h)} has no finite value in the training frame"
            )
        t_mean[j] = col.mean()
        sd = col.std()
        t_std[j] = sd if np.isfinite(sd) and sd > 1e-12 else 1.0
    common: dict[str, Any] = dict(
        feature_names=names,
        center=center,
        scale=scale,
        seq_len=p["seq_len"],
        clip=p["clip_features"],
        horizons=model.horizons,
        target_mean=t_mean,
        target_std=t_std,
        device=device,
    )
    tr = SequenceData(train, **common)
    rows = tr.labelled_rows()
    if valid is not None:
        history = train.groupby("ticker", sort=False, observed=True).tail(int(p["seq_len"]) - 1)
        both = pd.concat([history.assign(_valid=False), valid.assign(_valid=True)], ignore_index=True)
        both = both.drop_duplicates(subset=["ticker", "date"], keep="last")
        va = SequenceData(both, **common)
        is_valid = both["_valid"].to_numpy(dtype=bool)[va.order]
        v_rows = np.intersect1d(va.labelled_rows(), np.flatnonzero(is_valid))
        train_rows = rows
    else:
        va = tr
        train_rows, v_rows = model._internal_split(tr, rows, float(p["valid_fraction"]))
    model.feature_names_ = names
    model.scaler_center_ = center
    model.scaler_scale_ = scale
    model.target_mean_ = t_mean
    model.target_std_ = t_std
    model.device_ = device
    return tr, train_rows, va, v_rows


# --------------------------------------------------------------------------------------------------
# the training function (runs on every Ray Train worker)
# --------------------------------------------------------------------------------------------------
def _train_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch as rtt
    from torch.utils.data import DataLoader, TensorDataset

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rtt.get_device()
    train = ray.get(config["train_ref"])
    valid = ray.get(config["valid_ref"]) if config["valid_ref"] is not None else None
    model = get_model_class(config["name"])(horizons=config["horizons"], **config["params"])
    assert isinstance(model, SequenceForecaster)
    p = model.resolved_params()
    tr, train_rows, va, v_rows = _prepare(model, train, valid, device)
    if len(train_rows) == 0:
        raise ValueError(f"{model.name}: no training row with a finite target")
    fail_at: int | None = config["fail_at_epoch"]
    marker = Path(config["marker"])

    with torch_runtime(device, p["seed"], p["num_threads"]):
        module = model._build_module(len(model.feature_names_)).to(device)
        model.module_ = module  # _evaluate and save use it; DDP (below) wraps it for training only
        # the library's sampling stream: validation subset first, then one permutation per epoch
        gen = torch.Generator().manual_seed(int(p["seed"]))
        if p["max_valid_samples"] is not None and len(v_rows) > int(p["max_valid_samples"]):
            pick = torch.randperm(len(v_rows), generator=gen)[: int(p["max_valid_samples"])].numpy()
            v_rows = np.sort(v_rows[pick])
        t_rows = torch.from_numpy(train_rows.astype(np.int64))
        v_idx = torch.from_numpy(v_rows.astype(np.int64)).to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        bs = int(p["batch_size"])
        per_epoch = (
            len(t_rows)
            if p["max_samples_per_epoch"] is None
            else min(len(t_rows), int(p["max_samples_per_epoch"]))
        )
        use_valid = len(v_rows) > 0
        best_loss, best_epoch, bad, start = math.inf, 0, 0, 0
        best_state: dict[str, torch.Tensor] | None = None
        history: list[dict[str, float]] = []
        restarts: list[int] = []
        seconds_before = 0.0

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                st = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            module.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            start, best_loss, best_epoch, bad = (
                int(st["epoch"]),
                float(st["best_val_loss"]),
                int(st["best_epoch"]),
                int(st["bad"]),
            )
            best_state = st["best_state"]
            history = list(st["history"])
            restarts = [*st["restarts"], start]
            seconds_before = float(st["seconds"])
            gen.set_state(st["gen_state"])
            torch.set_rng_state(st["rng_state"])
            logger.info("%s: rank %d resumed from the checkpoint of epoch %d", model.name, rank, start)

        net: nn.Module = rtt.prepare_model(module) if world > 1 else module
        t0 = time.perf_counter()
        assert tr.y is not None
        for epoch in range(start + 1, int(p["max_epochs"]) + 1):
            if fail_at == epoch and rank == 0 and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"failure injected at the start of epoch {epoch}\n")
                raise RuntimeError(f"injected failure at epoch {epoch} (fail_at_epoch)")
            net.train()
            perm = t_rows[torch.randperm(len(t_rows), generator=gen)[:per_epoch]]
            batches: Any
            if world > 1:  # this worker's shard of the epoch's rows
                loader = DataLoader(TensorDataset(perm), batch_size=bs, shuffle=False)
                batches = (b[0] for b in rtt.prepare_data_loader(loader, move_to_device=False))
            else:  # exactly the library's batches
                batches = (perm[b : b + bs] for b in range(0, per_epoch, bs))
            tot, nb = 0.0, 0
            for idx in batches:
                idx = idx.to(device)
                x, pad = tr.windows(idx)
                sums, counts = masked_loss_terms(net(x, pad), tr.y[idx], p["loss"], float(p["huber_delta"]))
                loss = combine_loss(sums, counts)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p["grad_clip"]:
                    nn.utils.clip_grad_norm_(net.parameters(), float(p["grad_clip"]))
                opt.step()
                tot += float(loss.detach())
                nb += 1
            seconds = seconds_before + time.perf_counter() - t0
            rec = {"epoch": float(epoch), "train_loss": tot / max(nb, 1), "seconds": seconds}
            stop = epoch == int(p["max_epochs"])
            if use_valid:
                rec["valid_loss"] = model._evaluate(va, v_idx, p)
                if rec["valid_loss"] < best_loss - float(p["min_delta"]):
                    best_loss, best_epoch, bad = rec["valid_loss"], epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                else:
                    bad += 1
                    stop = stop or bad >= int(p["patience"])
            history.append(rec)
            if p["time_budget_s"] is not None and seconds > float(p["time_budget_s"]):
                stop = True
            metrics = {
                "epoch": epoch,
                "train_loss": rec["train_loss"],
                "valid_loss": rec.get("valid_loss", float("nan")),
                "best_valid_loss": best_loss if use_valid else float("nan"),
                "best_epoch": best_epoch,
                "restarts": len(restarts),
            }
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    torch.save(
                        {
                            "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                            "optimizer": opt.state_dict(),
                            "epoch": epoch,
                            "best_val_loss": best_loss,
                            "best_epoch": best_epoch,
                            "bad": bad,
                            "best_state": best_state,
                            "history": history,
                            "restarts": restarts,
                            "seconds": seconds,
                            "gen_state": gen.get_state(),
                            "rng_state": torch.get_rng_state(),
                        },
                        Path(tmp) / STATE_FILE,
                    )
                    if stop:  # the finished model, saved by the library, best weights loaded
                        if best_state is not None:
                            module.load_state_dict(best_state)
                        else:
                            best_epoch = len(history)
                        model.history_ = history
                        model.n_epochs_ = len(history)
                        model.best_epoch_ = best_epoch
                        model.best_valid_loss_ = best_loss if use_valid else None
                        module.eval()
                        model.save(Path(tmp) / MODEL_DIR)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:04d}")
            if stop:
                break


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
) -> TrainOutcome:
    """Train sequence model ``name`` ('lstm' or 'transformer') with Ray Train; see the module docstring.

    Parameters: ``settings.models[name]`` over the model's defaults, with ``max_epochs`` and ``seed``
    from ``settings.training`` unless pinned there. ``valid`` (or, if None, the model's internal
    split of ``train``) drives early stopping. ``storage_path``: where the run's checkpoints go
    (default ``settings.ray.storage_path``). ``fail_at_epoch``: inject one failure (tests).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if name not in SEQUENCE_MODELS:
        raise ValueError(
            f"train_sequence_model: {name!r} is not a sequence model; known: {list(SEQUENCE_MODELS)}"
        )
    cls = get_model_class(name)
    assert issubclass(cls, SequenceForecaster)
    params: dict[str, Any] = dict(settings.models.get(name, {}))
    params.setdefault("max_epochs", settings.training.max_epochs)
    params.setdefault("seed", settings.training.seed)
    horizons = tuple(settings.horizons)
    cls(horizons=horizons, **params)._check_targets(train)  # unknown parameters / missing targets: now
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
