"""Which Prophet parameters, on validation dates only.

For each configuration (parameters over ``ProphetForecaster``'s defaults), Prophet is fitted per
ticker on a seeded sample of tickers through the day before bench/quality.py's validation window,
and again every ``--every`` dates along it, each fit on the last ``training.training_days`` dates up
to its date (as jobs.train's validation refits, at a coarser cadence for cost); each block of
validation dates is forecast by the latest fit. Scored by the daily Rank IC on the validation dates
(labels purged at the validation end: the test dates are never read), printed per configuration and
horizon with the paired difference from the defaults and its standard error (daily differences,
``n_dates / h`` independent windows for the overlapping labels).

    python bench/prophet_params.py --source sp500                      # about 15 min on 2 cores
    python bench/prophet_params.py --source synthetic --configs default cps_0.005
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import (  # noqa: E402
    HORIZONS,
    add_source_args,
    fit_prophet,
    load_args,
    resolve_source,
    source_label,
    split_dates,
)

from ensemble.backtest.metrics import overlap_se, rank_ic_by_date  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.cli import run_main  # noqa: E402
from ensemble.config import TrainingConfig  # noqa: E402
from ensemble.features.targets import realised_forward_returns  # noqa: E402

NO_SEASONS = {"weekly_seasonality": False, "yearly_seasonality": False}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_seasonality": NO_SEASONS,
    "no_yearly": {"yearly_seasonality": False},
    "no_weekly": {"weekly_seasonality": False},
    "cps_0.5": {"changepoint_prior_scale": 0.5},  # a more flexible trend (default 0.05)
    "cps_0.005": {"changepoint_prior_scale": 0.005},  # a stiffer one
    "range_0.95": {"changepoint_range": 0.95},  # changepoints up to 95% of the history (default 80%)
    "sps_1": {"seasonality_prior_scale": 1.0},  # weaker seasonality (default 10)
}


def validation_daily_ic(
    prices: pd.DataFrame, vtruth: pd.DataFrame, params: dict[str, Any], every: int, days: int, procs: int
) -> dict[int, pd.Series]:
    """Per horizon, the daily Rank IC of Prophet's forecasts of ``vtruth``'s rows, refitted every
    ``every`` dates on the last ``days`` dates up to the day before each block."""
    dates = np.sort(prices["date"].unique())
    vdates = np.sort(vtruth["date"].unique())
    parts = []
    for i in range(0, len(vdates), every):
        block = vdates[i : i + every]
        fit_on = dates[dates < block[0]][-days:]
        model = fit_prophet(prices[prices["date"].isin(fit_on)], procs, params)
        parts.append(model.predict(vtruth.loc[vtruth["date"].isin(block), ["date", "ticker"]]))
    p = pd.concat(parts, ignore_index=True).merge(vtruth, on=["date", "ticker"])
    return {h: rank_ic_by_date(p, f"pred_h{h}", f"target_h{h}") for h in HORIZONS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(ap)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--tickers", type=int, default=150, help="seeded sample of tickers (cost)")
    ap.add_argument("--every", type=int, default=63, help="refit every N validation dates")
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    resolve_source(ap, args)
    prices, _ = load_args(args)
    dates = pd.DatetimeIndex(np.sort(prices["date"].unique()))
    sp = split_dates(dates, args.source)
    names = np.sort(prices["ticker"].unique())
    sample = np.random.default_rng(0).choice(names, min(args.tickers, len(names)), replace=False)
    prices = prices[prices["ticker"].isin(sample)]
    truth = realised_forward_returns(prices, HORIZONS)
    vtruth = window(truth, sp["valid_start"], sp["valid_end"])  # labels purged at the validation end
    print(
        f"bench/prophet_params.py {source_label(args)}: {len(sample)} tickers, validation "
        f"{sp['valid_start'].date()}..{sp['valid_end'].date()}, refit every {args.every} dates",
        flush=True,
    )
    days = TrainingConfig().training_days
    names = list(dict.fromkeys(["default", *args.configs]))
    daily = {}
    for name in names:
        t0 = time.perf_counter()
        daily[name] = validation_daily_ic(prices, vtruth, CONFIGS[name], args.every, days, args.procs)
        cells = []
        for h in HORIZONS:
            d = (daily[name][h] - daily["default"][h]).dropna()
            se = overlap_se(d, h)
            cells.append(f"h{h} {daily[name][h].mean():+.4f} (diff {d.mean():+.4f} se {se:.4f})")
        print(f"  {name:<15} " + "  ".join(cells) + f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a file that breaks the contract: one error line, exit 3
