"""Stylised facts of the synthetic market beside the real S&P 500 sample, and generation speed.

    .venv/bin/python bench/synthetic_facts.py [--tickers 500 --days 1260]

Prints one table (a column per market) and the generator's seconds against one pass of
``groupby('ticker').rolling(20).mean()`` over the same panel, as a ratio (same run, same machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

from ensemble.config import SyntheticConfig
from ensemble.data.files import load_file
from ensemble.data.stylized import format_facts, stylized_facts
from ensemble.data.synthetic import generate_market


def sample_dir() -> Path | None:
    env = os.environ.get("ENSEMBLE_SAMPLE_DATA")
    cand = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return cand if (cand / "sp500_daily.parquet").exists() else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--days", type=int, default=1260)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    t0 = time.perf_counter()
    market = generate_market(SyntheticConfig(n_tickers=args.tickers, n_days=args.days, seed=args.seed))
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    market.prices.groupby("ticker", sort=False)["close"].rolling(20).mean()
    t_roll = time.perf_counter() - t0
    columns = {"synthetic": stylized_facts(market.prices, market.oracle)}

    d = sample_dir()
    if d is not None:
        sp, _ = load_file(d / "sp500_daily.parquet", sectors_path=d / "sp500_sectors.csv", clean="repair")
        full = sp.groupby("ticker")["date"].transform("size") == sp["date"].nunique()
        columns["sp500 (full hist.)"] = stylized_facts(sp.loc[full].reset_index(drop=True))
    else:
        print("(real S&P 500 sample not found: set ENSEMBLE_SAMPLE_DATA to compare)", file=sys.stderr)

    print(format_facts(columns))
    print(
        f"\ngeneration: {len(market.prices):,} rows in {t_gen:.2f}s; one rolling(20) pass {t_roll:.2f}s; "
        f"ratio generate/rolling = {t_gen / t_roll:.1f}x"
    )
    pd.set_option("display.width", 120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
