"""Shared machinery of the two sequence models (LSTM, Transformer).

Windows
    The input of a prediction for (ticker, date t) is the window of that ticker's last ``seq_len``
    rows ending at t (rows t-L+1 .. t, in the ticker's own date order). Windows are built lazily per
    mini-batch by index arithmetic over one contiguous float32 array of scaled features sorted by
    (ticker, date): nothing of size rows x L x features is ever materialised. A window that would
    reach before the ticker's first row is *left-padded* with exact zeros and a padding mask (True =
    padded step); the models ignore padded steps (attention masks; the LSTM also sees a 0/1 "real
    step" channel). Padding indices point at a dedicated all-zero row, so a window never reads another
    ticker's rows, not even multiplied by zero. Early dates of a ticker are therefore predicted from
    shorter windows, never dropped.

    Point in time: the window for t holds only rows dated <= t of the same ticker, features are
    scaled row by row with statistics fixed at fit time, so a prediction at t depends on nothing
    dated after t. Rows are taken in the order of the frame given to ``predict``: to give early test
    dates full windows, pass the preceding history in the same frame (its rows are predicted too).

Scaling
    Features: per-feature median / IQR (``scaler='robust'``, default) or mean / std
    (``scaler='standard'``), computed on the training frame's rows only and stored as fitted state;
    non-finite values become 0 after scaling, and scaled values are clipped to +-``clip_features``.
    Targets: standardised per horizon with the training mean / std (stored); predictions are mapped
    back to log returns.

Training
    One output per horizon; the loss (``'huber'``, default, or ``'mse'``, on standardised targets)
    is averaged per horizon over the rows whose target is finite (NaN targets are masked out), then
    over horizons. AdamW, gradient-norm clipping, mini-batches of (ticker, date) rows sampled without
    replacement by a seeded generator, at most ``max_samples_per_epoch`` rows per epoch. Early
    stopping with ``patience`` epochs on the validation loss (``eval_metric='loss'``) or on the
    validation rows' Rank IC (``'rank_ic'``: per date across tickers, averaged over dates, then over
    horizons; an epoch counts as better when it beats the best by more than ``min_delta`` in the
    watched metric's units); the best-validation state_dict is kept,
    unless ``fit`` is given ``refit_on``: then a fresh module (the same seed) trains on those rows for
    the epochs up to the best one, with no validation, and is the one kept (``refit_``).

    Validation: with ``valid`` given, its windows take their history from the tail of ``train`` (the
    caller purges the train rows whose labels overlap the validation dates, as the walk-forward
    splitter does). Without ``valid``, the last ``valid_fraction`` of train's dates is held out as
    validation and the ``max(horizons)`` dates before it are purged from the training loss (their
    labels look into the validation window; their features still serve as window history). When
    train is too short for that split, the model trains for ``max_epochs`` without early stopping.

Determinism
    ``torch.manual_seed(seed)`` inside a forked RNG (the caller's global RNG state is untouched),
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` and cuDNN deterministic mode during
    fit/predict (restored afterwards), a fixed thread count when ``num_threads`` is set. On CUDA also
    the math scaled-dot-product-attention backend (the fused ones have non-deterministic backwards)
    and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set. Identical seeds and inputs give
    identical predictions on the same machine, device and thread count (and, on CUDA, the same
    batches: :meth:`predict` of some dates agrees with the full one to float32 rounding).

Artifacts: ``weights.safetensors`` (safetensors never unpickles) + ``meta.json`` (resolved params,
feature names, scalers, history, the refit's record). The module is rebuilt from the stored params and the state_dict is
loaded strictly.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ensemble.backtest.metrics import daily_rank_ic
from ensemble.config import DEFAULT_HORIZONS, FeatureConfig, TrainingConfig
from ensemble.models.base import (
    FitCallback,
    Forecaster,
    Iteration,
    feature_columns,
    notify,
    read_meta,
    refuse_pickles,
    target_col,
    write_meta,
)

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
EVAL_METRICS = ("loss", "rank_ic")  # what early stopping may watch (the ``eval_metric`` parameter)
FORMAT_VERSION = 1

COMMON_DEFAULTS: dict[str, Any] = {
    "seq_len": FeatureConfig().sequence_length,
    "max_epochs": TrainingConfig().max_epochs,
    "seed": TrainingConfig().seed,
    "batch_size": 512,
    "lr": 1e-3,  # 3e-4 checked by validation: no evidence either way (docs/evidence.md)
    "weight_decay": 1e-4,
    "grad_clip": 1.0,
    "dropout": 0.1,
    "loss": "huber",  # 'huber' (delta = huber_delta on standardised targets) or 'mse'
    # what early stopping watches on the validation rows: 'loss' (the training loss function) or
    # 'rank_ic' (the mean over horizons of the mean per-date Rank IC, higher is better; as the
    # boosters' eval_metric).
    # 'loss' by validation: with 50,000-row epochs 'rank_ic' kept the same epochs on the synthetic
    # market and lowered the S&P sample's validation Rank IC in 5 of 6 cells; with the 20,000-row
    # epochs below it changed only the S&P LSTM (+0.004 / +0.014 / -0.024): no evidence (docs/evidence.md)
    "eval_metric": "loss",
    "huber_delta": 1.0,
    # the validation loss peaks early (bench/quality.py: best after the first 50,000 rows, both models,
    # both data sets; cluster/train.yaml's full scale not re-validated), so epochs are short and
    # stopping waits three of them: against 50,000 rows and patience 2, the members' validation Rank
    # IC rose in 8 of 12 cells (2 models x 3 horizons x the synthetic market and the S&P sample's
    # training years; +0.006 on average) and the ensemble's out-of-fold validation Rank IC in 4 of 6
    # (+0.002) (docs/evidence.md); 10,000 rows and patience 4 lowered the members' in 8 of 12 (-0.005)
    "patience": 3,
    # an epoch counts as better only if it improves the watched metric by this much (the validation
    # loss, ~0.42, or the Rank IC): in the full run the transformer's epochs 4-7 moved the loss by 3e-5
    # (noise) and cost ~90 s each
    "min_delta": 1e-4,
    "valid_fraction": 0.15,
    "max_samples_per_epoch": 20_000,  # None: every training row each epoch
    "max_valid_samples": 20_000,  # a fixed seeded subset of the validation rows; None: all
    "scaler": "robust",  # 'robust' (median/IQR) or 'standard' (mean/std)
    "clip_features": 10.0,
    "predict_batch_size": 4096,
    "device": "auto",  # 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'
    "num_threads": None,  # torch CPU threads during fit/predict; None: leave torch's setting
    "time_budget_s": None,  # stop after the epoch that passes this many seconds (breaks determinism)
}


# --------------------------------------------------------------------------------------------------
# runtime context
# --------------------------------------------------------------------------------------------------
def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        _prepare_cuda()
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


def _prepare_cuda() -> None:
    # deterministic cuBLAS needs this before its first handle is created; an explicit setting wins
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextmanager
def torch_runtime(device: torch.device, seed: int | None, num_threads: int | None) -> Iterator[None]:
    """Deterministic settings for one fit/predict; every global touched is restored on exit."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        if num_threads:
            torch.set_num_threads(int(num_threads))
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=cuda_devices))
            if device.type == "cuda":  # the fused CUDA attention backwards are not deterministic
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            if seed is not None:
                torch.manual_seed(int(seed))
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        if num_threads:
            torch.set_num_threads(prev_threads)


# --------------------------------------------------------------------------------------------------
# scaling
# --------------------------------------------------------------------------------------------------
def fit_scaler(values: np.ndarray, kind: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (center, scale) from training rows; degenerate columns fall back safely."""
    x = np.where(np.isfinite(values), values, np.nan).astype(np.float64, copy=False)
    n = x.shape[1]
    center = np.zeros(n)
    scale = np.ones(n)
    for j in range(n):
        col = x[:, j]
        col = col[~np.isnan(col)]
        if col.size == 0:
            logger.warning("feature %r has no finite training value: it will be constant 0", names[j])
            continue
        if kind == "robust":
            q25, q50, q75 = np.percentile(col, [25, 50, 75])
            c, s = q50, q75 - q25
        elif kind == "standard":
            c, s = col.mean(), col.std()
        else:
            raise ValueError(f"scaler must be 'robust' or 'standard', got {kind!r}")
        if not np.isfinite(s) or s <= 1e-12:
            s = col.std()
        if not np.isfinite(s) or s <= 1e-12:
            s = 1.0
        center[j], scale[j] = c, s
    return center, scale


def scale_features(
    values: np.ndarray, center: np.ndarray, scale: np.ndarray, clip: float | None
) -> np.ndarray:
    """(x - center) / scale row by row, non-finite -> 0, clipped; float32 C-contiguous."""
    with np.errstate(invalid="ignore", over="ignore"):
        z = (np.asarray(values, dtype=np.float64) - center) / scale
    z = np.where(np.isfinite(z), z, 0.0)
    if clip is not None:
        z = np.clip(z, -clip, clip)
    return np.ascontiguousarray(z, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# lazy windows
# --------------------------------------------------------------------------------------------------
class SequenceData:
    """Scaled features of a frame sorted by (ticker, date), windows built lazily by index.

    ``order[i]`` is the position in the input frame of sorted row i. ``x_pad[0]`` is an all-zero row;
    sorted row i lives at ``x_pad[i + 1]``.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        feature_names: list[str],
        center: np.ndarray,
        scale: np.ndarray,
        seq_len: int,
        clip: float | None,
        horizons: tuple[int, ...] | None = None,
        target_mean: np.ndarray | None = None,
        target_std: np.ndarray | None = None,
        device: torch.device | None = None,
    ) -> None:
        missing = [c for c in feature_names if c not in frame.columns]
        if missing:
            raise ValueError(f"frame lacks feature columns {missing[:10]} (of {len(missing)}) seen at fit")
        self.seq_len = int(seq_len)
        device = device or torch.device("cpu")
        codes, uniques = pd.factorize(frame["ticker"].astype(str), sort=True)
        dates = pd.to_datetime(frame["date"]).to_numpy(dtype="datetime64[ns]").astype(np.int64)
        order = np.lexsort((dates, codes))
        s_codes, s_dates = codes[order], dates[order]
        n = len(order)
        if n > 1:
            dup = (s_codes[1:] == s_codes[:-1]) & (s_dates[1:] == s_dates[:-1])
            if dup.any():
                k = int(np.flatnonzero(dup)[0]) + 1
                raise ValueError(
                    f"duplicate (ticker, date) row: ticker {uniques[s_codes[k]]!r} date "
                    f"{pd.Timestamp(s_dates[k]).date()}"
                )
        new_ticker = np.ones(n, dtype=bool)
        if n > 1:
            new_ticker[1:] = s_codes[1:] != s_codes[:-1]
        start = np.maximum.accumulate(np.where(new_ticker, np.arange(n), 0)) if n else np.zeros(0, np.int64)
        self.order = order
        self.dates = s_dates
        self.codes = s_codes
        self.n = n

        raw = frame[feature_names].to_numpy(dtype=np.float64, na_value=np.nan)[order]
        x = scale_features(raw, center, scale, clip)
        x_pad = np.zeros((n + 1, len(feature_names)), dtype=np.float32)
        x_pad[1:] = x
        self.x_pad = torch.from_numpy(x_pad).to(device)
        self.start = torch.from_numpy(start.astype(np.int64)).to(device)
        self.offsets = torch.arange(-(self.seq_len - 1), 1, dtype=torch.int64, device=device)

        self.y: torch.Tensor | None = None
        if horizons is not None:
            assert target_mean is not None and target_std is not None
            y = frame[[target_col(h) for h in horizons]].to_numpy(dtype=np.float64, na_value=np.nan)[order]
            y = np.where(np.isfinite(y), (y - target_mean) / target_std, np.nan)
            self.y = torch.from_numpy(y.astype(np.float32)).to(device)

    def windows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, pad_mask) for sorted rows ``idx``: x (B, L, F), pad_mask (B, L), True = padded step."""
        pos = idx[:, None] + self.offsets[None, :]
        real = pos >= self.start[idx][:, None]
        gather = torch.where(real, pos + 1, torch.zeros_like(pos))
        return self.x_pad[gather], ~real

    def labelled_rows(self) -> np.ndarray:
        """Sorted rows with at least one finite target."""
        assert self.y is not None
        return np.flatnonzero(torch.isfinite(self.y).any(dim=1).cpu().numpy())


# --------------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------------
def masked_loss_terms(
    pred: torch.Tensor, target: torch.Tensor, kind: str, delta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-horizon (sum of elementwise losses over finite targets, count of finite targets)."""
    mask = torch.isfinite(target)
    safe_t = torch.where(mask, target, torch.zeros_like(target))
    if kind == "mse":
        el = (pred - safe_t) ** 2
    elif kind == "huber":
        el = nn.functional.huber_loss(pred, safe_t, reduction="none", delta=delta)
    else:
        raise ValueError(f"loss must be 'huber' or 'mse', got {kind!r}")
    el = torch.where(mask, el, torch.zeros_like(el))
    return el.sum(dim=0), mask.sum(dim=0).to(el.dtype)


def combine_loss(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over horizons (with any finite target) of the per-horizon mean loss."""
    has = counts > 0
    if not bool(has.any()):
        return sums.sum() * 0.0
    return (sums[has] / counts[has]).mean()


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos encoding (Vaswani et al.), added to the input; not part of the state_dict."""

    pe: torch.Tensor

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]][None, :, :]


# --------------------------------------------------------------------------------------------------
# the shared Forecaster
# --------------------------------------------------------------------------------------------------
class SequenceTrainingHooks(FitCallback):
    """A :class:`FitCallback` that may also steer *how* a sequence model trains, for a distributed
    runner (Ray Train) around the model's own ``fit``. The defaults train exactly as a plain ``fit``.

    * :meth:`resume_state`: a state saved from an earlier :class:`Iteration` (``it.state()``) to
      continue from (e.g. the latest checkpoint after a worker failure), or None to start afresh;
    * :meth:`wrap_module`: the module the optimiser steps through (e.g. DDP); the model keeps the
      unwrapped one;
    * :meth:`batches`: the mini-batches of one epoch's sampled rows (e.g. this worker's shard).

    ``fit`` uses the first callback of this type it is given.
    """

    def resume_state(self) -> dict[str, Any] | None:
        return None

    def wrap_module(self, module: nn.Module) -> nn.Module:
        return module

    def batches(self, perm: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
        return (perm[b : b + batch_size] for b in range(0, len(perm), batch_size))


class _RefitHooks(SequenceTrainingHooks):
    """A runner's hooks for :meth:`SequenceForecaster._refit`: its sharding and module wrapping, but
    no resume (the refit starts afresh) and no per-epoch reports (nothing to stop or checkpoint)."""

    def __init__(self, inner: SequenceTrainingHooks | None) -> None:
        self.inner = inner or SequenceTrainingHooks()

    def wrap_module(self, module: nn.Module) -> nn.Module:
        return self.inner.wrap_module(module)

    def batches(self, perm: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
        return self.inner.batches(perm, batch_size)


class SequenceForecaster(Forecaster):
    """Fit / predict / save / load for a torch module mapping (x (B,L,F), pad_mask (B,L)) -> (B, H).

    Subclasses set ``name`` and ``model_defaults`` and implement :meth:`_build_module`.
    """

    uses_sequences: ClassVar[bool] = True
    supports_gpu: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    early_stops: ClassVar[bool] = True
    refits: ClassVar[bool] = True
    model_defaults: ClassVar[dict[str, Any]] = {}
    # fitted state (set by fit; load sets all but best_valid_loss_)
    history_: list[dict[str, float]]
    n_epochs_: int
    best_epoch_: int
    best_valid_loss_: float | None
    refit_: dict[str, Any] | None

    @classmethod
    def param_names(cls) -> frozenset[str]:
        return frozenset(COMMON_DEFAULTS) | frozenset(cls.model_defaults)

    def __init__(self, horizons: Sequence[int] = DEFAULT_HORIZONS, **params: Any) -> None:
        known = self.param_names()
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown parameters {unknown}; known: {sorted(known)}")
        super().__init__(horizons, **params)

    # -- params -------------------------------------------------------------------------------------
    def resolved_params(self) -> dict[str, Any]:
        return {**COMMON_DEFAULTS, **self.model_defaults, **self.params}

    @abstractmethod
    def _build_module(self, n_features: int) -> nn.Module: ...

    # -- fit ----------------------------------------------------------------------------------------
    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        *,
        callbacks: Sequence[FitCallback] = (),
        refit_on: pd.DataFrame | None = None,
        device: str | torch.device | None = None,
    ) -> Self:
        """Fit on ``train`` (early stopping on ``valid``, else on an internal split; see the module
        docstring). ``callbacks`` see every epoch (:class:`ensemble.models.base.Iteration`, with a
        ``state()`` to checkpoint); a :class:`SequenceTrainingHooks` among them may resume, wrap the
        module and shard the batches. ``device`` overrides the ``device`` parameter (e.g. the device
        a distributed runner assigns to this worker). ``refit_on``: after stopping, a fresh module
        (the same seed) is trained on these rows, with no validation, for the epochs up to the best
        one, and is the one kept (:meth:`_refit`); the scalers stay those fitted on ``train``."""
        self.check_targets(train)
        if valid is not None:
            self.check_targets(valid)
        if refit_on is not None:
            self.check_targets(refit_on)
        p = self.resolved_params()
        if p["eval_metric"] not in EVAL_METRICS:
            raise ValueError(
                f"{self.name}: eval_metric must be one of {list(EVAL_METRICS)}, got {p['eval_metric']!r}"
            )
        dev = device if isinstance(device, torch.device) else resolve_device(device or p["device"])
        names = feature_columns(train)
        if not names:
            raise ValueError(f"{self.name}: training frame has no feature columns")
        raw = train[names].to_numpy(dtype=np.float64, na_value=np.nan)
        center, scale = fit_scaler(raw, p["scaler"], names)
        del raw
        y = train[[target_col(h) for h in self.horizons]].to_numpy(dtype=np.float64, na_value=np.nan)
        t_mean = np.zeros(len(self.horizons))
        t_std = np.ones(len(self.horizons))
        for j, h in enumerate(self.horizons):
            col = y[:, j][np.isfinite(y[:, j])]
            if col.size == 0:
                raise ValueError(
                    f"{self.name}: target {target_col(h)} has no finite value in the training frame"
                )
            t_mean[j] = col.mean()
            sd = col.std()
            t_std[j] = sd if np.isfinite(sd) and sd > 1e-12 else 1.0
        del y

        common: dict[str, Any] = dict(
            feature_names=names,
            center=center,
            scale=scale,
            seq_len=p["seq_len"],
            clip=p["clip_features"],
            horizons=self.horizons,
            target_mean=t_mean,
            target_std=t_std,
            device=dev,
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
            train_rows, v_rows = self._internal_split(tr, rows, float(p["valid_fraction"]))

        self.feature_names_ = names
        self.scaler_center_ = center
        self.scaler_scale_ = scale
        self.target_mean_ = t_mean
        self.target_std_ = t_std
        self.device_ = dev
        for cb in callbacks:
            cb.on_fit_start(self)
        with torch_runtime(dev, p["seed"], p["num_threads"]):
            self.module_ = self._build_module(len(names)).to(dev)
            self._train_loop(tr, train_rows, va, v_rows, p, callbacks)
        del tr, va
        self.refit_ = None
        if refit_on is not None:
            self._refit(SequenceData(refit_on, **common), len(train_rows), p, callbacks)
        self.module_.eval()
        for cb in callbacks:
            cb.on_fit_end(self)
        return self

    def _refit(
        self, data: SequenceData, n_stopped: int, p: dict[str, Any], callbacks: Sequence[FitCallback]
    ) -> None:
        """Train a fresh module (the same seed) on the labelled rows of ``data`` with no validation
        for ``best_epoch_`` epochs (each samples at most ``max_samples_per_epoch`` of its rows, as
        the stopped fit's epochs did of theirs; no ``time_budget_s``), and keep it. The stopped fit's
        ``history_``, ``n_epochs_``, ``best_epoch_`` and ``best_valid_loss_`` stay; ``refit_``
        records the refit. A distributed runner's hooks shard the batches and wrap the module as
        before, but neither resume nor report: a run that fails during the refit resumes the stopped
        fit's last checkpoint, which trains no further epoch, and refits again from the start."""
        rows = data.labelled_rows()
        epochs = max(1, int(self.best_epoch_))
        stopped = (self.history_, self.n_epochs_, self.best_epoch_, self.best_valid_loss_)
        hooks = next((c for c in callbacks if isinstance(c, SequenceTrainingHooks)), None)
        t0 = time.perf_counter()
        with torch_runtime(self.device_, p["seed"], p["num_threads"]):
            self.module_ = self._build_module(len(self.feature_names_)).to(self.device_)
            self._train_loop(
                data, rows, data, np.zeros(0, dtype=np.int64),
                {**p, "max_epochs": epochs, "time_budget_s": None}, [_RefitHooks(hooks)], refit=True,
            )  # fmt: skip
        refit_history = self.history_
        self.history_, self.n_epochs_, self.best_epoch_, self.best_valid_loss_ = stopped
        info: dict[str, Any] = {
            "epochs": len(refit_history),
            "n_train_rows": int(len(rows)),
            "stopped_n_train_rows": int(n_stopped),
            "train_loss": float(refit_history[-1]["train_loss"]),
            "seconds": time.perf_counter() - t0,
        }
        self.refit_ = info
        logger.info("%s: refitted %d epoch(s) on %d rows in %.1f s", self.name, epochs, len(rows),
                    info["seconds"])  # fmt: skip

    def _internal_split(
        self, data: SequenceData, rows: np.ndarray, frac: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Last ``frac`` of the dates -> validation; purge max(horizons) dates before it from training."""
        udates = np.unique(data.dates)
        n_valid = int(round(len(udates) * frac))
        purge = max(self.horizons)
        if frac <= 0 or n_valid < 1 or len(udates) - n_valid - purge < 1:
            logger.warning(
                "%s: %d training dates are too few for a %.0f%% validation slice purged by %d dates; "
                "training %s epochs without early stopping",
                self.name,
                len(udates),
                100 * frac,
                purge,
                self.resolved_params()["max_epochs"],
            )
            return rows, np.zeros(0, dtype=np.int64)
        valid_start = udates[len(udates) - n_valid]
        train_end = udates[len(udates) - n_valid - purge]  # training rows: dates < train_end
        d = data.dates[rows]
        return rows[d < train_end], rows[d >= valid_start]

    def _train_loop(
        self,
        tr: SequenceData,
        train_rows: np.ndarray,
        va: SequenceData,
        v_rows: np.ndarray,
        p: dict[str, Any],
        callbacks: Sequence[FitCallback] = (),
        refit: bool = False,
    ) -> None:
        if len(train_rows) == 0:
            raise ValueError(f"{self.name}: no training row with a finite target")
        hooks = next((c for c in callbacks if isinstance(c, SequenceTrainingHooks)), SequenceTrainingHooks())
        device = self.device_
        gen = torch.Generator().manual_seed(int(p["seed"]))
        if p["max_valid_samples"] is not None and len(v_rows) > int(p["max_valid_samples"]):
            pick = torch.randperm(len(v_rows), generator=gen)[: int(p["max_valid_samples"])].numpy()
            v_rows = np.sort(v_rows[pick])
        t_rows = torch.from_numpy(train_rows.astype(np.int64))
        v_idx = torch.from_numpy(v_rows.astype(np.int64)).to(device)
        module = self.module_
        opt = torch.optim.AdamW(module.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        bs = int(p["batch_size"])
        per_epoch = (
            len(t_rows)
            if p["max_samples_per_epoch"] is None
            else min(len(t_rows), int(p["max_samples_per_epoch"]))
        )
        use_valid = len(v_rows) > 0
        if not use_valid and not refit:
            logger.warning(
                "%s: no validation rows; training %d epochs without early stopping",
                self.name,
                p["max_epochs"],
            )
        by_ic = p["eval_metric"] == "rank_ic"
        best_loss = math.inf  # the validation loss of the best epoch
        best_watch = math.inf  # the watched metric of the best epoch, lower is better (-Rank IC)
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch, bad, start = 0, 0, 0
        stopped = False  # resumed from the checkpoint of the epoch that stopped the fit
        history: list[dict[str, float]] = []
        seconds_before = 0.0
        resume = hooks.resume_state()
        if resume is not None:  # continue a fit from the state an earlier epoch reported
            if resume.get("eval_metric", "loss") != p["eval_metric"]:  # checked before any state loads
                raise ValueError(
                    f"{self.name}: cannot resume a fit that stopped on eval_metric "
                    f"{resume.get('eval_metric', 'loss')!r} with eval_metric {p['eval_metric']!r}"
                )
            module.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            start, best_epoch, bad = int(resume["epoch"]), int(resume["best_epoch"]), int(resume["bad"])
            stopped = bool(resume.get("stopped", False))
            best_loss = float(resume["best_val_loss"])
            best_watch = float(resume.get("best_watch", best_loss))  # absent: saved under 'loss'
            best_state = resume["best_state"]
            history = list(resume["history"])
            seconds_before = float(resume["seconds"])
            gen.set_state(resume["gen_state"])
            torch.set_rng_state(resume["rng_state"])
            logger.info("%s: resumed after epoch %d", self.name, start)
        net = hooks.wrap_module(module)
        t0 = time.perf_counter()
        assert tr.y is not None
        for epoch in range(start + 1, 0 if stopped else int(p["max_epochs"]) + 1):
            net.train()
            perm = t_rows[torch.randperm(len(t_rows), generator=gen)[:per_epoch]]
            tot, nb = 0.0, 0
            for idx in hooks.batches(perm, bs):
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
            stop = False
            if use_valid:
                rec["valid_loss"], ic = self._evaluate(va, v_idx, p, rank_ic_too=by_ic)
                if by_ic:
                    rec["valid_rank_ic"] = ic
                watched = -ic if by_ic else rec["valid_loss"]
                if watched < best_watch - float(p["min_delta"]):
                    best_loss, best_watch, best_epoch, bad = rec["valid_loss"], watched, epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                else:
                    bad += 1
                    if bad >= int(p["patience"]):
                        logger.info(
                            "%s: early stop at epoch %d (best %d, valid %s %.5f)",
                            self.name,
                            epoch,
                            best_epoch,
                            p["eval_metric"],
                            -best_watch if by_ic else best_loss,
                        )
                        stop = True
            history.append(rec)
            logger.debug("%s epoch %d: %s", self.name, epoch, rec)
            if p["time_budget_s"] is not None and seconds > float(p["time_budget_s"]):
                logger.info(
                    "%s: time budget %.0f s spent after epoch %d", self.name, p["time_budget_s"], epoch
                )
                stop = True

            snapshot = {
                "epoch": epoch,
                "best_val_loss": best_loss,
                "best_watch": best_watch,
                "eval_metric": p["eval_metric"],
                "best_epoch": best_epoch,
                "bad": bad,
                "stopped": stop,  # a run resumed from here trains no further epoch
                "best_state": best_state,
                "history": list(history),
                "seconds": seconds,
            }

            def state(snapshot: dict[str, Any] = snapshot) -> dict[str, Any]:
                """Everything to resume after this epoch (call it before the next epoch starts)."""
                return {
                    **snapshot,
                    # copies: the fit goes on (or loads its best weights) after this returns
                    "model": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
                    "optimizer": copy.deepcopy(opt.state_dict()),
                    "gen_state": gen.get_state(),
                    "rng_state": torch.get_rng_state(),
                }

            metrics = {
                "train_loss": rec["train_loss"],
                "valid_loss": rec.get("valid_loss", math.nan),
                "best_valid_loss": best_loss if use_valid else math.nan,
                "best_epoch": float(best_epoch),
                **({"valid_rank_ic": rec["valid_rank_ic"]} if "valid_rank_ic" in rec else {}),
            }
            it = Iteration(self.name, None, epoch, metrics, state=state, extra={"last": stop})
            if notify(callbacks, self, it):
                stop = True
            if stop or epoch == int(p["max_epochs"]):
                break
        if best_state is not None:
            module.load_state_dict(best_state)
        else:
            best_epoch = len(history)
        self.history_ = history
        self.n_epochs_ = len(history)
        self.best_epoch_ = best_epoch
        self.best_valid_loss_ = best_loss if use_valid else None
        logger.info(
            "%s: trained %d epochs (best %d) in %.1f s on %s",
            self.name,
            self.n_epochs_,
            best_epoch,
            seconds_before + time.perf_counter() - t0,
            device,
        )

    @torch.no_grad()
    def _evaluate(
        self, data: SequenceData, idx: torch.Tensor, p: dict[str, Any], rank_ic_too: bool = False
    ) -> tuple[float, float]:
        """The loss of the sorted rows ``idx`` and, with ``rank_ic_too``, their Rank IC (per date
        across tickers, averaged over dates, then over the horizons with a date of enough tickers;
        0.0 when none has one; NaN without ``rank_ic_too``)."""
        assert data.y is not None
        self.module_.eval()
        n_h = len(self.horizons)
        sums = torch.zeros(n_h, device=idx.device)
        counts = torch.zeros(n_h, device=idx.device)
        bs = int(p["predict_batch_size"])
        preds = []
        for b in range(0, len(idx), bs):
            i = idx[b : b + bs]
            x, pad = data.windows(i)
            out = self.module_(x, pad)
            s, c = masked_loss_terms(out, data.y[i], p["loss"], float(p["huber_delta"]))
            sums += s
            counts += c
            if rank_ic_too:
                preds.append(out.detach().cpu())
        loss = float(combine_loss(sums, counts))
        if not rank_ic_too:
            return loss, math.nan
        dates = data.dates[idx.cpu().numpy()]
        pred = torch.cat(preds).numpy().astype(np.float64) if preds else np.zeros((0, n_h))
        y = data.y[idx].cpu().numpy().astype(np.float64)
        ics = []  # per horizon with a date of enough tickers (daily_rank_ic's MIN_TICKERS)
        for j in range(n_h):
            daily = daily_rank_ic(dates, pred[:, j], y[:, j])
            if len(daily):  # daily_rank_ic leaves out the dates without an IC
                ics.append(float(daily.mean()))
        return loss, float(np.mean(ics)) if ics else 0.0

    # -- predict ------------------------------------------------------------------------------------
    def _data_for(self, frame: pd.DataFrame) -> SequenceData:
        self._check_fitted("module_")
        p = self.resolved_params()
        return SequenceData(
            frame,
            self.feature_names_,
            self.scaler_center_,
            self.scaler_scale_,
            p["seq_len"],
            p["clip_features"],
            device=self.device_,
        )

    def _batched(self, data: SequenceData, fn: Any, rows: np.ndarray | None = None) -> list[torch.Tensor]:
        """Apply ``fn(x, pad)`` over the sorted rows ``rows`` (default all) in fixed-size batches
        (eval mode, no grad)."""
        p = self.resolved_params()
        bs = int(p["predict_batch_size"])
        todo = torch.arange(data.n, device=self.device_) if rows is None else torch.as_tensor(rows)
        outs: list[torch.Tensor] = []
        self.module_.eval()
        with torch_runtime(self.device_, None, p["num_threads"]), torch.inference_mode():
            for b in range(0, len(todo), bs):
                x, pad = data.windows(todo[b : b + bs].to(self.device_))
                outs.append(fn(x, pad).float().cpu())
        return outs

    def predict(self, frame: pd.DataFrame, *, dates: Sequence[Any] | None = None) -> pd.DataFrame:
        """Forecasts for every row of ``frame`` or, with ``dates``, only for its rows on those dates
        (their windows still read the earlier rows of ``frame``): what daily scoring asks for. On the
        CPU those rows' forecasts equal the full predict's bit for bit; on CUDA to float32 rounding
        (about 1e-8 measured on an H200: the GPU's kernels depend on the batch's shape)."""
        data = self._data_for(frame)
        rows = None
        if dates is not None:
            rows = np.flatnonzero(np.isin(data.dates, pd.DatetimeIndex(list(dates)).as_unit("ns").asi8))
        outs = self._batched(data, self.module_, rows)
        z = torch.cat(outs).numpy().astype(np.float64) if outs else np.zeros((0, len(self.horizons)))
        preds_sorted = z * self.target_std_ + self.target_mean_
        if rows is not None:  # back in frame order, only the asked rows
            picked = np.sort(data.order[rows])
            preds = np.empty((len(frame), len(self.horizons)))
            preds[data.order[rows]] = preds_sorted
            return self._output(frame.iloc[picked], preds[picked])
        preds = np.empty_like(preds_sorted)
        preds[data.order] = preds_sorted
        return self._output(frame, preds)

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        self._check_fitted("module_")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module_.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE))
        write_meta(
            d,
            {
                "model": self.name,
                "format_version": FORMAT_VERSION,
                "horizons": list(self.horizons),
                "params": self.resolved_params(),
                "feature_names": self.feature_names_,
                "scaler_center": self.scaler_center_,
                "scaler_scale": self.scaler_scale_,
                "target_mean": self.target_mean_,
                "target_std": self.target_std_,
                "history": self.history_,
                "n_epochs": self.n_epochs_,
                "best_epoch": self.best_epoch_,
                "refit": self.refit_,
                "weights_file": WEIGHTS_FILE,
                "torch_version": torch.__version__,
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        d = Path(directory)
        meta = read_meta(d, cls.name)  # refuses pickles first
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{d}: unsupported {cls.name} format_version {meta.get('format_version')!r}")
        model = cls(horizons=tuple(meta["horizons"]), **meta["params"])
        model.feature_names_ = list(meta["feature_names"])
        model.scaler_center_ = np.asarray(meta["scaler_center"], dtype=np.float64)
        model.scaler_scale_ = np.asarray(meta["scaler_scale"], dtype=np.float64)
        model.target_mean_ = np.asarray(meta["target_mean"], dtype=np.float64)
        model.target_std_ = np.asarray(meta["target_std"], dtype=np.float64)
        model.history_ = list(meta["history"])
        model.n_epochs_ = int(meta["n_epochs"])
        model.best_epoch_ = int(meta["best_epoch"])
        model.refit_ = meta.get("refit")  # absent from models saved before the refit
        model.device_ = resolve_device(meta["params"]["device"])
        refuse_pickles(d)
        state = load_file(str(d / WEIGHTS_FILE), device="cpu")
        module = model._build_module(len(model.feature_names_))
        module.load_state_dict(state, strict=True)
        model.module_ = module.to(model.device_).eval()
        return model
