"""Portfolio simulation: turn per-date forecasts into a daily return series with trading costs (the
portfolio layer, after qlib's ``PortAnaRecord`` / ``TopkDropoutStrategy``; evaluation of the
forecasts themselves lives in :mod:`ensemble.backtest.evaluation`).

Conventions (every number of a backtest depends on them, so they are fixed here, in one place):

* **Returns** are *simple* daily returns ``ret_1d = close[t] / close[t-1] - 1`` (the previous
  trading day's close to the close of ``t``, per ticker: :func:`daily_returns`). Simple returns
  aggregate across tickers (a portfolio's return is the weighted sum of its holdings' returns),
  log returns do not. The trading calendar is the sorted set of dates in ``returns``.
* **Timing, no look-ahead**: a score on date ``t`` is known at the close of ``t``. The book is traded
  at that close and first earns the return of the *next* trading day ``t+1``; the return of ``t``
  itself is earned by the book traded at the close of ``t-1``. Tickers are chosen among those with a
  finite score on ``t``; whether a ticker has a return on ``t+1`` is never looked at (that would be
  survivorship look-ahead). A held ticker with no (or a NaN) return on a day earns 0 that day.
* **Weights** are fractions of the portfolio's capital. :func:`long_short`: equal weights, long the
  top ``k`` scores at ``+0.5 / k`` each and short the bottom ``k`` at ``-0.5 / k`` each: dollar
  neutral with gross exposure 1 (so its returns compare with a fully invested long-only book such as
  :func:`equal_weight`). ``k = top_k`` or ``floor(quantile x n)`` (at least 1) of the ``n`` tickers
  scored that date; a date with fewer than ``2 k`` scored tickers, or with no scores at all, makes no
  trade (the book is kept). Ties in the score are broken by ticker name (deterministic).
* **Drift and turnover**: between trades the weights drift with returns,
  ``w_i <- w_i (1 + r_i) / (1 + r_p)`` with ``r_p = sum_i w_i r_i`` (what a book that does not trade
  holds). Turnover on a trading date is ``sum_i |w_target_i - w_drifted_i|`` (so the first trade of a
  long-short book has turnover 1, a full flip about 2); 0 on a date with no trade.
* **Rebalancing** every ``hold`` trading days: on the first score date and every ``hold``-th calendar
  date after it. No trade on the last date of the series (nothing left to earn); the book is not
  liquidated at the end (no closing cost).
* **Costs**: ``cost_bps / 1e4 x turnover``, deducted from the return of the date whose close the trade
  is made at: ``net[t] = gross[t] - cost_bps / 1e4 x turnover[t]`` (additive, exact; the cost is taken
  as a fraction of the capital).
* **Series span**: from the first score date (its gross return is 0: nothing is held yet, but the
  first trade is paid) to the trading day after the last score date (or the calendar's last date).

:meth:`PortfolioResult.stats` computes annualised return (CAGR), annualised volatility, Sharpe ratio
(risk-free 0) and maximum drawdown with empyrical-reloaded, 252 periods a year, on the daily *net*
returns; plus mean daily turnover and hit rate (share of days with a positive net return).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import empyrical
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PERIODS_PER_YEAR = 252
RETURN_COLUMN = "ret_1d"
STATS_KEYS = (
    "ann_return",
    "ann_vol",
    "sharpe",
    "max_drawdown",
    "turnover",
    "hit_rate",
    "total_return",
    "days",
)


def daily_returns(prices: pd.DataFrame, price_col: str = "close") -> pd.DataFrame:
    """(date, ticker, ``ret_1d``): each ticker's simple return from its previous row's close to the
    close of ``date`` (NaN on its first row). Uses only rows dated <= ``date``."""
    p = prices[["date", "ticker", price_col]].sort_values(["ticker", "date"])
    close = p[price_col].where(p[price_col] > 0)
    prev = close.groupby(p["ticker"], sort=False).shift(1)
    out = p[["date", "ticker"]].copy()
    out[RETURN_COLUMN] = (close / prev - 1.0).to_numpy()
    return out.reset_index(drop=True)


@dataclass
class PortfolioResult:
    """One simulated portfolio, daily series indexed by date (the date the return is realised).

    ``returns``: net returns (after costs); ``gross``: before costs; ``turnover``: ``sum |dw|`` traded
    at that date's close; ``cost``: ``cost_bps / 1e4 x turnover``; ``weights``: (dates x tickers) the
    book held after that date's close (after any trade), or None."""

    returns: pd.Series
    gross: pd.Series
    turnover: pd.Series
    cost: pd.Series
    weights: pd.DataFrame | None = None
    periods_per_year: int = PERIODS_PER_YEAR

    def equity(self) -> pd.Series:
        """Cumulative net return (0 at the start): ``prod(1 + net) - 1`` up to each date."""
        return pd.Series(
            np.asarray(empyrical.cum_returns(self.returns.to_numpy(np.float64)), dtype=np.float64),
            index=self.returns.index,
            name="equity",
        )

    def stats(self) -> dict[str, float]:
        """Keys :data:`STATS_KEYS`: ``ann_return`` (CAGR), ``ann_vol`` (std ddof 1 x sqrt(252)),
        ``sharpe`` (mean / std x sqrt(252), risk-free 0), ``max_drawdown`` (<= 0, from the starting
        capital on), ``turnover`` (mean daily), ``hit_rate`` (share of days with net > 0),
        ``total_return`` and ``days``. NaN where a statistic is undefined (too few days)."""
        r = self.returns.to_numpy(np.float64)
        n = len(r)
        if n == 0:
            return {k: (0.0 if k == "days" else float("nan")) for k in STATS_KEYS}
        ann = self.periods_per_year
        return {
            "ann_return": float(empyrical.annual_return(r, annualization=ann)),
            "ann_vol": float(empyrical.annual_volatility(r, annualization=ann)) if n > 1 else float("nan"),
            "sharpe": float(empyrical.sharpe_ratio(r, annualization=ann)) if n > 1 else float("nan"),
            "max_drawdown": float(empyrical.max_drawdown(r)),
            "turnover": float(self.turnover.mean()),
            "hit_rate": float((r > 0).mean()),
            "total_return": float(np.prod(1.0 + r) - 1.0),
            "days": float(n),
        }


def _calendar(returns: pd.DataFrame, ret_col: str) -> tuple[pd.DatetimeIndex, pd.DataFrame]:
    """The trading calendar and the (dates x tickers) return matrix of ``returns``."""
    missing = {"date", "ticker", ret_col} - set(returns.columns)
    if missing:
        raise ValueError(f"returns lacks column(s) {sorted(missing)}")
    _no_duplicates(returns, "returns")
    wide = returns.pivot(index="date", columns="ticker", values=ret_col).sort_index()
    return pd.DatetimeIndex(wide.index), wide


def _no_duplicates(frame: pd.DataFrame, what: str) -> None:
    dup = frame.duplicated(["date", "ticker"])
    if dup.any():
        first = frame.loc[dup, ["ticker", "date"]].head(3).to_dict("records")
        raise ValueError(f"{what} has duplicate (date, ticker) rows, e.g. {first}")


def _run(
    targets: pd.DataFrame,
    cal: pd.DatetimeIndex,
    wide: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    hold: int,
    cost_bps: float,
    keep_weights: bool,
) -> PortfolioResult:
    if hold < 1:
        raise ValueError(f"hold must be >= 1 trading day, got {hold}")
    if cost_bps < 0:
        raise ValueError(f"cost_bps must be >= 0, got {cost_bps}")
    for name, d in (("start", start), ("end", end)):
        if d not in cal:
            raise ValueError(f"{name} date {pd.Timestamp(d).date()} is not a trading date of returns")
    dates = cal[(cal >= start) & (cal <= end)]
    tgt = targets[targets["date"].isin(dates)]
    _no_duplicates(tgt, "targets")
    t_wide = tgt.pivot(index="date", columns="ticker", values="weight")
    tickers = wide.columns.union(t_wide.columns)
    r_mat = wide.reindex(index=dates, columns=tickers).to_numpy(np.float64)
    r_mat = np.where(np.isfinite(r_mat), r_mat, 0.0)  # a held ticker with no return earns 0 that day
    has_target = dates.isin(t_wide.index)
    w_mat = t_wide.reindex(index=dates, columns=tickers).to_numpy(np.float64)
    w_mat = np.where(np.isfinite(w_mat), w_mat, 0.0)
    n = len(dates)
    gross, turn = np.zeros(n), np.zeros(n)
    held = np.zeros((n, len(tickers))) if keep_weights else None
    w = np.zeros(len(tickers))
    for i in range(n):
        r = r_mat[i]
        g = float(w @ r)
        gross[i] = g
        if w.any():
            w = w * (1.0 + r) / (1.0 + g) if 1.0 + g > 0 else np.zeros_like(w)  # a wiped-out book holds 0
        if i % hold == 0 and i < n - 1 and has_target[i]:
            turn[i] = float(np.abs(w_mat[i] - w).sum())
            w = w_mat[i].copy()
        if held is not None:
            held[i] = w
    idx = pd.DatetimeIndex(dates, name="date")
    cost = cost_bps / 1e4 * turn
    return PortfolioResult(
        returns=pd.Series(gross - cost, index=idx, name="net"),
        gross=pd.Series(gross, index=idx, name="gross"),
        turnover=pd.Series(turn, index=idx, name="turnover"),
        cost=pd.Series(cost, index=idx, name="cost"),
        weights=None if held is None else pd.DataFrame(held, index=idx, columns=tickers),
    )


def simulate(
    targets: pd.DataFrame,
    returns: pd.DataFrame,
    *,
    start: Any,
    end: Any,
    hold: int = 1,
    cost_bps: float = 10.0,
    ret_col: str = RETURN_COLUMN,
    keep_weights: bool = True,
) -> PortfolioResult:
    """Run a book over the calendar of ``returns`` from ``start`` to ``end`` (both trading dates of
    ``returns``). ``targets``: (date, ticker, ``weight``), the book to hold after that date's close;
    on each rebalance date with target rows the book trades to them (tickers not listed: 0). See
    the module docstring for the conventions."""
    cal, wide = _calendar(returns, ret_col)
    return _run(targets, cal, wide, pd.Timestamp(start), pd.Timestamp(end), hold, cost_bps, keep_weights)


def _span(score_dates: pd.DatetimeIndex, cal: pd.DatetimeIndex) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First score date, and the trading day after the last one (or the calendar's last date)."""
    off = score_dates.difference(cal)
    if len(off):
        raise ValueError(
            f"{len(off)} score date(s) are not trading dates of returns, first {off[0].date()}: "
            "scores and returns must share one calendar"
        )
    last = cal.get_loc(score_dates.max())
    assert isinstance(last, int)
    return pd.Timestamp(score_dates.min()), pd.Timestamp(cal[min(last + 1, len(cal) - 1)])


def long_short_targets(
    scores: pd.DataFrame, *, score_col: str, quantile: float = 0.1, top_k: int | None = None
) -> pd.DataFrame:
    """(date, ticker, ``weight``): per date, ``+0.5 / k`` on the top ``k`` of ``score_col`` and
    ``-0.5 / k`` on the bottom ``k`` among the tickers with a finite score (ties broken by ticker);
    dates with fewer than ``2 k`` scored tickers have no rows."""
    if top_k is None and not 0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    missing = {"date", "ticker", score_col} - set(scores.columns)
    if missing:
        raise ValueError(f"scores lacks column(s) {sorted(missing)}")
    _no_duplicates(scores, "scores")
    s = scores[["date", "ticker", score_col]]
    s = s[np.isfinite(s[score_col].to_numpy(np.float64, na_value=np.nan))]
    s = s.sort_values(["date", score_col, "ticker"], ascending=[True, False, True])
    by = s.groupby("date", sort=False)
    pos = by.cumcount().to_numpy()  # 0 = the highest score of its date
    n = by["ticker"].transform("size").to_numpy()
    k = (
        np.full(len(s), top_k)
        if top_k is not None
        else np.maximum(1, np.floor(quantile * n + 1e-9)).astype(int)
    )
    ok = n >= 2 * k
    thin = s.loc[~ok, "date"].unique()
    if len(thin):
        logger.warning(
            "%d date(s) have fewer than 2k scored tickers and make no trade, first %s",
            len(thin),
            pd.Timestamp(thin[0]).date(),
        )
    weight = np.where(pos < k, 0.5 / k, np.where(pos >= n - k, -0.5 / k, 0.0))
    keep = ok & (weight != 0)
    out = s.loc[keep, ["date", "ticker"]].copy()
    out["weight"] = weight[keep]
    return out.reset_index(drop=True)


def long_short(
    scores: pd.DataFrame,
    returns: pd.DataFrame,
    *,
    score_col: str,
    quantile: float = 0.1,
    top_k: int | None = None,
    hold: int = 1,
    cost_bps: float = 10.0,
    ret_col: str = RETURN_COLUMN,
    keep_weights: bool = True,
) -> PortfolioResult:
    """Dollar-neutral long-short book: long the top ``k`` of ``score_col`` (``+0.5 / k`` each), short
    the bottom ``k`` (``-0.5 / k`` each), ``k = top_k`` or ``floor(quantile x n)`` (at least 1) of
    the ``n`` tickers with a finite score that date (:func:`long_short_targets`). ``scores``: (date,
    ticker, ``score_col``), known at the close of ``date``; ``returns``: (date, ticker, ``ret_1d``)
    simple returns (:func:`daily_returns`). The book traded at the close of ``t`` earns ``t+1``'s
    returns. The series runs from the first date with a finite score to the trading day after the
    last (module docstring)."""
    targets = long_short_targets(scores, score_col=score_col, quantile=quantile, top_k=top_k)
    finite = np.isfinite(scores[score_col].to_numpy(np.float64, na_value=np.nan))
    if not finite.any():
        raise ValueError(f"scores has no finite {score_col!r}")
    cal, wide = _calendar(returns, ret_col)
    start, end = _span(pd.DatetimeIndex(scores.loc[finite, "date"].unique()), cal)
    return _run(targets, cal, wide, start, end, hold, cost_bps, keep_weights)


def equal_weight(
    returns: pd.DataFrame,
    *,
    start: Any = None,
    end: Any = None,
    hold: int = 1,
    cost_bps: float = 10.0,
    ret_col: str = RETURN_COLUMN,
    keep_weights: bool = False,
) -> PortfolioResult:
    """The equal-weight universe baseline: on each rebalance date ``t``, ``1 / n`` in each of the
    ``n`` tickers with a row in ``returns`` on ``t`` (traded that day), earning from ``t+1`` on.
    ``start`` / ``end`` (optional) bound the dates of the series (default: the whole calendar); pass
    the first and last date of a long-short result's index to compare like with like."""
    cal, wide = _calendar(returns, ret_col)
    lo = cal[0] if start is None else pd.Timestamp(start)
    hi = cal[-1] if end is None else pd.Timestamp(end)
    targets = returns[["date", "ticker"]].copy()
    targets["weight"] = 1.0 / targets.groupby("date")["ticker"].transform("size").to_numpy()
    return _run(targets, cal, wide, lo, hi, hold, cost_bps, keep_weights)
