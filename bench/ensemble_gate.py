"""Which ``ensemble.member_gate`` to default to, on validation dates only.

Reads folders written by ``bench/quality.py --save-preds DIR`` (the members' forecasts and the
truth) and cuts every date after the validation period off on load: the test dates are never read.
For each gate, the learned ensemble (``EnsembleForecaster``, the configured prior and levels) is
scored out of fold on the validation dates with 2, 3 and 4 consecutive folds
(:meth:`EnsembleForecaster.cross_fit_predict`, the labels that overlap each held-out block purged),
and each date's Rank IC averaged over the fold counts that forecast it.
Printed: the mean Rank IC per folder, horizon and gate, and each gate's difference from the
default with its standard error (daily differences; ``n_dates / h`` independent windows for the
overlapping labels; folders and horizons taken as independent cells).

    python bench/ensemble_gate.py                      # the two default folders (below)
    python bench/ensemble_gate.py DIR [DIR ...] [--gates none significant]

A default folder that does not exist yet is written first by ``bench/quality.py --source S
--prophet-refit-every 0 --save-preds artifacts/bench/preds_S`` (all six members fitted, Prophet's
validation forecasts refitted as ``jobs.train`` makes them: about 35 min synthetic, 40 min S&P on a
2-core box, estimated from the parts; Prophet's refits along the test dates change only test
forecasts, which this script never reads, so they are skipped); later runs take minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble.backtest.metrics import overlap_se, rank_ic_by_date  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.config import EnsembleConfig  # noqa: E402
from ensemble.models.ensemble import GATES, EnsembleForecaster  # noqa: E402

HORIZONS = (5, 20, 60)
FOLDS = (2, 3, 4)
REPO = Path(__file__).resolve().parents[1]
SOURCES = ("sp500", "synthetic")  # the default folders: artifacts/bench/preds_<source>


def validation_only(folder: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame]:
    """The members' validation forecasts, the validation truth and the labelled history up to the
    validation's end (training + validation rows) of one ``--save-preds`` folder."""
    sp = {k: pd.Timestamp(v) for k, v in json.loads((folder / "split.json").read_text()).items()}
    truth_all = pd.read_parquet(folder / "truth.parquet")
    truth_all = truth_all[truth_all["date"] <= sp["valid_end"]].reset_index(drop=True)
    vtruth = window(truth_all, sp["valid_start"], sp["valid_end"])
    history = pd.concat([window(truth_all, sp["train_start"], sp["train_end"]), vtruth], ignore_index=True)
    members = {
        p.name[len("valid_") : -len(".parquet")]: pd.read_parquet(p)
        for p in sorted(folder.glob("valid_*.parquet"))
    }
    return members, vtruth, history


def daily_oof(
    members: dict[str, pd.DataFrame], vtruth: pd.DataFrame, history: pd.DataFrame, gate: str
) -> dict[int, pd.Series]:
    """Per horizon, the out-of-fold daily Rank IC averaged over the :data:`FOLDS` that forecast the
    date (a block left without labelled dates once its overlapping labels are purged has none at
    long horizons) (:func:`validation_only`'s data of one folder)."""
    ec = EnsembleConfig()
    ens = EnsembleForecaster(ec.weights, HORIZONS, mode="learned", levels=ec.interval_levels, gate=gate)  # type: ignore[arg-type]
    per_k: dict[int, list[pd.Series]] = {h: [] for h in HORIZONS}
    for k in FOLDS:
        df = ens.cross_fit_predict(members, vtruth, folds=k, history=history).merge(
            vtruth, on=["date", "ticker"]
        )
        for h in HORIZONS:
            per_k[h].append(rank_ic_by_date(df, f"pred_h{h}", f"target_h{h}"))
    return {h: pd.concat(s, axis=1, sort=True).mean(axis=1).dropna() for h, s in per_k.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "folders",
        nargs="*",
        type=Path,
        help="bench/quality.py --save-preds folders (default: artifacts/bench/preds_<source>, written if missing)",
    )
    ap.add_argument("--gates", nargs="+", default=list(GATES), choices=GATES)
    args = ap.parse_args()
    if not args.folders:
        args.folders = [REPO / "artifacts" / "bench" / f"preds_{source}" for source in SOURCES]
        for source, folder in zip(SOURCES, args.folders, strict=True):
            if not (folder / "split.json").exists():
                cmd = [
                    sys.executable,
                    str(REPO / "bench" / "quality.py"),
                    "--source",
                    source,
                    "--prophet-refit-every",
                    "0",  # the refits change only the test dates' forecasts, never read here
                    "--save-preds",
                    str(folder),
                ]
                print("writing the members' forecasts: " + " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
    default = EnsembleConfig().member_gate
    gates = list(dict.fromkeys([default, *args.gates]))
    daily = {}
    for f in args.folders:
        data = validation_only(f)  # read once per folder
        daily.update({(f, g): daily_oof(*data, g) for g in gates})
    print(f"out-of-fold validation Rank IC (folds {FOLDS} averaged), h5 / h20 / h60, mean")
    for f in args.folders:
        for g in gates:
            m = [float(daily[(f, g)][h].mean()) for h in HORIZONS]
            print(f"  {f.name:<24} {g:<12} " + " ".join(f"{x:+.4f}" for x in m) + f"  mean {np.mean(m):+.4f}")
    print(f"difference from the default ({default}), mean over folders and horizons, with its standard error")
    for g in gates:
        if g == default:
            continue
        cells = []
        for f in args.folders:
            for h in HORIZONS:
                diff = (daily[(f, g)][h] - daily[(f, default)][h]).dropna()
                se = overlap_se(diff, h)
                cells.append((float(diff.mean()), se))
        mean = float(np.mean([c[0] for c in cells]))
        se = math.sqrt(sum(c[1] ** 2 for c in cells)) / len(cells)
        print(f"  {g:<12} {mean:+.4f}  (s.e. {se:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
