"""A deterministic synthetic market with a planted, exactly-known predictive signal.

The default data source of the platform. One seed gives one identical frame. What it plants:

* factor structure: a market factor with regime-switching volatility (a 2-state Markov chain) and
  GARCH(1,1) clustering, one factor per sector, and idiosyncratic GARCH(1,1) noise with Student-t
  innovations (fat tails, volatility clustering);
* fundamentals that evolve slowly and point-in-time: trailing EPS updated at staggered quarterly
  announcements (so ``pe`` moves with price and jumps on earnings), book value (``pb``), shares
  outstanding (``market_cap``) and a yearly dividend (``dividend_yield``);
* a daily ``sentiment`` series per ticker (AR(1));
* a planted signal. Every predictable part of a return is the response to a *shock* observed on an
  earlier day: a zero-mean surprise that nobody could forecast the day before. Each shock moves
  the following days' returns through a known kernel:

  1. sentiment innovations -> drift in their direction, hump-shaped over ~2 weeks (sequential),
     amplified for large surprises and in the high-volatility regime (nonlinear);
  2. idiosyncratic return shocks -> short-term reversal over the next 5 days, muted when the move
     came on abnormally heavy volume (an interaction);
  3. idiosyncratic return shocks -> medium-term momentum 21..126 days later;
  4. earnings surprises -> post-earnings-announcement drift over the next 60 days.

  Because future shocks have zero mean given today's information, the expected forward log return
  given everything known at t (the *oracle*) is an exact convolution of past shocks with the
  cumulated kernels. ``SyntheticMarket.oracle`` holds it for each horizon: the ceiling that a
  model's Rank IC can be compared with. The oracle sees the true idiosyncratic shocks, which an
  observer can only estimate, so no model should be expected to reach it.

CLI: ``python -m ensemble.data.synthetic --tickers 500 --days 1260 --seed 7 --out market.parquet``
(writes the oracle beside it as ``market.oracle.parquet``); ``--stats`` prints the stylised facts.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from ensemble.config import DEFAULT_HORIZONS, SyntheticConfig
from ensemble.data.schema import coerce

logger = logging.getLogger(__name__)

SECTORS: tuple[tuple[str, str], ...] = (
    ("Information Technology", "TEC"),
    ("Health Care", "HLT"),
    ("Financials", "FIN"),
    ("Consumer Discretionary", "CDS"),
    ("Industrials", "IND"),
    ("Communication Services", "COM"),
    ("Consumer Staples", "CST"),
    ("Energy", "ENE"),
    ("Utilities", "UTL"),
    ("Real Estate", "REA"),
    ("Materials", "MAT"),
)


@dataclass(frozen=True)
class SignalParams:
    """Amplitudes of the planted signal, per unit of ``SyntheticConfig.signal_strength``.

    Calibrated so that the oracle's mean daily Rank IC at 5 days is about 0.1 on the default
    market (see ``python -m ensemble.data.synthetic --stats``).
    """

    sentiment: float = 0.00009  # daily drift per unit sentiment innovation, at the kernel's peak
    sentiment_decay: float = 0.90
    sentiment_rise: float = 0.70  # hump: drift builds up as 1 - rise**lag
    large_surprise: float = 1.5  # |innovation| above this (in std) counts as large ...
    large_boost: float = 1.0  # ... and its effect is multiplied by (1 + boost)
    regime_boost: float = 1.0  # effect multiplied by (1 + boost) in the high-volatility regime
    reversal: float = 0.019  # fraction of an idiosyncratic shock reversed on each of the next 5 days
    reversal_days: int = 5
    heavy_volume_mute: float = 0.25  # reversal multiplier when the shock came on heavy volume
    momentum: float = 0.001  # fraction of a shock added on each day of lags 21..126
    momentum_lags: tuple[int, int] = (21, 126)
    earnings_drift: float = 0.006  # fraction of an earnings surprise drifting in on each of 60 days
    earnings_days: int = 60


@dataclass
class SyntheticMarket:
    """The contract table ``prices`` and, keyed the same, the ``oracle`` forward-return expectations."""

    prices: pd.DataFrame
    oracle: pd.DataFrame
    config: SyntheticConfig

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write prices to ``path`` (Parquet) and the oracle beside it as ``<stem>.oracle.parquet``."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        oracle_path = p.with_name(p.stem + ".oracle.parquet")
        self.prices.to_parquet(p, index=False, compression="zstd")
        self.oracle.to_parquet(oracle_path, index=False, compression="zstd")
        return p, oracle_path


def _tickers(sector_idx: np.ndarray) -> list[str]:
    counts: dict[int, int] = {}
    out = []
    for s in sector_idx:
        counts[s] = counts.get(s, 0) + 1
        out.append(f"{SECTORS[s][1]}{counts[s]:03d}")
    return out


def _garch(
    rng: np.random.Generator,
    n_days: int,
    sigma: np.ndarray,
    alpha: float,
    beta: float,
    dof: float,
    regime_mult: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) with unit-variance Student-t innovations; returns (shocks, conditional sd). Shape (T, N)."""
    n = sigma.shape[0]
    z = rng.standard_t(dof, size=(n_days, n)) / np.sqrt(dof / (dof - 2.0))
    omega = sigma**2 * (1.0 - alpha - beta)
    h = sigma**2
    eps = np.empty((n_days, n))
    sd = np.empty((n_days, n))
    prev = np.zeros(n)
    for t in range(n_days):
        h = omega + alpha * prev**2 + beta * h
        sd[t] = np.sqrt(h) * regime_mult[t]
        eps[t] = sd[t] * z[t]
        prev = eps[t] / regime_mult[t]
    return eps, sd


def _causal(kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y[t] = sum_{d>=0} kernel[d] * x[t-d] along axis 0 (a causal FIR filter)."""
    return np.asarray(lfilter(kernel, [1.0], x, axis=0))


def _kernels(p: SignalParams, max_h: int) -> dict[str, np.ndarray]:
    """Response kernels K[l] (l = 0..L, K[0] = 0: a shock never moves its own day's return)."""
    lags = np.arange(0, 400, dtype=float)
    k_sent = np.where(lags >= 1, (1 - p.sentiment_rise**lags) * p.sentiment_decay ** (lags - 1), 0.0)
    k_sent = p.sentiment * k_sent / k_sent.max()
    k_rev = np.where((lags >= 1) & (lags <= p.reversal_days), -p.reversal, 0.0)
    lo, hi = p.momentum_lags
    k_mom = np.where((lags >= lo) & (lags <= hi), p.momentum, 0.0)
    k_earn = np.where((lags >= 1) & (lags <= p.earnings_days), p.earnings_drift, 0.0)
    length = max(hi, p.earnings_days, 200) + max_h + 2
    return {k: v[:length] for k, v in {"sent": k_sent, "rev": k_rev, "mom": k_mom, "earn": k_earn}.items()}


def _cumulated(kernel: np.ndarray, h: int) -> np.ndarray:
    """C[d] = sum_{k=1..h} K[d+k]: the effect on r[t+1..t+h] of a shock dated t-d."""
    padded = np.r_[kernel, np.zeros(h)]
    csum = np.r_[0.0, np.cumsum(padded)]
    d = np.arange(len(kernel))
    return csum[d + h + 1] - csum[d + 1]


def generate_market(
    cfg: SyntheticConfig | None = None,
    params: SignalParams | None = None,
    horizons: tuple[int, ...] = DEFAULT_HORIZONS,
) -> SyntheticMarket:
    """Generate the market described in the module docstring. Deterministic in ``cfg.seed``."""
    cfg = cfg or SyntheticConfig()
    p = params or SignalParams()
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    T, N, S = cfg.n_days, cfg.n_tickers, cfg.n_sectors
    strength = cfg.signal_strength

    # --- universe -------------------------------------------------------------------------
    sector_weights = rng.dirichlet(np.full(S, 4.0))
    sector_idx = np.sort(rng.choice(S, size=N, p=sector_weights))
    sector_idx[:S] = np.arange(S) if N >= S else sector_idx[:S]  # every sector present
    sector_idx = np.sort(sector_idx)
    tickers = _tickers(sector_idx)
    dates = pd.bdate_range(cfg.start, periods=T)

    # --- market regime and factors ---------------------------------------------------------
    stay = np.array([0.985, 0.95])  # P(stay) in low / high volatility regime
    regime = np.zeros(T, dtype=np.int8)
    u = rng.random(T)
    for t in range(1, T):
        prev = regime[t - 1]
        regime[t] = prev if u[t] < stay[prev] else 1 - prev
    regime_mult = np.where(regime == 1, 1.8, 0.85)
    mkt_eps, _ = _garch(rng, T, np.array([0.0085]), 0.08, 0.90, 5.0, regime_mult)
    mkt = 0.0003 + mkt_eps[:, 0]
    sec_eps, _ = _garch(rng, T, np.full(S, 0.0055), 0.06, 0.92, 5.0, regime_mult)
    beta_m = np.clip(rng.normal(1.0, 0.3, N), 0.3, 2.0)
    beta_s = np.clip(rng.normal(1.0, 0.3, N), 0.2, 2.0)
    idio_sigma = np.exp(rng.normal(np.log(0.015), 0.3, N))
    idio, idio_sd = _garch(rng, T, idio_sigma, 0.07, 0.91, 4.5, np.sqrt(regime_mult))
    systematic = beta_m[None, :] * mkt[:, None] + beta_s[None, :] * sec_eps[:, sector_idx]

    # --- sentiment and volume -----------------------------------------------------------------
    phi = 0.9
    sent_innov = rng.standard_normal((T, N))
    sentiment = lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], sent_innov, axis=0)
    vol_phi = 0.6
    vol_noise = lfilter([np.sqrt(1 - vol_phi**2)], [1.0, -vol_phi], rng.standard_normal((T, N)), axis=0)
    vol_innov = vol_noise - vol_phi * np.r_[np.zeros((1, N)), vol_noise[:-1]]  # unforecastable part
    heavy = vol_innov > 0.8

    # --- earnings announcements -----------------------------------------------------------------
    offset = rng.integers(0, 63, N)
    announce = ((np.arange(T)[:, None] - offset[None, :]) % 63 == 0) & (np.arange(T)[:, None] > 0)
    surprise = np.where(announce, rng.normal(0.0, 0.05, (T, N)), 0.0)
    eps_growth = rng.normal(0.015, 0.02, N)

    # --- signal shocks (zero mean given the day before) and their kernels ---------------------
    ks = _kernels(p, max(horizons))
    amp_sent = (1 + p.large_boost * (np.abs(sent_innov) > p.large_surprise)) * (
        1 + p.regime_boost * regime[:, None]
    )
    shocks = {
        "sent": strength * sent_innov * amp_sent,
        "rev": strength * idio * np.where(heavy, p.heavy_volume_mute, 1.0),
        "mom": strength * idio,
        "earn": strength * surprise,
    }
    planted = sum(_causal(ks[k], shocks[k]) for k in shocks)
    ret = 0.0001 + systematic + idio + surprise + planted  # log returns; earnings news jumps on the day

    # --- prices -----------------------------------------------------------------------------
    p0 = np.exp(rng.normal(np.log(60.0), 0.7, N))
    close = p0[None, :] * np.exp(np.cumsum(ret, axis=0))
    sd_day = np.sqrt(idio_sd**2 + (beta_m * 0.0085) ** 2)
    gap = 0.3 * ret + rng.normal(0.0, 0.2, (T, N)) * sd_day
    prev_close = np.r_[p0[None, :], close[:-1]]
    open_ = prev_close * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.5, (T, N))) * sd_day)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.5, (T, N))) * sd_day)
    z = idio / idio_sd
    base_volume = np.exp(rng.normal(np.log(2e6), 0.8, N))
    volume = np.round(base_volume[None, :] * np.exp(0.45 * vol_noise + 0.5 * np.abs(z) - 0.3))

    # --- fundamentals (point in time: EPS and dividends change only on announcement days) -------
    eps0 = p0 / np.exp(rng.normal(np.log(18.0), 0.35, N))
    log_eps = np.log(eps0)[None, :] + np.cumsum(
        np.where(announce, eps_growth[None, :] / 1.0 + surprise * 2.0, 0.0), axis=0
    )
    pe = close / np.exp(log_eps)
    bvps = (p0 / np.exp(rng.normal(np.log(2.5), 0.5, N)))[None, :] * np.exp(
        np.cumsum(np.where(announce, 0.01 + 0.2 * surprise, 0.0), axis=0)
    )
    pb = close / bvps
    shares = np.exp(rng.normal(np.log(3e8), 0.9, N))
    market_cap = close * shares[None, :]
    payer = rng.random(N) < 0.7
    div0 = np.where(payer, p0 * np.exp(rng.normal(np.log(0.02), 0.4, N)), 0.0)
    year = np.arange(T) // 252
    dividend = div0[None, :] * np.exp(0.04 * year)[:, None]
    dividend_yield = dividend / close

    # --- oracle: E[log(close[t+h]/close[t]) | information at t] -------------------------------
    oracle_cols = {}
    for h in horizons:
        o = h * (0.0001 + 0.0003 * beta_m)[None, :] + sum(
            _causal(_cumulated(ks[k], h), shocks[k]) for k in shocks
        )
        oracle_cols[f"oracle_h{h}"] = o

    order = np.argsort(np.array(tickers))  # the contract sorts rows by (ticker, date)

    def flat(a: np.ndarray) -> np.ndarray:  # (T, N) -> ticker-major long vector
        return np.ascontiguousarray(a[:, order].T).reshape(-1)

    key = {
        "date": np.tile(dates.values, N),
        "ticker": np.repeat(np.array(tickers, dtype=object)[order], T),
    }
    prices = pd.DataFrame(
        {
            **key,
            "open": flat(open_),
            "high": flat(high),
            "low": flat(low),
            "close": flat(close),
            "volume": flat(volume),
            "pe": flat(pe),
            "pb": flat(pb),
            "market_cap": flat(market_cap),
            "dividend_yield": flat(dividend_yield),
            "sector": np.repeat(np.array([SECTORS[s][0] for s in sector_idx], dtype=object)[order], T),
            "sentiment": flat(0.5 * sentiment),
        }
    )
    prices = coerce(prices)  # the exact dtypes every loader returns
    oracle = pd.DataFrame({**key, **{k: flat(v) for k, v in oracle_cols.items()}})
    oracle["date"] = prices["date"].to_numpy()
    oracle["ticker"] = prices["ticker"].to_numpy()
    for h in horizons:  # the oracle is undefined where the realised target is (past the last date)
        last = np.tile(np.arange(T) >= T - h, N)
        oracle.loc[last, f"oracle_h{h}"] = np.nan
    logger.info("synthetic market: %d tickers x %d days in %.1fs", N, T, time.perf_counter() - t0)
    return SyntheticMarket(prices=prices, oracle=oracle, config=cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the synthetic market (deterministic in --seed).")
    ap.add_argument("--tickers", type=int, default=SyntheticConfig().n_tickers)
    ap.add_argument("--days", type=int, default=SyntheticConfig().n_days)
    ap.add_argument("--seed", type=int, default=SyntheticConfig().seed)
    ap.add_argument("--signal-strength", type=float, default=1.0)
    ap.add_argument("--out", type=Path, help="Parquet path for prices (oracle written beside it)")
    ap.add_argument("--stats", action="store_true", help="print the stylised facts and the oracle's Rank IC")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SyntheticConfig(
        n_tickers=args.tickers, n_days=args.days, seed=args.seed, signal_strength=args.signal_strength
    )
    t0 = time.perf_counter()
    market = generate_market(cfg)
    secs = time.perf_counter() - t0
    from ensemble.data.schema import validate

    validate(market.prices)
    print(
        f"generated {len(market.prices):,} rows ({args.tickers} tickers x {args.days} days) in {secs:.1f}s; valid"
    )
    if args.out:
        prices_path, oracle_path = market.save(args.out)
        print(f"wrote {prices_path} and {oracle_path}")
    if args.stats:
        from ensemble.data.stylized import format_facts, stylized_facts

        print(format_facts({"synthetic": stylized_facts(market.prices, market.oracle)}))
    return 0


if __name__ == "__main__":
    # The command line's one way to fail (``error: ...``, exit 2 / 3); only the script imports it,
    # never the library.
    from ensemble.cli import run_main

    raise SystemExit(run_main(main))
