"""Which ``ensemble.member_gate`` and which shrinkage rule to default to, on validation dates only.

Reads folders written by ``bench/quality.py --save-preds DIR`` (the members' forecasts and the
truth) and cuts every date after the validation period off on load: the test dates are never read.
For each gate, the learned ensemble (``EnsembleForecaster``, the configured prior and levels) is
scored out of fold on the validation dates with 2, 3 and 4 consecutive folds
(:meth:`EnsembleForecaster.cross_fit_predict`, the labels that overlap each held-out block purged),
and each date's Rank IC averaged over the fold counts that forecast it.
With ``--weights``, the default gate's ensemble is also scored with other ways of setting its
weights: ``best`` (the shrinkage with the best held-out score, ``se_rule=0``, instead of the
one-standard-error rule), ``nnls`` (plain non-negative least squares, no pull to the prior) and
``fixed`` (the prior, ``mode='fixed'``).
Printed: the mean Rank IC per folder, horizon and variant, and each variant's difference from the
default with its standard error (daily differences; ``n_dates / h`` independent windows for the
overlapping labels; folders and horizons taken as independent cells).

    python bench/ensemble_gate.py                      # the two default folders (below)
    python bench/ensemble_gate.py DIR [DIR ...] [--gates none significant] [--weights best nnls fixed]

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
from typing import Any

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


# the ways of setting the weights (--weights): EnsembleForecaster arguments
WEIGHTS: dict[str, dict[str, Any]] = {
    "one_se": {},  # the default: the one-standard-error rule over LAMBDAS
    "best": {"se_rule": 0.0},
    "nnls": {"lambdas": (0.0,)},
    "fixed": {"mode": "fixed"},
}


def daily_oof(
    members: dict[str, pd.DataFrame],
    vtruth: pd.DataFrame,
    history: pd.DataFrame,
    gate: str,
    weights: str = "one_se",
) -> dict[int, pd.Series]:
    """Per horizon, the out-of-fold daily Rank IC averaged over the :data:`FOLDS` that forecast the
    date (a block left without labelled dates once its overlapping labels are purged has none at
    long horizons) (:func:`validation_only`'s data of one folder)."""
    ec = EnsembleConfig()
    kw: dict[str, Any] = {"mode": "learned", **WEIGHTS[weights]}
    ens = EnsembleForecaster(ec.weights, HORIZONS, levels=ec.interval_levels, gate=gate, **kw)  # type: ignore[arg-type]
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
    ap.add_argument("--weights", nargs="*", default=[], choices=[w for w in WEIGHTS if w != "one_se"],
                    help="other ways of setting the default gate's weights, scored beside it")  # fmt: skip
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
    # (gate, weights): every gate with the default weights, then the default gate with each --weights
    variants = [(g, "one_se") for g in dict.fromkeys([default, *args.gates])]
    variants += [(default, w) for w in dict.fromkeys(args.weights)]
    daily = {}
    for f in args.folders:
        data = validation_only(f)  # read once per folder
        daily.update({(f, v): daily_oof(*data, *v) for v in variants})

    def label(v: tuple[str, str]) -> str:
        return v[0] if v[1] == "one_se" else f"{v[0]}/{v[1]}"

    print(f"out-of-fold validation Rank IC (folds {FOLDS} averaged), h5 / h20 / h60, mean")
    for f in args.folders:
        for v in variants:
            m = [float(daily[(f, v)][h].mean()) for h in HORIZONS]
            print(
                f"  {f.name:<24} {label(v):<20} "
                + " ".join(f"{x:+.4f}" for x in m)
                + f"  mean {np.mean(m):+.4f}"
            )
    print(f"difference from the default ({default}), mean over folders and horizons, with its standard error")
    for v in variants[1:]:
        cells = []
        for f in args.folders:
            for h in HORIZONS:
                diff = (daily[(f, v)][h] - daily[(f, variants[0])][h]).dropna()
                if len(diff) > 1:  # a cell with fewer scored dates has no error: left out, counted
                    cells.append((float(diff.mean()), overlap_se(diff, h)))
        left = len(args.folders) * len(HORIZONS) - len(cells)
        if not cells:
            print(f"  {label(v):<20} no cell with two scored dates")
            continue
        mean = float(np.mean([c[0] for c in cells]))
        se = math.sqrt(sum(c[1] ** 2 for c in cells)) / len(cells)
        print(
            f"  {label(v):<20} {mean:+.4f}  (s.e. {se:.4f})" + (f"  ({left} cells left out)" if left else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
