"""Small feature frames with a planted, learnable signal, for the model tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_feature_frame(
    n_tickers: int = 12,
    n_days: int = 260,
    n_features: int = 8,
    seed: int = 0,
    horizons: tuple[int, ...] = (5, 20, 60),
) -> pd.DataFrame:
    """A feature frame (date, ticker, f0..fk, close, sector, target_h*) sorted by (ticker, date).

    Daily log returns carry a planted component: 0.004 * f0[t-1] - 0.003 * f1[t-1] * (f2[t-1] > 0),
    so forward returns are partly predictable from today's features (linear and an interaction).
    Targets are the true forward log returns of ``close`` (NaN where the future is unknown).
    """
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-02", periods=n_days)
    frames = []
    for i in range(n_tickers):
        f = rng.standard_normal((n_days, n_features))
        f[:, 0] = pd.Series(f[:, 0]).ewm(alpha=0.3).mean().to_numpy() * 2  # persistent signal feature
        drift = 0.004 * f[:, 0] - 0.003 * f[:, 1] * (f[:, 2] > 0)
        r = np.r_[0.0, drift[:-1]] + rng.normal(0, 0.012, n_days)
        close = 50 * np.exp(np.cumsum(r))
        df = pd.DataFrame(f, columns=[f"f{k}" for k in range(n_features)])
        df.insert(0, "ticker", f"T{i:03d}")
        df.insert(0, "date", dates)
        df["close"] = close
        df["sector"] = f"S{i % 3}"
        logc = np.log(close)
        for h in horizons:
            fwd = np.full(n_days, np.nan)
            fwd[:-h] = logc[h:] - logc[:-h]
            df[f"target_h{h}"] = fwd
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
