"""Feature pipeline benchmark on the synthetic market (default 500 tickers x 1,260 days).

Prints, from one run:
* the catalogue counts (synthetic market, S&P 500 sample with and without sectors);
* seconds of the whole pipeline with n_jobs=1 and with n_jobs=2 on the same panel, and the speed-up
  (n_jobs=1 seconds / n_jobs=2 seconds): one warm-up build of each first, not counted (imports, TA-Lib's
  first calls, the first fork), then ``--repeat`` rounds that alternate which setting goes first; the
  speed-up is the median of the rounds' ratios (each round's two builds ran back to back), beside the
  ratio of the best times;
* peak memory: traced allocations of the n_jobs=1 build (tracemalloc) and the process's peak RSS;
* feature selection fitted on the first 70% of dates, and the held-out mean Rank IC (per-date
  Spearman, averaged) of every selected feature with the 5-day target after a 5-day purge, sorted
  by |IC|, top 25, beside the oracle's IC (the ceiling) and the planted signal each feature relates to.

Usage: ``.venv/bin/python bench/features.py [--tickers N --days N --seed S --top 25 --repeat 3]``
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.backtest.metrics import ic_frame, ic_summary
from ensemble.config import FeatureConfig, SyntheticConfig
from ensemble.data.synthetic import generate_market
from ensemble.features import Preprocessor, build_features, catalogue, feature_columns
from ensemble.features.catalog import CONTRACT_COLUMNS

SP500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sp500_daily.parquet"
PURGE = 5
JOBS = (1, 2)


def time_builds(prices: pd.DataFrame, repeat: int) -> tuple[dict[int, list[float]], pd.DataFrame]:
    """Seconds of ``build_features`` with n_jobs=1 and n_jobs=2 per round, after one uncounted warm-up
    build of each; the rounds alternate which setting runs first. Returns the times and the last frame."""
    frame = pd.DataFrame()
    for n_jobs in JOBS:  # warm-up, not counted
        frame = build_features(prices, n_jobs=n_jobs)
    secs: dict[int, list[float]] = {n: [] for n in JOBS}
    for i in range(repeat):
        for n_jobs in JOBS if i % 2 == 0 else JOBS[::-1]:
            t = time.perf_counter()
            frame = build_features(prices, n_jobs=n_jobs)
            secs[n_jobs].append(time.perf_counter() - t)
    return secs, frame


PRICE_MOVES = (
    "ret_", "mom_", "rank_ret_", "z_ret_", "rank_mom", "rsi_", "macd", "ppo_", "trix", "stoch", "willr",
    "cci_", "roc_", "cmo_", "bb_pos", "dist_", "sma_cross", "lr_slope", "trend_corr", "aroonosc",
    "intraday_", "clv_", "gap_", "dd_", "du_", "ultosc", "sharpe_",
)  # fmt: skip


def planted(name: str, family: str, lookback: int) -> str:
    """Which planted signal of the synthetic market a feature speaks to (a reading aid only)."""
    if family == "sentiment":
        return "sentiment"
    if name.startswith(("eps_", "earn_")):
        return "earnings drift"
    relative = name.startswith(("mrel_", "srel_", "resid_", "rank_mrel", "rank_in_sector"))
    if relative or name.startswith(PRICE_MOVES):
        if lookback > 40 or "mom" in name:
            return "momentum"
        # market/sector-removed short returns carry the reversal; raw ones also carry market noise
        return "reversal" if relative else "reversal?"
    return ""


def counts() -> list[str]:
    lines = [f"catalogue: synthetic market {len(catalogue(CONTRACT_COLUMNS))} features"]
    if SP500.exists():
        import pyarrow.parquet as pq

        cols = pq.read_schema(SP500).names
        for label, c in (("S&P 500 sample", cols), ("S&P 500 sample + sectors csv", [*cols, "sector"])):
            specs = catalogue(c)
            fams = sorted({s.family for s in specs})
            lines.append(f"catalogue: {label}: {len(specs)} features, {len(fams)} families {fams}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--days", type=int, default=1260)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds of n_jobs=1 and n_jobs=2, alternated")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    logging.basicConfig(level=logging.WARNING)

    for line in counts():
        print(line)
    t = time.perf_counter()
    market = generate_market(SyntheticConfig(n_tickers=args.tickers, n_days=args.days, seed=args.seed))
    prices = market.prices
    print(
        f"panel: {args.tickers} tickers x {args.days} days = {len(prices):,} rows (generated in {time.perf_counter() - t:.1f}s)"
    )

    secs, frame = time_builds(prices, args.repeat)
    n_feat = len(feature_columns(frame))
    print(
        f"\npipeline, {n_feat} features + 3 targets, after one warm-up build of each setting, "
        f"{args.repeat} rounds alternating which goes first:"
    )
    for n_jobs, s in secs.items():
        print(
            f"  n_jobs={n_jobs}: median {statistics.median(s):.2f}s, best {min(s):.2f}s "
            f"({', '.join(f'{x:.2f}' for x in s)})"
        )
    ratios = [a / b for a, b in zip(secs[1], secs[2], strict=True)]
    print(
        f"n_jobs=2 speed-up over n_jobs=1: {statistics.median(ratios):.2f}x (median of the rounds' ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; best against best {min(secs[1]) / min(secs[2]):.2f}x)"
    )

    tracemalloc.start()
    build_features(prices, n_jobs=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out_mb = frame.memory_usage(deep=False).sum() / 2**20
    print(
        f"peak memory: {peak / 2**20:.0f} MiB traced during one n_jobs=1 build (output frame {out_mb:.0f} MiB); "
        f"process peak RSS {rss:.0f} MiB (incl. the generator and all runs)"
    )

    dates = np.sort(frame["date"].unique())
    train_end = dates[int(len(dates) * 0.7) - 1]
    test_start = dates[int(len(dates) * 0.7) + PURGE]
    t = time.perf_counter()
    pre = Preprocessor(k=FeatureConfig().selection_k).fit(frame, train_end)
    fit_s = time.perf_counter() - t
    out = pre.transform(frame)
    test = (out["date"] >= test_start).to_numpy()
    ic = ic_summary(ic_frame(out, pre.selected_, "target_h5", rows=test))
    rep = pre.report()
    oracle = frame[["date", "ticker", "target_h5"]].assign(oracle_h5=market.oracle["oracle_h5"].to_numpy())
    o_ic = ic_summary(ic_frame(oracle, ["oracle_h5"], "target_h5", rows=test)).iloc[0]
    fams = rep.loc[pre.selected_, "family"].value_counts()
    print(
        f"\nselection: top {len(pre.selected_)} of {n_feat} by |train Rank IC| with target_h5, fitted in {fit_s:.1f}s "
        f"on {pd.Timestamp(dates[0]).date()}..{pd.Timestamp(train_end).date()} (labels purged past it); "
        f"held out {pd.Timestamp(test_start).date()}..{pd.Timestamp(dates[-1]).date()} after a {PURGE}-day purge"
    )
    print("selected per family: " + ", ".join(f"{f} {n}" for f, n in fams.items()))
    table = pd.DataFrame(
        {
            "family": rep.loc[pre.selected_, "family"],
            "train_ic": rep.loc[pre.selected_, "ic_mean"],
            "heldout_ic": ic["ic_mean"],
            "heldout_icir": ic["icir"],
            "heldout_t": ic["ic_t"],
        }
    )
    lookback = {spec.name: spec.lookback for spec in catalogue(CONTRACT_COLUMNS)}
    table["signal"] = [
        planted(str(f), str(fam), lookback[str(f)])
        for f, fam in zip(table.index, table["family"], strict=True)
    ]
    table = table.reindex(table["heldout_ic"].abs().sort_values(ascending=False).index)
    print(
        f"\nheld-out mean Rank IC with target_h5, top {args.top} of the selected by |IC| "
        f"(oracle_h5: {o_ic['ic_mean']:.4f}, ICIR {o_ic['icir']:.3f}):"
    )
    with pd.option_context(
        "display.width", 140, "display.max_rows", 200, "display.float_format", "{:.4f}".format
    ):
        print(table.head(args.top).to_string())
    top = table.head(args.top)
    tagged = (top["signal"] != "").sum()
    print(
        f"{tagged} of the top {len(top)} relate to a planted signal; by signal: "
        + ", ".join(f"{k or 'other'} {v}" for k, v in top["signal"].value_counts().items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
