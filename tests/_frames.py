"""Small feature frames with a planted, learnable signal, for the model tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def planted_drift(f0: np.ndarray, f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """The planted part of the next day's log return given today's f0, f1, f2 (see make_feature_frame)."""
    return 0.004 * np.asarray(f0) - 0.003 * np.asarray(f1) * (np.asarray(f2) > 0)


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
        drift = planted_drift(f[:, 0], f[:, 1], f[:, 2])
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


def mean_rank_ic(frame: pd.DataFrame, pred: np.ndarray | pd.Series, horizon: int = 5) -> float:
    """Mean over dates of the per-date Rank IC of ``pred`` (aligned with ``frame``'s rows) with
    ``target_h{horizon}`` (ensemble.backtest.metrics, the one definition)."""
    from ensemble.backtest.metrics import ic_frame

    col = "__pred__"
    scored = frame[["date", f"target_h{horizon}"]].assign(**{col: np.asarray(pred, dtype=np.float64)})
    return float(ic_frame(scored, [col], f"target_h{horizon}")[col].mean())


def attainable_rank_ic(frame: pd.DataFrame, horizon: int = 5) -> tuple[float, str]:
    """(best mean Rank IC, its source) with ``target_h{horizon}`` on ``frame``'s rows among what a
    model can know at t: each single feature f* (by |IC|: a model may learn either sign) and the
    planted drift computed from today's f0, f1, f2 (the frame's oracle)."""
    feats = sorted(c for c in frame.columns if c.startswith("f") and c[1:].isdigit())
    cand = {c: mean_rank_ic(frame, frame[c], horizon) for c in feats}
    if {"f0", "f1", "f2"} <= set(feats):
        cand["planted_drift"] = mean_rank_ic(
            frame, planted_drift(frame["f0"], frame["f1"], frame["f2"]), horizon
        )
    best = max(cand, key=lambda c: abs(cand[c]))
    return abs(cand[best]), best
