"""How the ensemble's intervals cover, window by window, on dates before the test period only.

At rolling origins (every ``--every`` dates, from a year in, through bench/quality.py's validation
end), the ensemble (:class:`EnsembleForecaster`, the configured interval levels) is fitted as
``jobs.train`` and bench/quality.py fit it: on the ``--valid`` dates before the origin (default: as
many as bench/quality.py's validation window; labels purged at the origin) with ``history`` = the
training rows before them (labels purged at the validation start) and the validation rows; then its
intervals for the next ``--span`` dates (default: as many as bench/quality.py's test window) are
scored against their realised returns (:func:`interval_coverage`; labels that realise after the
validation end are never read, so the last origins score fewer dates at long horizons). Its one
member is the 5-day reversal rule: the intervals hardly depend on the forecast (a ticker's residual
is almost all its own move: the forecasts explain under 1% of it), so this measures the interval
method, not a member. The origins' windows overlap, unlike walk-forward folds, to get more of them.

Printed per horizon and level: the mean coverage over the origins and how far one window's coverage
strays from it (sample standard deviation, min, max over the origins): the test period is one such
window.

    python bench/interval_coverage.py --source synthetic      # about 30 s
    python bench/interval_coverage.py --source sp500 --span 126
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import HORIZONS, add_source_args, load_args, resolve_source, source_label, split_dates  # noqa: E402

from ensemble.backtest.evaluation import baseline_forecasts  # noqa: E402
from ensemble.backtest.metrics import interval_coverage  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.cli import run_main  # noqa: E402
from ensemble.config import ConfigError, EnsembleConfig  # noqa: E402
from ensemble.features.targets import realised_forward_returns  # noqa: E402
from ensemble.models.ensemble import EnsembleForecaster, trailing_volatility  # noqa: E402

MEMBER = "reversal_5d"


def coverage_by_origin(
    prices: pd.DataFrame, end: pd.Timestamp, every: int, valid: int, span: int, levels: list[float]
) -> pd.DataFrame:
    """One row per origin (its date, then ``coverage{L}_h{h}``), every label realised by ``end``."""
    truth = realised_forward_returns(prices, HORIZONS).merge(
        trailing_volatility(prices), on=["date", "ticker"], how="left"
    )
    truth = window(truth, None, end)  # nothing realised after ``end`` is read
    member = baseline_forecasts(prices, HORIZONS)[MEMBER]
    dates = np.sort(truth["date"].unique())
    first = max(252, valid)  # a year of history before the first origin
    if first > len(dates) - span:  # a usage error (exit 2, run_main), as quality.py's split reports one
        raise ConfigError(
            f"{len(dates)} dates up to the validation end {pd.Timestamp(end).date()} hold no origin: one needs "
            f"{first} dates before it and {span} after (--valid, --span)"
        )
    rows = []
    for i in range(first, len(dates) - span + 1, every):
        before, block = dates[i - 1], dates[i : i + span]
        vtruth = window(truth, dates[i - valid], before)
        history = pd.concat([window(truth, None, dates[i - valid - 1]), vtruth], ignore_index=True)
        ens = EnsembleForecaster({MEMBER: 1.0}, HORIZONS, mode="fixed", levels=levels)
        ens.fit({MEMBER: member[member["date"].isin(vtruth["date"].unique())]}, vtruth, history=history)
        test = truth[truth["date"].isin(block)].reset_index(drop=True)
        pred = ens.predict({MEMBER: member[member["date"].isin(block)]}, test)
        rows.append({"origin": pd.Timestamp(dates[i]), **interval_coverage(pred, test, HORIZONS, levels)})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(ap)
    ap.add_argument("--every", type=int, default=63, help="dates between origins")
    ap.add_argument("--valid", type=int, help="validation dates before each origin (default: quality.py's)")
    ap.add_argument(
        "--span", type=int, help="dates each origin's intervals are scored on (default: quality.py's test)"
    )
    args = ap.parse_args()
    resolve_source(ap, args)
    t0 = time.perf_counter()
    prices, _ = load_args(args)
    dates = pd.DatetimeIndex(np.sort(prices["date"].unique()))
    sp = split_dates(dates, args.source)
    end = sp["valid_end"]
    valid = args.valid or int(((dates >= sp["valid_start"]) & (dates <= end)).sum())
    span = args.span or int((dates >= sp["test_start"]).sum())
    levels = list(EnsembleConfig().interval_levels)
    cov = coverage_by_origin(prices, end, args.every, valid, span, levels)
    print(
        f"\n== bench/interval_coverage.py {source_label(args)}: {len(cov)} origins "
        f"{cov['origin'].min():%Y-%m-%d}..{cov['origin'].max():%Y-%m-%d}, fitted on {valid} dates, "
        f"scored on the next {span}, labels realised by {end:%Y-%m-%d} (the validation end)"
    )
    print(f"{'':16s}{'mean':>8s}{'sd':>8s}{'min':>8s}{'max':>8s}")
    for col in cov.columns.drop("origin"):  # interval_coverage's coverage{L}_h{h}
        x = cov[col].dropna().to_numpy()
        print(f"{col:16s}{x.mean():8.1%}{x.std(ddof=1):8.1%}{x.min():8.1%}{x.max():8.1%}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a file that breaks the contract: one error line, exit 3
