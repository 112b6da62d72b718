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
make neighbouring dates correlated, so these understate the error, most at 60 days), and what
choosing per model among the variants on the early-stopping dates would have scored
(:func:`choose_on_es`: the evidence for or against making a fit choose between them), and each
shorter horizon's forecast scored against each longer horizon's return (:func:`cross_horizon`: the
evidence for the tree models' ``label_horizons``). So that every horizon has its own model to
compare with, the tree models are fitted here with ``label_horizons={}`` (each horizon learns its
own return): the 20-day figures of the variant tables are those of 20-day models, and the
platform's default (``{20: 5}``) scores at 20 days what the last table's ``p5`` does.

``--origins 0.55 0.7 0.85``: score the same way at several earlier points of the pre-test dates (each
origin trains on everything before it, early-stops on the next 65 dates, is scored on the 65 after),
for evidence that does not rest on one quarter (:func:`scoring_splits`).

Usage: ``.venv/bin/python bench/select_defaults.py [--sources synthetic sp500] [--models lightgbm random_forest]
[--variants none/none/l2 rank_gauss/none/rank_ic ...]`` (a variant: target/cs_norm/eval_metric, or
target/cs_norm/rank_ic/W: the boosters' early stopping watching the mean Rank IC of the last W rounds;
either may end with +PRESET, a set of the boosters' hyperparameters from PRESETS, e.g. +qlib)
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
from ensemble.models import create_model, get_model_class  # noqa: E402

DEFAULT_VARIANTS = [
    "none/none/default",  # the old behaviour: raw forward return, global scaling, L2 early stopping
    "zscore/none/default",
    "rank_gauss/none/default",
    "rank_gauss/none/rank_ic",
    "rank_gauss/rank/rank_ic",
]
BOOSTERS = {"xgboost", "lightgbm"}
# Hyperparameter presets a variant may name after a '+' (e.g. rank_gauss/none/rank_ic/1+qlib): each
# booster's module DEFAULTS overridden by these. 'qlib': Qlib 0.9's benchmark configs for Alpha158
# (examples/benchmarks/LightGBM and XGBoost workflow_config_*_Alpha158.yaml) through this platform's
# modules (so LightGBM's subsample re-draws rows every round, where Qlib's, without bagging_freq, never
# bags; early stopping still watches Rank IC); 'l1l2': only the L1 and L2 leaf penalties of Qlib's
# LightGBM config, on this platform's defaults otherwise.
QLIB_LIGHTGBM: dict[str, Any] = {
    "learning_rate": 0.2,
    "num_leaves": 210,
    "max_depth": 8,
    "colsample": 0.8879,
    "subsample": 0.8789,
    "reg_alpha": 205.6999,
    "reg_lambda": 580.9768,
    "min_child_samples": 20,
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "qlib": {
        "lightgbm": QLIB_LIGHTGBM,
        "xgboost": {
            "learning_rate": 0.0421,
            "max_depth": 8,
            "colsample": 0.8879,
            "subsample": 0.8789,
            "n_estimators": 647,
        },
    },
    # the same file's earlier LightGBM learning rate (0.0421, as its XGBoost's)
    "qlib_slow": {"lightgbm": {**QLIB_LIGHTGBM, "learning_rate": 0.0421}},
    "l1l2": {
        name: {k: QLIB_LIGHTGBM[k] for k in ("reg_alpha", "reg_lambda")} for name in ("lightgbm", "xgboost")
    },
}
PURGE = 70  # dates between the end of training and an origin (> the longest horizon)
BLOCK = 65  # dates of early stopping, then of scoring, after an origin


def variant_params(
    name: str, eval_metric: str, smoothing: str | None = None, preset: str | None = None
) -> dict[str, Any]:
    if name not in BOOSTERS:
        return {}
    out: dict[str, Any] = dict(PRESETS[preset].get(name, {})) if preset else {}
    if eval_metric != "default":
        out["eval_metric"] = eval_metric
    return {**out, "eval_smoothing": int(smoothing)} if smoothing else out


def scoring_splits(
    dates: pd.DatetimeIndex, sp: dict[str, pd.Timestamp], origins: list[float]
) -> list[dict[str, Any]]:
    """Where each fit trains, early-stops and is scored, all before bench/quality.py's test period.
    No origins: its validation dates halved (early stopping on the first half, scoring on the second).
    Origin f: the f-th fraction of the dates up to ``valid_end``; training ends ``PURGE`` dates before
    it (no training label reaches the early-stopping dates), early stopping on the next ``BLOCK``
    dates and scoring on the ``BLOCK`` after those."""
    if not origins:
        vdates = dates[(dates >= sp["valid_start"]) & (dates <= sp["valid_end"])]
        mid = len(vdates) // 2
        return [
            dict(
                train_end=sp["train_end"],
                es=(sp["valid_start"], vdates[mid - 1]),
                score=(vdates[mid], sp["valid_end"]),
            )
        ]
    pre = dates[dates <= sp["valid_end"]]
    out = []
    for f in origins:
        o = int(len(pre) * f)
        if not PURGE <= o <= len(pre) - 2 * BLOCK:
            raise ValueError(f"origin {f}: needs {PURGE} dates before it and {2 * BLOCK} after it")
        out.append(
            dict(
                train_end=pre[o - PURGE],
                es=(pre[o], pre[o + BLOCK - 1]),
                score=(pre[o + BLOCK], pre[o + 2 * BLOCK - 1]),
            )
        )
    return out


def daily_rank_ic(
    name: str, params: dict[str, Any], train: pd.DataFrame, es: pd.DataFrame, held: pd.DataFrame
) -> tuple[dict[int, list[float]], dict[int, float], dict[str, list[float]]]:
    """Fit ``name`` on ``train`` (early stopping on ``es``); its per-date Rank IC on ``held`` per horizon,
    its mean Rank IC on the early-stopping dates per horizon (what a choice may look at), and on
    ``held`` the per-date Rank IC of each shorter horizon's forecast against each longer horizon's
    return (key ``p{short}_h{long}``: would the model learning the shorter target rank better there?)."""
    if "label_horizons" in get_model_class(name).param_names():  # every horizon its own model
        params = {"label_horizons": {}, **params}
    model = create_model(name, horizons=HORIZONS, **params).fit(train, es)

    def scored(rows: pd.DataFrame) -> pd.DataFrame:
        return model.predict(rows).merge(
            rows[["date", "ticker", *[f"target_h{h}" for h in HORIZONS]]], on=["date", "ticker"]
        )

    def per_date(df: pd.DataFrame, p: int, h: int) -> list[float]:
        return rank_ic_by_date(df, f"pred_h{p}", f"target_h{h}").dropna().tolist()

    df_held, df_es = scored(held), scored(es)
    cross = {f"p{p}_h{h}": per_date(df_held, p, h) for p in HORIZONS for h in HORIZONS if p < h}
    return (
        {h: per_date(df_held, h, h) for h in HORIZONS},
        {h: float(np.mean(per_date(df_es, h, h))) for h in HORIZONS},
        cross,
    )


def run_source(
    source: str, models: list[str], variants: list[str], k: int, origins: list[float]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    prices, _ = load(source, 500, 1260, 7)
    feats = build_features(prices, HORIZONS, n_jobs=None)
    dates = pd.DatetimeIndex(np.sort(feats["date"].unique()))
    sp = split_dates(dates, source)
    feats = feats[feats["date"] <= sp["valid_end"]].reset_index(drop=True)  # the test period is gone
    splits = scoring_splits(dates, sp, origins)
    print(f"\n== {source} (features {time.perf_counter() - t0:.0f} s)", flush=True)
    for c in splits:
        print(
            f"  train {sp['train_start'].date()}..{c['train_end'].date()}, early stopping "
            f"{c['es'][0].date()}..{c['es'][1].date()}, scored {c['score'][0].date()}..{c['score'][1].date()}",
            flush=True,
        )
    out: dict[str, Any] = {
        "split": {k_: str(v.date()) for k_, v in sp.items()},
        "scoring": [{k_: str(v) for k_, v in c.items()} for c in splits],
    }
    res: dict[str, Any] = {
        v: {name: {f"h{h}": [] for h in HORIZONS} | {"fit_s": 0.0} for name in models} for v in variants
    }
    for c in splits:
        for cs_norm in dict.fromkeys(v.split("/")[1] for v in variants):  # one preprocessor per norm
            pre = Preprocessor(k=k, cs_norm=cs_norm).fit(feats, c["train_end"])
            frame = pre.transform(feats)
            held = window(frame, *c["score"])
            fit_rows: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}  # per target: (train, es)
            for v in [v for v in variants if v.split("/")[1] == cs_norm]:
                body, _, preset = v.partition("+")
                target, _, metric, *smoothing = body.split("/")
                if target not in fit_rows:  # variants differing only in early stopping share them
                    fit_rows[target] = (
                        cross_sectional_targets(window(frame, sp["train_start"], c["train_end"]), target),
                        cross_sectional_targets(window(frame, *c["es"]), target),
                    )
                train, es = fit_rows[target]
                for name in models:
                    t = time.perf_counter()
                    params = variant_params(name, metric, smoothing[0] if smoothing else None, preset or None)
                    daily, es_ic, cross = daily_rank_ic(name, params, train, es, held)
                    for key, ics in cross.items():
                        res[v][name].setdefault(key, []).extend(ics)
                    for h in HORIZONS:  # the scored dates of every origin, one after another
                        res[v][name][f"h{h}"] += daily[h]
                        res[v][name].setdefault(f"es_h{h}", []).append(es_ic[h])
                        res[v][name].setdefault(f"n_h{h}", []).append(len(daily[h]))
                    res[v][name]["fit_s"] += time.perf_counter() - t
                    ics = "  ".join(f"h{h} {np.mean(daily[h]):+.4f}" for h in HORIZONS)
                    print(
                        f"  {v:<26} {name:<14} {ics}   {time.perf_counter() - t:.0f} s  ({c['score'][0].date()}..)",
                        flush=True,
                    )
    out["variants"] = res
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
    print("\nmean validation Rank IC over data sets, models and horizons (scored dates only):")
    for v in variants:
        d = series[best] - series[v]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 and v != best else float("nan")
        gap = f"   {(means[best] - means[v]) / se:4.1f} s.e. below the best" if v != best else "   <- best"
        print(f"  {v:<26} {means[v]:+.4f}{gap}")
    return best, means


def cross_horizon(results: dict[str, Any], variants: list[str]) -> dict[str, float]:
    """Per data set, variant and model: the mean Rank IC at each longer horizon of the model's own
    forecast for it and of each shorter horizon's forecast (all scored dates, every block)."""
    out: dict[str, float] = {}
    print("\nforecasts of a shorter horizon scored against a longer horizon's return (scored dates):")
    for src, r in results.items():
        for v in variants:
            for name, res in r["variants"][v].items():
                cells = []
                for h in HORIZONS[1:]:
                    own = float(np.mean(res[f"h{h}"]))
                    out[f"{src}/{v}/{name}/p{h}_h{h}"] = own
                    cell = f"h{h}: own {own:+.4f}"
                    for p in [p for p in HORIZONS if p < h]:
                        x = float(np.mean(res[f"p{p}_h{h}"]))
                        out[f"{src}/{v}/{name}/p{p}_h{h}"] = x
                        cell += f" p{p} {x:+.4f}"
                    cells.append(cell)
                print(f"  {src:<10} {v:<26} {name:<14} " + "   ".join(cells))
    return out


def _block_mean(r: dict[str, Any], h: int, b: int) -> float:
    """The mean Rank IC of scoring block ``b`` at horizon ``h`` (blocks are stored one after another)."""
    cuts = np.cumsum([0, *r[f"n_h{h}"]])
    return float(np.mean(r[f"h{h}"][cuts[b] : cuts[b + 1]]))


def choose_on_es(results: dict[str, Any], variants: list[str]) -> dict[str, float]:
    """What choosing among the variants at fit time would score: per data set, scoring block and model,
    the variant with the best mean Rank IC over horizons on the early-stopping dates (which a fit may
    look at; the scoring dates it may not), scored on that block's scoring dates. Printed beside each
    variant's own figure, all as the mean over blocks, models and horizons of each block's mean."""
    out: dict[str, float] = {}
    print("\nchoosing per model on the early-stopping dates (mean over blocks, models and horizons):")
    for src, r in results.items():
        res = r["variants"]
        models = list(res[variants[0]])
        n_blocks = len(res[variants[0]][models[0]][f"n_h{HORIZONS[0]}"])
        scores: dict[str, list[float]] = {v: [] for v in [*variants, "chosen"]}
        for name in models:
            for b in range(n_blocks):  # block b's scored dates of each horizon, per variant
                got = {v: [_block_mean(res[v][name], h, b) for h in HORIZONS] for v in variants}
                pick = max(variants, key=lambda v: np.mean([res[v][name][f"es_h{h}"][b] for h in HORIZONS]))
                for v in variants:
                    scores[v] += got[v]
                scores["chosen"] += got[pick]
        for v, x in scores.items():
            out[f"{src}/{v}"] = float(np.mean(x))
            print(f"  {src:<10} {v:<30} {np.mean(x):+.4f}")
    for v in [*variants, "chosen"]:
        both = float(np.mean([out[f"{src}/{v}"] for src in results]))
        out[f"all/{v}"] = both
        print(f"  {'all':<10} {v:<30} {both:+.4f}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", nargs="+", default=["synthetic", "sp500"])
    ap.add_argument("--models", nargs="+", default=["lightgbm", "random_forest"])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument(
        "--origins",
        nargs="+",
        type=float,
        default=[],
        help="score at these fractions of the pre-test dates instead (e.g. 0.55 0.7 0.85; see scoring_splits)",
    )
    ap.add_argument("--json", default=str(HERE.parent / "artifacts" / "bench" / "select_defaults.json"))
    args = ap.parse_args()
    unknown = [v for v in args.variants if v.partition("+")[2] and v.partition("+")[2] not in PRESETS]
    if unknown:
        ap.error(f"unknown preset in {unknown}; known: {sorted(PRESETS)}")
    results = {s: run_source(s, args.models, args.variants, args.k, args.origins) for s in args.sources}
    best, means = summarise(results, args.variants)
    chosen = choose_on_es(results, args.variants) if len(args.variants) > 1 else {}
    cross = cross_horizon(results, args.variants)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "results": results,
                "means": means,
                "best": best,
                "chosen_on_es": chosen,
                "cross_horizon": cross,
            },
            default=str,
        )
    )
    print(f"best: {best}; results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
