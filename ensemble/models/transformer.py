"""Transformer encoder over a point-in-time window, one head per horizon.

Architecture: linear input projection to ``d_model`` -> fixed sinusoidal positional encoding
(position 0 = oldest step of the window, ``seq_len``-1 = the row's own date t) -> dropout ->
``nn.TransformerEncoder`` (``layers`` x (``nhead`` self-attention + ``dim_feedforward`` MLP),
``batch_first=True``, pre-norm) with left-padded steps masked as keys -> final LayerNorm -> pooling
-> one linear head per horizon.

Pooling (``pooling``): ``'last'`` (default) takes the encoder output at the last step, the row's own
date t, which attends to the whole window: the natural read-out for a forecast made at t.
``'mean'`` averages the outputs of the real (unpadded) steps.

Cost: with ``'last'`` pooling only the last step's output of the final encoder layer is read, so that
layer runs its query, attention read-out and MLP for that one step (keys and values still come from
every step): the same function of the window as the full layer at the last step (to float rounding,
the same parameters and state_dict), about 40% less work per training step at ``seq_len`` 60 and two
layers (measured in bench/train.py's stage table as the transformer's wall time).

Point in time: the window holds only the ticker's rows dated <= t (see
:mod:`ensemble.models.sequence`), so unmasked self-attention inside it cannot see the future.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ensemble.models.sequence import SequenceForecaster, SinusoidalPositionalEncoding


def _last_step(layer: nn.TransformerEncoderLayer, h: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """The output at the last step of a pre-norm ``layer`` applied to ``h`` (batch, steps, d_model):
    ``x + sa(norm1(x))`` then ``+ ff(norm2(.))`` as in ``nn.TransformerEncoderLayer`` with
    ``norm_first=True``, with the last step as the only query. Uses the layer's own modules."""
    kv = layer.norm1(h)
    attn = layer.self_attn(kv[:, -1:, :], kv, kv, key_padding_mask=pad_mask, need_weights=False)[0]
    z = h[:, -1, :] + layer.dropout1(attn[:, 0, :])
    ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(z)))))
    return z + layer.dropout2(ff)


class WindowTransformer(nn.Module):
    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        seq_len: int,
        d_model: int,
        nhead: int,
        layers: int,
        dim_feedforward: int,
        dropout: float,
        pooling: str,
    ) -> None:
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.pooling = pooling
        self.input_proj = nn.Linear(n_features, d_model)
        self.pos = SinusoidalPositionalEncoding(d_model, seq_len)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.heads = nn.ModuleList([nn.Linear(d_model, 1) for _ in range(n_outputs)])

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.pos(self.input_proj(x)))
        if self.pooling == "last":
            layers = self.encoder.layers
            for layer in layers[:-1]:
                h = layer(h, src_key_padding_mask=pad_mask)
            z = self.norm(_last_step(layers[-1], h, pad_mask))
        else:
            h = self.norm(self.encoder(h, src_key_padding_mask=pad_mask))
            real = (~pad_mask).to(h.dtype)[..., None]
            z = (h * real).sum(dim=1) / real.sum(dim=1)
        return torch.cat([head(z) for head in self.heads], dim=1)


class TransformerForecaster(SequenceForecaster):
    """Transformer encoder with sinusoidal positions over a point-in-time window (see module doc).

    Parameters (besides the shared ones in ``sequence.COMMON_DEFAULTS``): ``d_model``,
    ``nhead``, ``layers``, ``dim_feedforward``, ``pooling`` ('last' or 'mean').
    """

    name: ClassVar[str] = "transformer"
    model_defaults: ClassVar[dict[str, Any]] = {
        "d_model": 64,
        "nhead": 4,
        "layers": 2,
        "dim_feedforward": 128,
        "pooling": "last",
    }

    def _build_module(self, n_features: int) -> nn.Module:
        p = self.resolved_params()
        return WindowTransformer(
            n_features,
            len(self.horizons),
            seq_len=int(p["seq_len"]),
            d_model=int(p["d_model"]),
            nhead=int(p["nhead"]),
            layers=int(p["layers"]),
            dim_feedforward=int(p["dim_feedforward"]),
            dropout=float(p["dropout"]),
            pooling=str(p["pooling"]),
        )
