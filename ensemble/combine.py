"""Combining the models' forecasts: a weighted mean over the models that have a forecast.

Each model's ``predict`` gives one row per (date, ticker) with ``pred_h{h}``. :func:`weighted_mean`
aligns them on (date, ticker) and averages with the configured weights, renormalised per row over
the models whose forecast is finite there: a model that is missing (failed, degraded, or a Prophet
ticker that was not fitted) drops out of that row's average; it never contributes an invented number.
A row no model covers stays NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ensemble.models.base import KEY_COLUMNS, pred_col


def weighted_mean(
    preds: Mapping[str, pd.DataFrame], weights: Mapping[str, float], horizons: Sequence[int]
) -> pd.DataFrame:
    """Keys, ``pred_h{h}`` (the weighted mean) and ``n_models_h{h}`` (how many models it averages).

    One row per (date, ticker) that any positively weighted model forecasts: the first model's rows in
    its order, then the rows only later models have."""
    names = [n for n in preds if weights.get(n, 0.0) > 0]
    if not names:
        raise ValueError(f"weighted_mean: no model with a positive weight among {sorted(preds)}")
    keys = list(KEY_COLUMNS)
    base = preds[names[0]][keys].reset_index(drop=True)
    same = {
        n: len(preds[n]) == len(base) and preds[n][keys].reset_index(drop=True).equals(base) for n in names
    }
    if not all(same.values()):  # the rows only other models forecast follow the first model's rows
        more = [preds[n][keys] for n in names if not same[n]]
        base = pd.concat([base, *more], ignore_index=True).drop_duplicates(keys, ignore_index=True)
    aligned: dict[str, pd.DataFrame] = {}
    for n in names:
        p = preds[n].reset_index(drop=True)
        if same[n] and len(p) == len(base):
            aligned[n] = p
        else:  # different row order or coverage: align on the keys
            aligned[n] = base.merge(p, on=keys, how="left", validate="one_to_one")
    out = base.copy()
    for h in horizons:
        col = pred_col(h)
        x = np.column_stack([aligned[n][col].to_numpy(dtype=np.float64) for n in names])
        w = np.array([float(weights[n]) for n in names])
        ok = np.isfinite(x)
        wsum = (ok * w).sum(axis=1)
        num = np.where(ok, x, 0.0) @ w
        with np.errstate(invalid="ignore", divide="ignore"):
            out[col] = np.where(wsum > 0, num / wsum, np.nan)
        out[f"n_models_h{h}"] = ok.sum(axis=1)
    return out
