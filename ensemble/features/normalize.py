"""Per-date (cross-sectional) normalisation of features and learning targets.

The platform is judged on how it ranks tickers *within* a date. A model that regresses raw forward
returns with an L2 loss spends most of its capacity on the market's common move and on the most
volatile names; a per-date target removes both. The transforms here act on each date's rows alone
(Qlib's ``CSZScoreNorm`` / ``CSRankNorm`` are the reference), so they are point-in-time by
construction: a value at date t depends only on other values of date t.

Kinds (``kind``):

* ``none``: unchanged;
* ``demean``: x - the date's mean;
* ``zscore``: (x - mean) / std over the date's finite values (std 0 -> 0);
* ``rank``: the date's percentile rank, centred and scaled to unit variance, ``(pct - 0.5) * sqrt(12)``
  (Qlib's CSRankNorm, with ranks at (rank - 0.5) / n so that the date is centred);
* ``rank_gauss``: the normal quantile of the date's rank, ``Phi^-1((rank - 0.5) / n)``: Gaussian
  marginals, immune to outliers (what a heavy-tailed real return needs).

NaN stays NaN and does not count in its date's statistics; a date with fewer than ``min_count``
finite values gets NaN (nothing to rank against).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtri

from ensemble.features.targets import target_horizon

Kind = Literal["none", "demean", "zscore", "rank", "rank_gauss"]
KINDS: tuple[str, ...] = ("none", "demean", "zscore", "rank", "rank_gauss")


def per_date(
    frame: pd.DataFrame, columns: Sequence[str], kind: Kind, *, date_col: str = "date", min_count: int = 2
) -> pd.DataFrame:
    """``frame[columns]`` normalised within each date (see the module docstring); float64."""
    if kind not in KINDS:
        raise ValueError(f"per-date normalisation must be one of {list(KINDS)}, got {kind!r}")
    cols = list(columns)
    x = frame[cols].astype(np.float64)
    x = x.where(np.isfinite(x))
    if kind == "none" or not cols:
        return x
    g = x.groupby(frame[date_col].to_numpy(), sort=False)
    count = g.transform("count")
    if kind == "demean":
        out = x - g.transform("mean")
    elif kind == "zscore":
        std = g.transform("std", ddof=0)
        out = (x - g.transform("mean")) / std.where(std > 0)
        out = out.where(~(std == 0) | x.isna(), 0.0)
    else:
        r = g.rank(method="average")
        if kind == "rank":
            out = ((r - 0.5) / count - 0.5) * np.sqrt(12.0)
        else:
            out = pd.DataFrame(ndtri(((r - 0.5) / count).to_numpy()), index=x.index, columns=cols)
    return out.where(count >= min_count)


def cross_sectional_targets(frame: pd.DataFrame, kind: Kind) -> pd.DataFrame:
    """A copy of ``frame`` whose ``target_h{h}`` columns are replaced by their per-date ``kind``
    (what the models learn; metrics keep scoring against the realised returns). A per-date transform
    is monotone within the date, so Rank IC against it equals Rank IC against the raw return."""
    targets = [c for c in frame.columns if target_horizon(str(c)) is not None]
    if kind == "none" or not targets:
        return frame
    out = frame.copy()
    out[targets] = per_date(frame, targets, kind)
    return out
