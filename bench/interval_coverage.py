"""How the ensemble's intervals cover, window by window, on dates before the test period only.

At rolling origins (every ``--every`` dates, from a year in, through bench/quality.py's validation
end), the ensemble (:class:`EnsembleForecaster`, the configured interval levels) is fitted as
``jobs.train`` fits it: on the ``--valid`` dates before the origin (labels purged at the origin) with
``history`` = every labelled row before it; then its intervals for the next ``--span`` dates are
scored against their realised returns (:func:`interval_coverage`; labels that realise after the
validation end are never read). Its one member is the 5-day reversal rule: the intervals hardly
depend on the forecast (a ticker's residual is almost all its own move: the forecasts explain under
1% of it), so this measures the interval method, not a member.

Printed per horizon and level: the mean coverage over the origins and how far one window's coverage
strays from it (standard deviation, min, max over the origins): a test period is one such window.

    python bench/interval_coverage.py --source synthetic      # about a minute
    python bench/interval_coverage.py --source sp500
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

from quality import HORIZONS, load, split_dates  # noqa: E402

from ensemble.backtest.evaluation import baseline_forecasts  # noqa: E402
from ensemble.backtest.metrics import interval_coverage  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.config import EnsembleConfig  # noqa: E402
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
    rows = []
    for i in range(max(252, valid), len(dates) - span + 1, every):
        before, block = dates[i - 1], dates[i : i + span]
        history = window(truth, None, before)
        vtruth = window(truth, dates[i - valid], before)
        ens = EnsembleForecaster({MEMBER: 1.0}, HORIZONS, mode="fixed", levels=levels)
        ens.fit({MEMBER: member[member["date"].isin(vtruth["date"].unique())]}, vtruth, history=history)
        test = truth[truth["date"].isin(block)].reset_index(drop=True)
        pred = ens.predict({MEMBER: member[member["date"].isin(block)]}, test)
        rows.append({"origin": pd.Timestamp(dates[i]), **interval_coverage(pred, test, HORIZONS, levels)})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=["synthetic", "sp500"], default="synthetic")
    ap.add_argument("--every", type=int, default=63, help="dates between origins")
    ap.add_argument("--valid", type=int, default=190, help="validation dates before each origin")
    ap.add_argument("--span", type=int, default=126, help="dates each origin's intervals are scored on")
    args = ap.parse_args()
    t0 = time.perf_counter()
    prices, _ = load(args.source, 500, 1260, 7)
    dates = pd.DatetimeIndex(np.sort(prices["date"].unique()))
    end = split_dates(dates, args.source)["valid_end"]
    levels = list(EnsembleConfig().interval_levels)
    cov = coverage_by_origin(prices, end, args.every, args.valid, args.span, levels)
    print(
        f"\n== bench/interval_coverage.py --source {args.source}: {len(cov)} origins "
        f"{cov['origin'].min():%Y-%m-%d}..{cov['origin'].max():%Y-%m-%d}, {args.span} dates each, "
        f"labels realised by {end:%Y-%m-%d} (the validation end)"
    )
    print(f"{'':16s}{'mean':>8s}{'sd':>8s}{'min':>8s}{'max':>8s}")
    for h in HORIZONS:
        for a in levels:
            col = f"coverage{round(a * 100):d}_h{h}"
            x = cov[col].dropna().to_numpy()
            print(
                f"{round(a * 100):d}% at {h:2d} days  {x.mean():7.1%} {x.std():7.1%} {x.min():7.1%} {x.max():7.1%}"
            )
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
