"""The walk-forward backtest job: folds retrained through the one training path, as Ray tasks, then
every member, the ensemble and the baselines evaluated over all test dates, and a report.

    python -m jobs.backtest --config cluster/backtest_quick.yaml
    python -m jobs.backtest --config cluster/backtest_sp500.yaml [--out DIR] [--set backtest.every=21]
    ray job submit --working-dir . -- python -m jobs.backtest --config cluster/backtest_sp500.yaml --out /abs/dir

Steps
  data       load_prices(settings) (synthetic, files or PostgreSQL), the features built once on the
             whole panel (point in time: a feature at t uses rows dated <= t)
  folds      ensemble.backtest.walkforward.walk_forward_folds from ``backtest:`` (expanding or
             rolling, retrain every ``every`` dates, ``embargo`` dates between cut-off and test, the
             last ``test_days`` dates or from ``first_test``)
  fit        one Ray task per fold (``backtest.fold_cpus`` CPUs each), prices and features put in the
             object store once: walkforward.fit_fold (every member fitted with its configured
             parameters, sequence members over ``backtest.seeds`` seeds, the ensemble learned on
             validation), folds in parallel, a progress bar over the finished ones
  evaluate   ensemble.backtest.evaluation.evaluate over all test dates for every member (its
             forecast in return units), the ensemble and the baselines: zero forecast, 5-day
             reversal ``-log(close[t]/close[t-5])``, 12-1 momentum ``log(close[t-21]/close[t-252])``
  portfolio  ensemble.backtest.portfolio.long_short per model and horizon (score ``pred_h{h}``,
             ``backtest.quantile`` / ``top_k``, ``hold``, ``cost_bps``) and the equal-weight universe
  report     ensemble.backtest.report.write_report into ``<backtest.out_dir>/<timestamp>/`` (or ``--out``)

Prints the metrics table (members, ensemble, baselines: Rank IC, ICIR, directional accuracy,
interval coverage, Sharpe, maximum drawdown, turnover) and the report's path. A fold that fails is
reported and its window left out of the evaluation; the run fails only when every fold fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ensemble.backtest.evaluation import (
    BASELINES,
    action_returns,
    baseline_forecasts,
    daily_coverage,
    daily_rank_ic,
    evaluate,
    rolling,
)
from ensemble.backtest.portfolio import daily_returns, equal_weight, long_short
from ensemble.backtest.report import series_payload
from ensemble.backtest.walkforward import Fold, FoldResult, fit_fold, walk_forward_folds
from ensemble.config import MODEL_NAMES, Settings, load_settings, parse_overrides
from ensemble.models.base import feature_columns, pred_col
from jobs.train import connect_ray

logger = logging.getLogger("jobs.backtest")

EQUAL_WEIGHT = "equal_weight"


def _fold_task(
    prices: pd.DataFrame, features: pd.DataFrame, fold: Fold, settings: Settings, seeds: list[int]
) -> FoldResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "prophet" in settings.training.models:
        from jobs.ray_prophet import preload_prophet

        preload_prophet()  # cmdstanpy's logger set up now, so that its INFO chatter stays quiet
    return fit_fold(prices, fold, settings, features=features, seeds=seeds)


def run_folds(
    prices: pd.DataFrame,
    features: pd.DataFrame,
    folds: Sequence[Fold],
    settings: Settings,
    seeds: Sequence[int],
    *,
    progress: bool = True,
) -> tuple[list[FoldResult], dict[int, str]]:
    """Every fold as a Ray task, in parallel; (results in fold order, failures by fold index)."""
    import ray
    from tqdm import tqdm

    task = ray.remote(_fold_task).options(num_cpus=settings.backtest.fold_cpus, max_retries=0)
    prices_ref, feats_ref = ray.put(prices), ray.put(features)
    pending = {task.remote(prices_ref, feats_ref, f, settings, list(seeds)): f for f in folds}
    results: dict[int, FoldResult] = {}
    failures: dict[int, str] = {}
    with tqdm(total=len(folds), desc="folds", unit="fold", disable=not progress) as bar:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            fold = pending[done[0]]
            try:
                results[fold.index] = ray.get(done[0])
            except Exception as exc:  # reported; its window is left out
                cause = getattr(exc, "cause", None) or exc
                logger.error("fold %d (as_of %s) failed: %s", fold.index, fold.as_of.date(), cause)
                failures[fold.index] = f"{type(cause).__name__}: {cause}"
            bar.update(1)
    return [results[i] for i in sorted(results)], failures


def _concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True).sort_values(["date", "ticker"]).reset_index(drop=True)


def assemble(
    results: Sequence[FoldResult],
    prices: pd.DataFrame,
    settings: Settings,
    *,
    fold_failures: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Evaluate every model over all test dates and simulate the portfolios: the report's ``result``
    dict (format: :mod:`ensemble.backtest.report`)."""
    horizons = list(settings.horizons)
    levels = list(settings.ensemble.interval_levels)
    bt = settings.backtest
    truth = _concat([r.truth for r in results])
    test_dates = pd.DatetimeIndex(sorted(truth["date"].unique()))
    members = [m for m in MODEL_NAMES if any(m in r.member_preds for r in results)]
    forecasts: dict[str, pd.DataFrame] = {
        m: _concat([r.member_preds[m] for r in results if m in r.member_preds]) for m in members
    }
    forecasts["ensemble"] = _concat([r.ensemble for r in results])
    kinds = {**dict.fromkeys(members, "member"), "ensemble": "ensemble"}
    for name, f in baseline_forecasts(prices, horizons).items():
        forecasts[name] = f[f["date"].isin(test_dates)].reset_index(drop=True)
        kinds[name] = "baseline"
    kinds[EQUAL_WEIGHT] = "baseline"

    returns = daily_returns(prices)
    metrics: dict[str, dict[int, dict[str, float]]] = {}
    stats: dict[str, dict[int, dict[str, float]]] = {}
    equity: dict[str, dict[str, Any]] = {str(h): {} for h in horizons}
    rolling_ic: dict[str, dict[str, Any]] = {str(h): {} for h in horizons}
    span: tuple[pd.Timestamp, pd.Timestamp] | None = None
    for name, f in forecasts.items():
        metrics[name] = evaluate(f, truth, horizons, levels)
        for h in horizons:
            ic = rolling(daily_rank_ic(f, truth, h), bt.rolling_window)
            if len(ic):
                rolling_ic[str(h)][name] = series_payload(ic)
        if name == "zero":  # no ranking, no portfolio
            continue
        stats[name] = {}
        for h in horizons:
            pr = long_short(f, returns, score_col=pred_col(h), quantile=bt.quantile, top_k=bt.top_k,
                            hold=bt.hold, cost_bps=bt.cost_bps, keep_weights=False)  # fmt: skip
            stats[name][h] = pr.stats()
            equity[str(h)][name] = series_payload(pr.equity())
            span = span or (pr.returns.index[0], pr.returns.index[-1])
    assert span is not None  # the ensemble always has a portfolio
    ew = equal_weight(returns, start=span[0], end=span[1], hold=bt.hold, cost_bps=bt.cost_bps)
    stats[EQUAL_WEIGHT] = {h: ew.stats() for h in horizons}
    for h in horizons:
        equity[str(h)][EQUAL_WEIGHT] = series_payload(ew.equity())

    # each member's raw Rank IC (its own ranking, before the calibration to returns)
    raw_ic = {
        m: evaluate(_concat([r.member_scores[m] for r in results if m in r.member_scores]), truth, horizons)
        for m in members
    }
    seeds = seed_spread(results, truth, horizons)
    coverage = {
        str(h): {
            str(round(a * 100)): series_payload(
                rolling(daily_coverage(forecasts["ensemble"], truth, h, a), bt.rolling_window)
            )
            for a in levels
        }
        for h in horizons
    }
    rows = []
    for name in [*members, "ensemble", *BASELINES, EQUAL_WEIGHT]:
        for h in horizons:
            row: dict[str, Any] = {"model": name, "kind": kinds[name], "horizon": h}
            row.update(metrics.get(name, {}).get(h, {}))
            row.update(stats.get(name, {}).get(h, {}))
            if name in raw_ic:
                row["rank_ic_raw"] = raw_ic[name][h]["rank_ic"]
            if name in seeds:
                sp = seeds[name][h]
                row.update(seeds=int(sp["n"]), rank_ic_std=sp["rank_ic_std"], seed_rank_ic_mean=sp["rank_ic_mean"],
                           seed_rank_ic_min=sp["rank_ic_min"], seed_rank_ic_max=sp["rank_ic_max"])  # fmt: skip
            rows.append(row)
    label = {r.fold.index: f"{r.fold.index}: {r.fold.as_of.date()}" for r in results}
    weights = {str(h): {label[r.fold.index]: r.weights[h] for r in results} for h in horizons}
    folds = [
        {
            "fold": r.fold.index,
            "as_of": r.fold.as_of.date().isoformat(),
            "train_start": r.fold.split.train_start.date().isoformat(),
            "train_end": r.fold.split.train_end.date().isoformat(),
            "valid_start": r.fold.split.valid_start.date().isoformat(),
            "valid_end": r.fold.split.valid_end.date().isoformat(),
            "test_start": r.fold.test_start.date().isoformat(),
            "test_end": r.fold.test_end.date().isoformat(),
            "n_train": r.fold.split.train_days,
            "n_valid": r.fold.split.valid_days,
            "n_test": r.fold.test_days,
            "wall_s": round(r.wall_s.get("total", float("nan")), 1),
            "failed_members": "; ".join(f"{m}: {e}" for m, e in r.failures.items()),
        }
        for r in results
    ] + [{"fold": i, "error": e} for i, e in (fold_failures or {}).items()]
    tickers = int(truth["ticker"].nunique())
    first, last = test_dates[0].date().isoformat(), test_dates[-1].date().isoformat()
    notes = [
        f"data: {settings.data.source}{' ' + settings.data.path if settings.data.path else ''}, "
        f"{tickers} tickers; test {first} .. {last} ({len(test_dates)} trading dates)",
        f"{len(results)} folds, {bt.mode} window, retrained every {bt.every} trading dates, "
        f"{bt.embargo} embargo dates after each cut-off, labels purged at the cut-off",
        "members are scored on their forecasts in return units (the ensemble's per-member calibration "
        "fitted on validation); rank_ic_raw is the model's own ranking",
        f"long-short: top / bottom {bt.top_k or f'{bt.quantile:.0%}'} by pred_h<h>, rebalanced every "
        f"{bt.hold} dates, {bt.cost_bps:g} bps per unit of turnover; equal_weight: the universe",
        *[f"fold {i} FAILED (its window left out): {e}" for i, e in (fold_failures or {}).items()],
    ]
    return {
        "title": f"Walk-forward backtest: {settings.data.source}, {len(results)} folds",
        "created": datetime.now().isoformat(timespec="seconds"),
        "horizons": horizons,
        "levels": levels,
        "notes": notes,
        "meta": {
            "mode": bt.mode,
            "retrain_every": bt.every,
            "embargo": bt.embargo,
            "cost_bps": bt.cost_bps,
            "quantile": bt.quantile,
            "top_k": bt.top_k,
            "hold": bt.hold,
            "seeds": bt.seeds,
            "target": settings.training.target,
            "ensemble": settings.ensemble.mode,
        },  # fmt: skip
        "metrics": rows,
        "equity": equity,
        "rolling_rank_ic": rolling_ic,
        "coverage": coverage,
        "weights": weights,
        "folds": folds,
        "actions": action_returns(
            forecasts["ensemble"], truth, horizons, settings.recommend, settings.action_horizon()
        ).to_dict("records"),
        "config": settings.model_dump(mode="json"),
        "test": {"start": first, "end": last, "dates": len(test_dates), "tickers": tickers},
    }


def seed_spread(
    results: Sequence[FoldResult], truth: pd.DataFrame, horizons: Sequence[int]
) -> dict[str, dict[int, dict[str, float]]]:
    """Per sequence member and horizon: each seed's Rank IC over all test dates (its raw forecasts,
    every fold), summarised as mean, std (ddof 1), min, max and the number of seeds."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    names = sorted({m for r in results for m in r.seed_preds}, key=list(MODEL_NAMES).index)
    for m in names:
        seeds = sorted({s for r in results for s in r.seed_preds.get(m, {})})
        ics = {
            s: evaluate(
                _concat([r.seed_preds[m][s] for r in results if s in r.seed_preds.get(m, {})]),
                truth,
                horizons,
            )  # fmt: skip
            for s in seeds
        }
        out[m] = {}
        for h in horizons:
            v = np.array([ics[s][h]["rank_ic"] for s in seeds], dtype=np.float64)
            out[m][h] = {
                "n": float(len(v)),
                "rank_ic_mean": float(np.nanmean(v)),
                "rank_ic_std": float(np.nanstd(v, ddof=1)) if len(v) > 1 else float("nan"),
                "rank_ic_min": float(np.nanmin(v)),
                "rank_ic_max": float(np.nanmax(v)),
            }
    return out


TABLE_COLUMNS = (
    ("n_dates", "Dates", ">9.0f"),  # test dates with a realised label: few at 60 days near the data's end
    ("rank_ic", "RankIC", ">+9.4f"),
    ("rank_ic_raw", "(raw)", ">+9.4f"),
    ("icir", "ICIR", ">+9.2f"),
    ("directional_accuracy", "DirAcc", ">9.3f"),
    ("coverage80", "Cov80", ">9.3f"),
    ("coverage95", "Cov95", ">9.3f"),
    ("sharpe", "Sharpe", ">+9.2f"),
    ("max_drawdown", "MaxDD", ">+9.3f"),
    ("turnover", "Turn", ">9.3f"),
)


def format_table(result: dict[str, Any]) -> str:
    """The metrics table: one line per model and horizon (members, ensemble, baselines). ``(raw)``:
    a member's Rank IC on its own scores, before the calibration to returns (which a negative
    validation slope inverts)."""
    head = f"{'model':<16}{'h':>4}" + "".join(f"{label:>9}" for _, label, _ in TABLE_COLUMNS) + "  seeds"
    lines = [head, "-" * len(head)]
    for row in result["metrics"]:
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            v = row.get(key)
            cells.append(f"{v:{fmt}}" if isinstance(v, float | int) and np.isfinite(v) else f"{'-':>9}")
        note = ""
        if "seeds" in row:
            std = row["rank_ic_std"]
            note = f"  {row['seeds']} seeds: Rank IC {row['seed_rank_ic_mean']:+.4f}" + (
                f" +- {std:.4f}" if np.isfinite(std) else ""
            )
        lines.append(f"{row['model']:<16}{row['horizon']:>4}" + "".join(cells) + note)
    return "\n".join(lines)


def run(settings: Settings, *, out: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The whole backtest; returns a summary (the report's dict, its path, timings)."""
    from ensemble.backtest.report import write_report
    from ensemble.data.sources import load_prices
    from ensemble.features import build_features

    t0 = time.perf_counter()
    bt, tr = settings.backtest, settings.training
    horizons = list(settings.horizons)
    prices, _ = load_prices(settings)
    features = build_features(prices, horizons, n_jobs=None)
    t_features = time.perf_counter() - t0
    folds = walk_forward_folds(
        features["date"],
        first_test=bt.first_test,
        test_days=None if bt.first_test else bt.test_days,
        every=bt.every,
        mode=bt.mode,
        training_days=tr.training_days,
        valid_fraction=tr.valid_fraction,
        max_horizon=max(horizons),
        embargo=bt.embargo,
    )
    logger.info(
        "%d tickers x %d dates, %d features (%.0f s); %d folds from %s, %s, retrain every %d dates",
        prices["ticker"].nunique(), features["date"].nunique(), len(feature_columns(features)), t_features,
        len(folds), folds[0].test_start.date(), bt.mode, bt.every,
    )  # fmt: skip
    import ray

    how = connect_ray(settings)
    logger.info("ray: %s", how)
    seeds = [tr.seed + i for i in range(bt.seeds)]
    t1 = time.perf_counter()
    try:
        results, failures = run_folds(prices, features, folds, settings, seeds, progress=progress)
    finally:
        if how == "local Ray":  # the Ray this run started, not one it joined
            ray.shutdown()
    del features
    t_folds = time.perf_counter() - t1
    if not results:
        raise RuntimeError(f"every fold failed: {failures}")
    result = assemble(results, prices, settings, fold_failures=failures)
    result["wall_s"] = {"features": t_features, "folds": t_folds, "total": time.perf_counter() - t0}
    directory = (Path(out) if out else Path(bt.out_dir) / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    path = write_report(result, directory)
    return {
        "result": result,
        "report": str(path),
        "directory": str(directory),
        "fold_results": results,
        "fold_failures": failures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.backtest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML settings (default: built-in defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    ap.add_argument("--out", help="report directory (default: <backtest.out_dir>/<timestamp>)")
    ap.add_argument("--summary-json", help="also write the metrics rows as JSON to this file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    settings = load_settings(args.config, parse_overrides(args.set))
    summary = run(settings, out=args.out, progress=not args.no_progress)
    res = summary["result"]
    print(f"\n{res['title']}: test {res['test']['start']} .. {res['test']['end']} "
          f"({res['test']['dates']} dates, {res['test']['tickers']} tickers)", flush=True)  # fmt: skip
    print(format_table(res), flush=True)
    for i, why in summary["fold_failures"].items():
        print(f"fold {i} FAILED (left out): {why}")
    for f in res["folds"]:
        if f.get("failed_members"):
            print(f"fold {f['fold']}: left out of that fold: {f['failed_members']}")
    print(f"total wall {res['wall_s']['total']:.0f} s (folds {res['wall_s']['folds']:.0f} s)")
    print(f"report: {summary['report']}", flush=True)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(res["metrics"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    sys.exit(run_main(main))
