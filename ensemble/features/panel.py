"""The panel layout shared by the feature families, and point-in-time rolling helpers.

A contract table (long, sorted by ticker then date) is viewed in two dense layouts:

* *ticker space*, shape ``(T, N)``, Fortran order (each ticker contiguous): column ``i`` holds ticker ``i``'s **valid** rows in date order
  (row ``p`` = its ``p``-th valid row), padded with NaN at the end. Time-series operations (rolling
  windows, lags, EMAs) run down the columns, so a window never crosses two tickers and a row never
  sees a later one. Invalid rows (a NaN or non-positive price, a NaN or negative volume) are left
  out, so one bad print does not poison every later value of a recursive indicator; their features
  are NaN.
* *date space*, shape ``(D, N)``: row ``d`` is the cross-section of calendar date ``d``. Per-date
  ranks, z-scores and market / sector aggregates run along the rows, and use only that date.

Every helper here is trailing: the value at a row depends only on that ticker's rows (or that
date's cross-section) at or before it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

FloatArray = np.ndarray


def valid_price_rows(prices: pd.DataFrame) -> np.ndarray:
    """The rows whose prices can be used (bool per row): ``close`` and, where the frame has them,
    ``open``, ``high`` and ``low`` finite and > 0, and ``volume`` finite and >= 0. The feature panel
    leaves every other row out (its features are NaN)."""

    def col(name: str) -> FloatArray:
        return prices[name].to_numpy(dtype=np.float64, na_value=np.nan)

    with np.errstate(invalid="ignore"):
        ok = np.ones(len(prices), dtype=bool)
        for name in ("open", "high", "low", "close"):
            if name == "close" or name in prices.columns:
                x = col(name)
                ok &= np.isfinite(x) & (x > 0)
        if "volume" in prices.columns:
            v = col("volume")
            ok &= np.isfinite(v) & (v >= 0)
    return ok


def market_log_return(prices: pd.DataFrame) -> pd.Series:
    """The equal-weighted market's daily log return: per date, the log of the mean simple return of
    the tickers that have one at that date (a Series ``mkt_r1`` indexed by every date of the frame,
    ascending; NaN at a date where no ticker has a return, such as the first).

    Input: a long frame with ``date``, ``ticker`` and ``close`` (any row order; other price columns
    are used for validity when present). Invalid rows (:func:`valid_price_rows`: a NaN or
    non-positive close, or an invalid open/high/low/volume where given) are left out as if absent,
    exactly as the feature panel leaves them out: a ticker's return at a valid row is the log of its
    close over its previous valid close, however many rows lie between; its first valid row has no
    return. Point in time: the value at a date uses closes dated at or before it only.
    """
    missing = [c for c in ("date", "ticker", "close") if c not in prices.columns]
    if missing:
        raise ValueError(f"market_log_return: the frame lacks column(s) {missing}")
    d_codes, d_uniques = pd.factorize(prices["date"], sort=True)
    t_codes, t_uniques = pd.factorize(prices["ticker"], sort=False)
    n_dates = len(d_uniques)
    key = t_codes.astype(np.int64) * n_dates + d_codes  # (ticker, date) as one sortable number
    order = np.argsort(key, kind="stable")  # by ticker, then date: the identity on a sorted frame
    key = key[order]
    again = key[1:][key[1:] == key[:-1]]
    if len(again):
        first = int(again[0])
        raise ValueError(
            f"market_log_return: (ticker, date) must be unique; ticker {t_uniques[first // n_dates]!r} has "
            f"two rows dated {pd.Timestamp(d_uniques[first % n_dates]).date()}"
        )
    t, d = key // n_dates, key % n_dates
    valid = valid_price_rows(prices)[order]
    d, t = d[valid], t[valid]
    close = prices["close"].to_numpy(dtype=np.float64, na_value=np.nan)[order][valid]
    prev = np.full_like(close, np.nan)
    prev[1:] = close[:-1]
    prev[1:][t[1:] != t[:-1]] = np.nan  # a ticker's first valid row has no previous close
    simple = np.expm1(log_ratio(close, prev))
    ok = np.isfinite(simple)
    s = np.bincount(d[ok], weights=simple[ok], minlength=n_dates)  # summed in (ticker, date) order
    cnt = np.bincount(d[ok], minlength=n_dates)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return pd.Series(np.log1p(mean), index=pd.Index(d_uniques, name="date"), name="mkt_r1")


class Panel:
    """Index arrays for one contract table, converters between layouts, and a cache of shared series."""

    def __init__(self, prices: pd.DataFrame) -> None:
        self.columns = frozenset(str(c) for c in prices.columns)
        n = len(prices)
        self.n_rows = n
        codes, uniques = pd.factorize(prices["ticker"], sort=False)
        if n and (np.diff(codes) < 0).any():
            raise ValueError("prices must be sorted by (ticker, date)")
        self.tickers = np.asarray(uniques, dtype=object)
        self.n_tickers = len(self.tickers)
        self.tidx = codes.astype(np.int64)
        dvals = prices["date"].to_numpy(dtype="datetime64[ns]")
        self.dates, didx = np.unique(dvals, return_inverse=True)
        self.didx = didx.astype(np.int64).reshape(-1)
        self.n_dates = len(self.dates)

        def num(col: str) -> FloatArray:
            return prices[col].to_numpy(dtype=np.float64, na_value=np.nan)

        self._raw: dict[str, FloatArray] = {}
        for col in ("open", "high", "low", "close", "volume"):
            self._raw[col] = num(col)
        valid = valid_price_rows(prices)
        self.valid = valid
        self.n_invalid = int(n - valid.sum())
        vt = self.tidx[valid]
        self.vt = vt
        first = np.searchsorted(vt, np.arange(self.n_tickers), side="left")
        self.vcount = np.bincount(vt, minlength=self.n_tickers)
        self.pos = np.arange(len(vt), dtype=np.int64) - first[vt]
        self.T = int(self.vcount.max()) if len(vt) else 0
        self.vdidx = self.didx[valid]
        # every ticker has T valid rows: the valid rows are ticker space flattened in Fortran order
        self.rect = self.T * self.n_tickers == len(vt)
        self.vstart = first  # offset of each ticker's first valid row among the valid rows
        for col in ("pe", "pb", "market_cap", "dividend_yield", "sentiment"):
            if col in prices.columns:
                self._raw[col] = num(col)
        self.sector_codes: np.ndarray | None = None
        self.sector_names: np.ndarray | None = None
        if "sector" in prices.columns:
            sc, sn = pd.factorize(prices["sector"], sort=True, use_na_sentinel=True)
            self.sector_codes = sc.astype(np.int64)
            self.sector_names = np.asarray(sn, dtype=object)
        self._cache: dict[Any, Any] = {}

    # ---------------------------------------------------------------- layouts
    def raw(self, col: str) -> FloatArray:
        """The long float column (all rows)."""
        return self._raw[col]

    def ts(self, col: str) -> FloatArray:
        """Ticker-space matrix (T, N) of an input column over the valid rows."""
        return self.cached(("ts", col), lambda: self.long_to_ts(self._raw[col]))

    def long_to_ts(self, x: FloatArray) -> FloatArray:
        return self.valid_to_ts(np.asarray(x[self.valid], dtype=np.float64))

    def valid_to_ts(self, vals: FloatArray) -> FloatArray:
        """Values given at the valid rows (in row order) placed in ticker space."""
        if self.rect:
            return np.array(vals, dtype=np.float64).reshape((self.T, self.n_tickers), order="F")
        m = np.full((self.T, self.n_tickers), np.nan, order="F")
        m[self.pos, self.vt] = vals
        return m

    def ts_to_long(self, m: FloatArray) -> FloatArray:
        out = np.full(self.n_rows, np.nan)
        out[self.valid] = self.ts_to_valid(m)
        return out

    def ts_to_valid(self, m: FloatArray) -> FloatArray:
        """Values of a ticker-space matrix at the valid rows, in row order."""
        if self.rect:
            return np.asarray(m).reshape(-1, order="F")
        return np.asarray(m[self.pos, self.vt])

    def ts_to_date(self, m: FloatArray) -> FloatArray:
        x = np.full((self.n_dates, self.n_tickers), np.nan, order="F")
        x[self.vdidx, self.vt] = self.ts_to_valid(m)
        return x

    def date_to_ts(self, x: FloatArray) -> FloatArray:
        return self.valid_to_ts(x[self.vdidx, self.vt])

    def date_vector_to_ts(self, v: FloatArray) -> FloatArray:
        """A per-date series (D,) placed at every valid row of ticker space."""
        return self.valid_to_ts(v[self.vdidx])

    def cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # ---------------------------------------------------------------- shared series
    def r1(self) -> FloatArray:
        """Daily log return of close, ticker space (NaN at each ticker's first valid row)."""

        def make() -> FloatArray:
            c = self.ts("close")
            return log_ratio(c, shift(c, 1))

        return self.cached("r1", make)

    def ret(self, n: int) -> FloatArray:
        """n-row log return log(close[t] / close[t-n]), ticker space."""

        def make() -> FloatArray:
            c = self.ts("close")
            return log_ratio(c, shift(c, n))

        return self.cached(("ret", n), make)

    def group_mean_by_date(self, m: FloatArray, groups: np.ndarray | None, n_groups: int) -> FloatArray:
        """Equal-weighted mean of a ticker-space series per (date, group), shape (D, n_groups).

        ``groups`` is a long (all rows) integer code, -1 = no group; ``None`` puts every row in group 0.
        Each cell uses only the rows of that date (accumulated in row order: deterministic).
        """
        vals = self.ts_to_valid(m)
        g = np.zeros(len(vals), dtype=np.int64) if groups is None else groups[self.valid]
        ok = np.isfinite(vals) & (g >= 0)
        key = self.vdidx[ok] * n_groups + g[ok]
        size = self.n_dates * n_groups
        s = np.bincount(key, weights=vals[ok], minlength=size)
        k = np.bincount(key, minlength=size)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(k > 0, s / np.maximum(k, 1), np.nan)
        return mean.reshape(self.n_dates, n_groups)

    def market_r1(self) -> FloatArray:
        """Equal-weighted universe daily log return per date (D,): :func:`market_log_return` of the
        valid rows (so it is the market Prophet's ``mkt_log_level`` regressor cumulates)."""

        def make() -> FloatArray:
            close = np.where(self.valid, self._raw["close"], np.nan)
            rows = pd.DataFrame({"date": self.dates[self.didx], "ticker": self.tidx, "close": close})
            return market_log_return(rows).to_numpy()

        return self.cached("market_r1", make)

    def market_r1_ts(self) -> FloatArray:
        return self.cached("market_r1_ts", lambda: self.date_vector_to_ts(self.market_r1()))

    def sector_r1(self) -> FloatArray:
        """Equal-weighted sector daily log return per (date, sector), shape (D, S)."""
        if self.sector_codes is None or self.sector_names is None:
            raise ValueError("no sector column")
        codes, n_sec = self.sector_codes, len(self.sector_names)

        def make() -> FloatArray:
            simple = np.expm1(self.r1())
            return np.log1p(self.group_mean_by_date(simple, codes, max(n_sec, 1)))

        return self.cached("sector_r1", make)

    def sector_r1_ts(self) -> FloatArray:
        """Each row's own sector's daily return, ticker space."""

        def make() -> FloatArray:
            assert self.sector_codes is not None
            sr = self.sector_r1()
            sc = self.sector_codes[self.valid]
            return self.valid_to_ts(np.where(sc >= 0, sr[self.vdidx, np.maximum(sc, 0)], np.nan))

        return self.cached("sector_r1_ts", make)

    def sector_ts(self) -> FloatArray:
        """Sector code per valid row (float, NaN where missing), ticker space."""

        def make() -> FloatArray:
            assert self.sector_codes is not None
            sc = self.sector_codes.astype(np.float64)
            sc[self.sector_codes < 0] = np.nan
            return self.long_to_ts(sc)

        return self.cached("sector_ts", make)


# -------------------------------------------------------------------- trailing helpers
def shift(m: FloatArray, k: int) -> FloatArray:
    """Lag a ticker-space (or date-space) matrix by k rows along axis 0 (NaN at the top)."""
    out = np.full_like(m, np.nan, dtype=np.float64)
    if k <= 0:
        raise ValueError("shift must be positive: only lags are point-in-time")
    if k < m.shape[0]:
        out[k:] = m[:-k]
    return out


def log_ratio(a: FloatArray, b: FloatArray) -> FloatArray:
    """log(a / b), NaN where not finite. The ratio is taken first, so a common scale cancels exactly."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(a / b)
    out[~np.isfinite(out)] = np.nan
    return out


def safe_div(a: FloatArray, b: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b
    out[~np.isfinite(out)] = np.nan
    return np.asarray(out)


def _frame(m: FloatArray) -> pd.DataFrame:
    return pd.DataFrame(m, copy=False)


def _window_sums(x: FloatArray, window: int, powers: tuple[int, ...]) -> tuple[FloatArray, list[FloatArray]]:
    """Trailing window count of finite values and sums of x**k, via running sums down axis 0.

    The running sums start at each column's first row, so a value at row t depends on rows <= t
    only; non-finite values are skipped (they count as missing).
    """
    ok = np.isfinite(x)
    x0 = np.where(ok, x, 0.0)
    cnt = np.cumsum(ok, axis=0, dtype=np.float64)
    sums = [np.cumsum(x0 if k == 1 else x0**k, axis=0) for k in powers]

    def win(c: FloatArray) -> FloatArray:
        out = c.copy()
        out[window:] -= c[:-window]
        return out

    return win(cnt), [win(c) for c in sums]


def rolling(m: FloatArray, window: int, how: str, min_periods: int | None = None) -> FloatArray:
    """Trailing rolling statistic down axis 0 (sum, mean, std, var, max, min, skew, kurt).

    NaNs are skipped; a window needs ``min_periods`` (default ``window``) finite values. sum, mean,
    std and var use running sums (fast); the others use pandas' rolling windows.
    """
    mp = window if min_periods is None else min_periods
    if how in ("sum", "mean", "std", "var"):
        n, sums = _window_sums(m, window, (1,) if how in ("sum", "mean") else (1, 2))
        enough = n >= max(mp, 1 if how in ("sum", "mean") else 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            if how == "sum":
                out = sums[0]
            elif how == "mean":
                out = sums[0] / n
            else:
                var = np.maximum((sums[1] - sums[0] * sums[0] / n) / (n - 1.0), 0.0)
                out = var if how == "var" else np.sqrt(var)
        return np.asarray(np.where(enough, out, np.nan))
    if m.ndim == 1:
        r1 = pd.Series(m, copy=False).rolling(window, min_periods=mp)
        return np.asarray(getattr(r1, how)().to_numpy(dtype=np.float64))
    r = _frame(m).rolling(window, min_periods=mp)
    return np.asarray(getattr(r, how)().to_numpy(dtype=np.float64))


def ewm_mean(m: FloatArray, span: int) -> FloatArray:
    """Exponential moving average (recursive, causal) down axis 0; NaNs are skipped, not filled."""
    obj = pd.Series(m, copy=False) if m.ndim == 1 else _frame(m)
    return np.asarray(obj.ewm(span=span, adjust=False, ignore_na=True).mean().to_numpy(dtype=np.float64))


def ffill(m: FloatArray) -> FloatArray:
    """Carry the last non-NaN value forward (never backward) down axis 0."""
    return np.asarray(_frame(m).ffill().to_numpy(dtype=np.float64))


def rolling_beta_corr(y: FloatArray, x: FloatArray, window: int) -> tuple[FloatArray, FloatArray]:
    """Trailing OLS slope of y on x and their correlation over ``window`` rows (pairs with both finite)."""
    ok = np.isfinite(x) & np.isfinite(y)
    xm = np.where(ok, x, np.nan)
    ym = np.where(ok, y, np.nan)
    mp = max(window * 2 // 3, 3)
    mx = rolling(xm, window, "mean", mp)
    my = rolling(ym, window, "mean", mp)
    mxy = rolling(xm * ym, window, "mean", mp)
    mxx = rolling(xm * xm, window, "mean", mp)
    myy = rolling(ym * ym, window, "mean", mp)
    cov = mxy - mx * my
    vx = mxx - mx * mx
    vy = myy - my * my
    beta = safe_div(cov, vx)
    with np.errstate(invalid="ignore"):
        corr = safe_div(cov, np.sqrt(vx * vy))
    return beta, np.clip(corr, -1.0, 1.0)


def row_ranks(x: FloatArray) -> FloatArray:
    """Ranks along axis 1 (1-based, ties get their average rank); non-finite values stay NaN."""
    x = np.ascontiguousarray(np.where(np.isfinite(x), x, np.nan))  # rows contiguous for argsort
    if x.size == 0:
        return x
    n = x.shape[1]
    order = np.argsort(x, axis=1, kind="stable")  # NaN last
    sv = np.take_along_axis(x, order, axis=1)
    idx = np.broadcast_to(np.arange(n), sv.shape)
    first = np.ones(sv.shape, dtype=bool)
    first[:, 1:] = sv[:, 1:] != sv[:, :-1]  # a tie group starts here
    last = np.ones(sv.shape, dtype=bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(sv.shape)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=1)
    ranks[np.isnan(x)] = np.nan
    return ranks


def xs_rank(x: FloatArray) -> FloatArray:
    """Per-date percentile rank (0..1], like pandas' ``rank(pct=True)``, along the row; NaN stays NaN."""
    r = row_ranks(x)
    cnt = np.isfinite(r).sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(r / cnt)


def row_sum(x: FloatArray) -> FloatArray:
    """Sum along axis 1, accumulated strictly left to right (keepdims).

    numpy's ``sum`` adds pairwise in blocks, so its rounding depends on how many columns there are:
    a ticker listed after a cutoff (a NaN column before it, summed as 0) would move the last bit of
    earlier cross-sectional means. A running sum adds exact zeros, which changes nothing.
    """
    if x.shape[1] == 0:
        return np.zeros((x.shape[0], 1))
    return np.cumsum(x, axis=1)[:, -1:]


def xs_zscore(x: FloatArray) -> FloatArray:
    """Per-date z-score of a date-space matrix along the row (NaN where fewer than 3 finite values)."""
    ok = np.isfinite(x)
    cnt = ok.sum(axis=1, keepdims=True)
    xz = np.where(ok, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = row_sum(xz) / cnt
        dev = np.where(ok, x - mu, 0.0)
        sd = np.sqrt(row_sum(dev * dev) / cnt)
        z = (x - mu) / sd
    z[~np.isfinite(z) | (cnt < 3)] = np.nan
    return np.asarray(z)


def xs_rank_within(x: FloatArray, groups: FloatArray) -> FloatArray:
    """Per-date percentile rank within each group (date-space ``groups``: float codes 0..S-1, NaN = none).

    One rank of (group, global rank) keys per date: tickers of a lower group code come first, so a
    ticker's rank within its group is its key's rank minus the count of lower-group tickers.
    """
    pct = xs_rank(x)
    ok = np.isfinite(pct) & np.isfinite(groups)
    key = np.where(ok, groups + 0.5 * np.where(ok, pct, 0.0), np.nan)
    rk = row_ranks(key)
    codes = np.where(ok, groups, -1).astype(np.int64)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    out = np.full_like(x, np.nan, dtype=np.float64)
    below = np.zeros((x.shape[0], 1))
    for g in range(n_groups):
        sel = codes == g
        size = sel.sum(axis=1, keepdims=True).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(sel, (rk - below) / size, out)
        below = below + size
    return out
