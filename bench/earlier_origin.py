"""Would the ensemble's weights gain from the members' held-out forecasts of an earlier window?
Validation dates only.

The learned ensemble fits its weights on one validation window (189 synthetic dates, 133 S&P): at
60 days that is about three independent label windows on the synthetic market and two on the S&P
sample (fewer once the labels are purged at the window's end), too few to move the weights
(``MIN_WINDOWS``), and at 5 and 20 days the one-standard-error rule keeps the prior. An earlier
origin (the members fitted on the dates before an earlier window of the same length, which they
then forecast) would double the held-out evidence at the cost of fitting every member twice.
Before paying for that in training, this measures whether the earlier window's evidence carries
over: weights learned there, scored on the later validation window, against the prior there.

Reads two ``bench/quality.py --save-preds`` folders of one source: ``EARLIER`` written with
``--shift-back N`` (N = the validation window's length, so that its validation window ends where
``LATER``'s begins) and ``LATER`` (the default split). Every date after ``LATER``'s validation end is
cut off on load (bench/ensemble_gate.py's ``validation_only``): the test dates are never read. Each
window's labels are purged at its own end, so none of the earlier window's overlaps the later one.
The two folders must start on the same date (one source); a gap between the windows is reported.

Two caveats: the earlier origin's members fit fewer training dates, and each folder's members are
one-seed fits, so part of any difference between the windows is fit noise, not a change of regime.
And this scores weights fitted on the earlier window alone, not on both windows pooled (what
training from two origins would fit): whether the earlier window's evidence points the right way
at all.

Printed per horizon, on ``LATER``'s validation dates: each member's Rank IC there and on the
earlier window (does a member's skill persist from one window to the next?), and the Rank IC of

* ``prior``: the configured weights (``mode='fixed'``);
* ``gated prior, earlier``: the prior gated (``ensemble.member_gate``) on the earlier window;
* ``learned, earlier``: the learned ensemble (every default) fitted on the earlier window;
* ``nnls, earlier``: the same without the pull toward the prior (``lambdas=(0,)``);
* ``best member, earlier``: the member with the best Rank IC on the earlier window;
* ``learned, out of fold``: what the default (one window) does, scored out of fold
  (bench/ensemble_gate.py);

each with its difference from the prior on the dates both forecast and that difference's standard
error (daily differences, ``n_dates / h`` independent windows), the dates it forecasts (out of fold,
a block left without labelled dates at h has none; its error is not estimable on fewer than
``MIN_WINDOWS`` independent windows and is printed as nan), and the weights learned on the earlier
window.

    python bench/earlier_origin.py EARLIER LATER
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble_gate import HORIZONS, daily_oof, validation_only  # noqa: E402

from ensemble.backtest.metrics import overlap_se, rank_ic_by_date  # noqa: E402
from ensemble.config import EnsembleConfig  # noqa: E402
from ensemble.models.base import pred_col, target_col  # noqa: E402
from ensemble.models.ensemble import MIN_WINDOWS, EnsembleForecaster  # noqa: E402


def daily_scores(preds: pd.DataFrame, truth: pd.DataFrame) -> dict[int, pd.Series]:
    df = preds.merge(truth, on=["date", "ticker"])
    return {h: rank_ic_by_date(df, pred_col(h), target_col(h)).dropna() for h in HORIZONS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("earlier", nargs="?", type=Path, help="a --save-preds folder written with --shift-back")
    ap.add_argument("later", nargs="?", type=Path, help="the --save-preds folder of the default split")
    args = ap.parse_args()
    if args.earlier is None or args.later is None:  # make bench runs every script bare
        print("bench/earlier_origin.py needs two --save-preds folders (EARLIER LATER); see its docstring")
        return 0
    ec = EnsembleConfig()
    m0, t0, hist0 = validation_only(args.earlier)
    m1, t1, hist1 = validation_only(args.later)
    if t0["date"].max() >= t1["date"].min():
        raise SystemExit(f"{args.earlier}'s validation window must end before {args.later}'s begins")
    if hist0["date"].min() != hist1["date"].min():
        raise SystemExit(f"{args.earlier} and {args.later} start on different dates: not one source")
    days = pd.DatetimeIndex(np.sort(hist1["date"].unique()))
    gap = int(days.searchsorted(t1["date"].min())) - int(days.searchsorted(t0["date"].max())) - 1
    if gap:
        print(f"note: {gap} dates lie between the two validation windows")
    members = sorted(set(m0) & set(m1))
    m0, m1 = {m: m0[m] for m in members}, {m: m1[m] for m in members}
    print(
        f"earlier window {t0['date'].min().date()}..{t0['date'].max().date()}, "
        f"later {t1['date'].min().date()}..{t1['date'].max().date()}; members {members}"
    )

    def ens(mode: Literal["learned", "fixed"], **kw: Any) -> EnsembleForecaster:
        return EnsembleForecaster(
            ec.weights,
            HORIZONS,
            mode=mode,
            levels=ec.interval_levels,
            gate=ec.member_gate,
            **kw,
        )

    skill0 = {m: daily_scores(m0[m], t0) for m in members}
    skill1 = {m: daily_scores(m1[m], t1) for m in members}

    def best_earlier(h: int) -> str:
        return max(members, key=lambda m: float(skill0[m][h].mean()))

    learned = ens("learned").fit(m0, t0, history=hist0)
    nnls0 = ens("learned", lambdas=(0.0,)).fit(m0, t0, history=hist0)
    gated = ens("learned", lambdas=(1e12,)).fit(m0, t0, history=hist0)  # the gated prior, no move
    rows = {
        "prior": daily_scores(ens("fixed").fit(m0, t0, history=hist0).predict(m1, t1), t1),
        "gated prior, earlier": daily_scores(gated.predict(m1, t1), t1),
        "learned, earlier": daily_scores(learned.predict(m1, t1), t1),
        "nnls, earlier": daily_scores(nnls0.predict(m1, t1), t1),
        "best member, earlier": {h: skill1[best_earlier(h)][h] for h in HORIZONS},
        "learned, out of fold": daily_oof(m1, t1, hist1, ec.member_gate),
    }
    print("members' Rank IC, earlier window -> later window, h5 / h20 / h60")
    for m in members:
        print(
            f"  {m:<15} "
            + "   ".join(f"{skill0[m][h].mean():+.4f} -> {skill1[m][h].mean():+.4f}" for h in HORIZONS)
        )
    for h in HORIZONS:
        a = [skill0[m][h].mean() for m in members]
        b = [skill1[m][h].mean() for m in members]
        rho = pd.Series(a).corr(pd.Series(b), method="spearman")
        print(f"  h{h}: rank correlation of the members' skill across the two windows {rho:+.2f}")
    print("weights learned on the earlier window (learned / nnls):")
    for h in HORIZONS:
        print(
            f"  h{h}: "
            + ", ".join(
                f"{m} {w:.2f}/{v:.2f}"
                for m, w, v in zip(learned.members_, learned.weights_[h], nnls0.weights_[h], strict=True)
            )
            + f"  (lambda {learned.lambda_[h]})"
        )
    print(
        "on the later validation window: mean Rank IC h5 / h20 / h60, and the difference from the prior (s.e.)"
    )
    for name, daily in rows.items():
        cells = []
        for h in HORIZONS:
            diff = (daily[h] - rows["prior"][h]).dropna()
            se = overlap_se(diff, h) if len(diff) / h >= MIN_WINDOWS else float("nan")
            cells.append(f"{daily[h].mean():+.4f} ({diff.mean():+.4f}, {se:.4f})")
        print(
            f"  {name:<22} "
            + "   ".join(cells)
            + f"   mean {np.mean([daily[h].mean() for h in HORIZONS]):+.4f}"
            + "   dates "
            + " / ".join(str(len(daily[h])) for h in HORIZONS)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
