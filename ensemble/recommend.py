"""Daily recommendations: the ensemble's as-of forecasts (:func:`ensemble.scoring.score`) turned into
what a user acts on. Pure: no I/O, no Ray.

Per ticker and as-of date (:func:`recommend`):

* per horizon ``h``: the expected log return ``exp_ret_h{h}`` (the ensemble's ``pred_h{h}``), the
  excess over the universe ``excess_h{h}``, the price target ``close * exp(exp_ret)``, the interval as
  prices ``price_lo{L}_h{h}`` / ``price_hi{L}_h{h}`` (``close * exp(bound)``) and ``confidence_h{h}``;
* risk from the price history up to the as-of date (:func:`risk_metrics`, over the last
  ``recommend.risk_window`` trading days): annualised volatility, historical VaR and CVaR of daily
  returns at ``recommend.var_level``, maximum drawdown, beta to the equal-weighted market;
* at the action horizon (``recommend.horizon``, default the middle horizon): ``risk_adjusted``, the
  expected excess return per unit of the name's volatility over the horizon
  (``excess / (ann_vol * sqrt(h / 252))``), the ``action`` (:func:`decide_actions`) and the position
  size ``weight`` (:func:`position_sizes`);
* ``top_features``: the features that moved the forecast most (the tree members' contributions,
  :func:`ensemble.scoring.explain`), named by the feature catalogue's description.

Conventions: returns are daily log returns of ``close`` between consecutive trading dates of the
panel; VaR and CVaR are losses (positive numbers) of *simple* daily returns: VaR is minus the
``1 - var_level`` quantile (linear interpolation, numpy's default), CVaR minus the mean of the returns
at or below that quantile; the drawdown is ``min(close / running max - 1)`` (<= 0) over the window's
closes; beta is ``cov(r, m) / var(m)`` over the dates where both the ticker's return ``r`` and the
market's ``m`` (:func:`ensemble.features.panel.market_log_return`) exist; volatility is the standard
deviation (ddof 1) of the log returns times ``sqrt(252)``. A metric needs ``MIN_RISK_OBS`` returns,
else it is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ensemble.config import RecommendConfig

if TYPE_CHECKING:
    from ensemble.scoring import ScoreResult

TRADING_DAYS = 252
MIN_RISK_OBS = 20
BUY, HOLD, SELL = "BUY", "HOLD", "SELL"
ACTIONS: tuple[str, ...] = (BUY, HOLD, SELL)
RISK_COLUMNS: tuple[str, ...] = ("ann_vol", "var", "cvar", "max_drawdown", "beta", "risk_obs")


def risk_metrics(
    prices: pd.DataFrame,
    as_of: Any = None,
    *,
    window: int = TRADING_DAYS,
    level: float = 0.95,
    min_obs: int = MIN_RISK_OBS,
) -> pd.DataFrame:
    """One row per ticker with a close up to ``as_of`` (default: the latest date): ``ticker`` and
    :data:`RISK_COLUMNS` from the last ``window`` daily returns (``window + 1`` trading dates) up to
    ``as_of`` (conventions: the module docstring). Rows after ``as_of`` are never read."""
    from ensemble.features.panel import market_log_return  # lazy: the feature package loads TA-Lib

    as_of = pd.Timestamp(prices["date"].max() if as_of is None else as_of)
    upto = prices.loc[prices["date"] <= as_of, ["date", "ticker", "close"]]
    dates = np.sort(upto["date"].unique())[-(window + 1) :]
    p = upto.loc[upto["date"] >= dates[0]] if len(dates) else upto
    close = p.pivot(index="date", columns="ticker", values="close").sort_index()
    close = close.where(close > 0)
    logr = np.log(close).diff().iloc[1:]
    mkt = market_log_return(p).reindex(logr.index).to_numpy(dtype=np.float64)
    r = logr.to_numpy(dtype=np.float64)
    ok = np.isfinite(r)
    n = ok.sum(axis=0)
    enough = n >= min_obs
    with np.errstate(invalid="ignore", divide="ignore"):
        ann_vol = np.nanstd(np.where(ok, r, np.nan), axis=0, ddof=1) * math.sqrt(TRADING_DAYS)
        simple = np.expm1(np.where(ok, r, np.nan))
        q = np.nanquantile(simple, 1.0 - level, axis=0) if r.shape[1] else np.zeros(0)
        tail = np.where(simple <= q[None, :], simple, np.nan)
        cvar = -np.nanmean(tail, axis=0)
        var = -q
        # beta on the dates where both the ticker's and the market's return exist
        both = ok & np.isfinite(mkt)[:, None]
        nb = both.sum(axis=0)
        m = np.where(both, mkt[:, None], np.nan)
        y = np.where(both, r, np.nan)
        mc = m - np.nanmean(m, axis=0)
        yc = y - np.nanmean(y, axis=0)
        cov = np.nansum(mc * yc, axis=0) / (nb - 1)
        mvar = np.nansum(mc * mc, axis=0) / (nb - 1)
        beta = np.where((nb >= min_obs) & (mvar > 0), cov / mvar, np.nan)
    running = close.cummax()
    dd = (close / running - 1.0).min(axis=0, skipna=True).to_numpy(dtype=np.float64)
    out = pd.DataFrame(
        {
            "ticker": close.columns.astype(str),
            "ann_vol": np.where(enough, ann_vol, np.nan),
            "var": np.where(enough, var, np.nan),
            "cvar": np.where(enough, cvar, np.nan),
            "max_drawdown": np.where(enough, dd, np.nan),
            "beta": beta,
            "risk_obs": n.astype(np.int64),
        }
    )
    return out.reset_index(drop=True)


def decide_actions(
    signal: np.ndarray | pd.Series, confidence: np.ndarray | pd.Series, cfg: RecommendConfig
) -> np.ndarray:
    """BUY where ``signal >= buy_threshold``, SELL where ``signal <= sell_threshold``, each only when
    ``confidence >= min_confidence``; HOLD otherwise (also where either is missing)."""
    s = np.asarray(signal, dtype=np.float64)
    c = np.asarray(confidence, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        sure = np.isfinite(s) & np.isfinite(c) & (c >= cfg.min_confidence)
        buy = sure & (s >= cfg.buy_threshold)
        sell = sure & (s <= cfg.sell_threshold)
    return np.where(buy, BUY, np.where(sell, SELL, HOLD)).astype(object)


def action_signal(forecasts: pd.DataFrame, horizon: int, cfg: RecommendConfig) -> pd.Series:
    """The number the thresholds apply to: ``excess_h{h}`` or ``pred_h{h}`` (``recommend.signal``)."""
    col = f"excess_h{horizon}" if cfg.signal == "excess" else f"pred_h{horizon}"
    if col not in forecasts.columns:
        raise ValueError(f"the forecasts have no column {col!r} (recommend.signal={cfg.signal!r})")
    return forecasts[col]


def position_sizes(
    actions: np.ndarray | pd.Series, ann_vol: np.ndarray | pd.Series, cfg: RecommendConfig
) -> np.ndarray:
    """Volatility-targeted weights: ``vol_target / ann_vol`` capped at ``max_weight``, positive for a
    BUY, negative for a SELL when ``allow_short`` (else 0), 0 for a HOLD or an unknown volatility; if
    the gross weight passes ``max_total`` every weight is scaled down to it (caps keep holding)."""
    a = np.asarray(actions, dtype=object)
    vol = np.asarray(ann_vol, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        size = np.where(np.isfinite(vol) & (vol > 0), cfg.vol_target / vol, 0.0)
    size = np.minimum(size, cfg.max_weight)
    sign = np.where(a == BUY, 1.0, np.where((a == SELL) & cfg.allow_short, -1.0, 0.0))
    w = sign * size
    gross = float(np.abs(w).sum())
    if gross > cfg.max_total:
        w = w * (cfg.max_total / gross)
    return w + 0.0  # no negative zeros


def top_features(
    contributions: pd.DataFrame | None, descriptions: Mapping[str, str], k: int = 3
) -> pd.Series:
    """Per ticker, its ``k`` largest |contribution| features as ``"description (+0.12%)"`` joined by
    ``"; "`` (a Series indexed by ticker); contributions are in expected-return units."""
    if contributions is None or contributions.empty or k <= 0:
        return pd.Series(dtype=object, name="top_features")
    c = contributions.assign(mag=contributions["contribution"].abs())
    c = c.sort_values(["ticker", "mag", "feature"], ascending=[True, False, True], kind="stable")
    top = c.groupby("ticker", sort=True).head(k)
    text = [
        f"{descriptions.get(f, f)} ({v * 100:+.2f}%)"
        for f, v in zip(top["feature"], top["contribution"], strict=True)
    ]
    return (
        pd.Series(text, index=top["ticker"].to_numpy()).groupby(level=0).agg("; ".join).rename("top_features")
    )


def recommend(
    result: ScoreResult,
    prices: pd.DataFrame,
    cfg: RecommendConfig,
    horizon: int,
    *,
    descriptions: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per scored ticker of ``result`` (columns: the module docstring), sorted by the
    risk-adjusted score, best first. ``prices``: the history the risk metrics read (rows after
    ``result.as_of`` are ignored). ``horizon``: the action horizon (one of the version's)."""
    f = result.frame
    hs = sorted(int(c.rsplit("_h", 1)[1]) for c in f.columns if c.startswith("pred_h"))
    if horizon not in hs:
        raise ValueError(f"action horizon {horizon} is not one of the forecast horizons {hs}")
    out = pd.DataFrame(
        {
            "as_of": result.as_of,
            "ticker": f["ticker"].astype(str).to_numpy(),
            "version": result.version,
            "close": f["close"].to_numpy(dtype=np.float64),
        }
    )
    close = out["close"].to_numpy()
    levels = sorted({c.split("_h")[0][2:] for c in f.columns if c.startswith("lo") and "_h" in c})
    for h in hs:
        out[f"exp_ret_h{h}"] = f[f"pred_h{h}"].to_numpy(dtype=np.float64)
        out[f"excess_h{h}"] = f[f"excess_h{h}"].to_numpy(dtype=np.float64)
        out[f"price_target_h{h}"] = close * np.exp(out[f"exp_ret_h{h}"].to_numpy())
        for lv in levels:
            out[f"price_lo{lv}_h{h}"] = close * np.exp(f[f"lo{lv}_h{h}"].to_numpy(dtype=np.float64))
            out[f"price_hi{lv}_h{h}"] = close * np.exp(f[f"hi{lv}_h{h}"].to_numpy(dtype=np.float64))
        out[f"confidence_h{h}"] = f[f"confidence_h{h}"].to_numpy(dtype=np.float64)
    risk = risk_metrics(prices, result.as_of, window=cfg.risk_window, level=cfg.var_level)
    out = out.merge(risk, on="ticker", how="left")
    vol_h = out["ann_vol"].to_numpy() * math.sqrt(horizon / TRADING_DAYS)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["risk_adjusted"] = np.where(vol_h > 0, out[f"excess_h{horizon}"].to_numpy() / vol_h, np.nan)
    out["horizon"] = horizon
    sig = action_signal(f, horizon, cfg).to_numpy(dtype=np.float64)
    out["action"] = decide_actions(sig, out[f"confidence_h{horizon}"].to_numpy(), cfg)
    out["weight"] = position_sizes(out["action"].to_numpy(), out["ann_vol"].to_numpy(), cfg)
    if descriptions is None:
        from ensemble.scoring import feature_descriptions

        descriptions = feature_descriptions()
    tops = top_features(result.contributions, descriptions, cfg.top_features)
    out["top_features"] = out["ticker"].map(tops).astype(object).fillna("").astype(str)
    out = out.sort_values(
        ["risk_adjusted", "ticker"], ascending=[False, True], na_position="last", kind="stable"
    )
    return out.reset_index(drop=True)
