"""Choose the learning defaults by validation evidence only: the learning target (``training.target``),
per-date feature normalisation (``features.cs_norm``) and what the boosters' early stopping watches
(``eval_metric``), on the synthetic market and the real S&P 500 sample's training years.

The test period of bench/quality.py is cut off before anything is computed: only the dates up to
its ``valid_end`` exist here. The validation dates are split in two: the boosters early-stop on the
first half, every model is scored (mean per-date Rank IC against the realised forward return) on the
second half, whose labels no fit has seen. Features are built once per data set; each variant refits
the train-only preprocessor (selection and scaling) and every model with its module's DEFAULTS.

Printed per data set: each variant's Rank IC per model and horizon on the scoring half, and the mean
over models and horizons; at the end the variant with the best mean over both data sets (and how far
each variant is from it in standard errors of the paired per-date differences; overlapping labels
make neighbouring dates correlated, so these understate the error, most at 60 days).

Usage: ``.venv/bin/python bench/select_defaults.py [--sources synthetic sp500] [--models lightgbm random_forest]
[--variants none/none/l2 rank_gauss/none/rank_ic ...]`` (a variant: target/cs_norm/eval_metric, or
target/cs_norm/rank_ic/W: the boosters' early stopping watching the mean Rank IC of the last W rounds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from quality import HORIZONS, load, split_dates  # noqa: E402

from ensemble.backtest.metrics import rank_ic_by_date  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.features import Preprocessor, build_features  # noqa: E402
from ensemble.features.normalize import cross_sectional_targets  # noqa: E402
from ensemble.models import create_model  # noqa: E402

DEFAULT_VARIANTS = [
    "none/none/default",  # the old behaviour: raw forward return, global scaling, L2 early stopping
    "zscore/none/default",
    "rank_gauss/none/default",
    "rank_gauss/none/rank_ic",
    "rank_gauss/rank/rank_ic",
]
BOOSTERS = {"xgboost", "lightgbm"}


def variant_params(name: str, eval_metric: str, smoothing: str | None = None) -> dict[str, Any]:
    if name not in BOOSTERS:
        return {}
    out: dict[str, Any] = {"eval_metric": eval_metric} if eval_metric != "default" else {}
    return {**out, "eval_smoothing": int(smoothing)} if smoothing else out


def run_source(source: str, models: list[str], variants: list[str], k: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    prices, _ = load(source, 500, 1260, 7)
    feats = build_features(prices, HORIZONS, n_jobs=None)
    dates = pd.DatetimeIndex(np.sort(feats["date"].unique()))
    sp = split_dates(dates, source)
    feats = feats[feats["date"] <= sp["valid_end"]].reset_index(drop=True)  # the test period is gone
    vdates = dates[(dates >= sp["valid_start"]) & (dates <= sp["valid_end"])]
    mid = len(vdates) // 2
    es_end, score_start = vdates[mid - 1], vdates[mid]
    print(
        f"\n== {source}: train {sp['train_start'].date()}..{sp['train_end'].date()}, early stopping "
        f"{sp['valid_start'].date()}..{es_end.date()}, scored {score_start.date()}..{sp['valid_end'].date()} "
        f"(features {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    out: dict[str, Any] = {"split": {k_: str(v.date()) for k_, v in sp.items()}, "variants": {}}
    for v in variants:
        target, cs_norm, metric, *smoothing = v.split("/")
        pre = Preprocessor(k=k, cs_norm=cs_norm).fit(feats, sp["train_end"])
        frame = pre.transform(feats)
        train = cross_sectional_targets(window(frame, sp["train_start"], sp["train_end"]), target)
        es = cross_sectional_targets(window(frame, sp["valid_start"], es_end), target)
        held = window(frame, score_start, sp["valid_end"])
        res: dict[str, Any] = {}
        for name in models:
            t = time.perf_counter()
            model = create_model(name, horizons=HORIZONS, **variant_params(name, metric, *smoothing))
            p = model.fit(train, es).predict(held)
            df = p.merge(held[["date", "ticker", *[f"target_h{h}" for h in HORIZONS]]], on=["date", "ticker"])
            res[name] = {
                f"h{h}": rank_ic_by_date(df, f"pred_h{h}", f"target_h{h}").dropna().tolist() for h in HORIZONS
            }
            res[name]["fit_s"] = time.perf_counter() - t
            ics = "  ".join(f"h{h} {np.mean(res[name][f'h{h}']):+.4f}" for h in HORIZONS)
            print(f"  {v:<26} {name:<14} {ics}   {res[name]['fit_s']:.0f} s", flush=True)
        out["variants"][v] = res
    return out


def summarise(results: dict[str, Any], variants: list[str]) -> tuple[str, dict[str, float]]:
    """The mean Rank IC per variant over data sets, models and horizons; the best variant."""
    means: dict[str, float] = {}
    series: dict[str, np.ndarray] = {}
    for v in variants:
        parts = [
            np.asarray(r[f"h{h}"])
            for src in results.values()
            for name, r in src["variants"][v].items()
            for h in HORIZONS
        ]
        series[v] = np.concatenate(parts)  # aligned: the same dates, models and horizons per variant
        means[v] = float(np.mean([p.mean() for p in parts]))
    best = max(means, key=lambda v: means[v])
    print("\nmean validation Rank IC over data sets, models and horizons (scoring half only):")
    for v in variants:
        d = series[best] - series[v]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 and v != best else float("nan")
        gap = f"   {(means[best] - means[v]) / se:4.1f} s.e. below the best" if v != best else "   <- best"
        print(f"  {v:<26} {means[v]:+.4f}{gap}")
    return best, means


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", nargs="+", default=["synthetic", "sp500"])
    ap.add_argument("--models", nargs="+", default=["lightgbm", "random_forest"])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--json", default=str(HERE.parent / "artifacts" / "bench" / "select_defaults.json"))
    args = ap.parse_args()
    results = {s: run_source(s, args.models, args.variants, args.k) for s in args.sources}
    best, means = summarise(results, args.variants)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"results": results, "means": means, "best": best}, default=str))
    print(f"best: {best}; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
