"""Daily scoring: a registry version + the data up to an as-of date -> recommendations.

    python -m jobs.score                                   # production version, latest date of the data
    python -m jobs.score --as-of 2023-06-30 --version 20240101T000000Z-ab12cd --top 10
    python -m jobs.score --config cluster/quick.yaml --registry artifacts/registry-quick --ticker TEC001

Settings: the version's own stored config (its data source, features, models), updated by
``--config`` (a YAML file replaces it as the base) and ``--set``. Steps:

  load      the version from the registry (checksums verified; a member that fails is degraded)
  data      ``load_prices`` (synthetic, files or PostgreSQL) up to the as-of date, nothing after it
  prophet   per-ticker models fitted through a date more than ``scoring.prophet_refit_every_days``
            trading dates before the as-of date are refitted on the latest history in the Ray
            fan-out (jobs.ray_prophet); the refit is recorded in ``prophet_refit.json`` beside the
            scores (the registry version is never changed)
  score     ensemble.scoring.score: one feature pass, one predict per member, the ensemble
  recommend ensemble.recommend.recommend: targets, intervals as prices, risk, action, size, drivers

Writes ``recommendations.parquet`` / ``.csv``, ``skipped.csv`` and ``summary.json`` to ``--out``
(default ``scoring.out_dir/<as_of>/``) and, when the DSN variable (``postgres.dsn_env``) is set,
replaces the date's rows of the PostgreSQL table ``scoring.table``. Prints the top buys and sells.
With ``monitoring.log`` (default on) every scored forecast goes to the prediction log
(ensemble/predlog.py, source ``score``: ``--log DIR``, else the table ``monitoring.table`` when the
DSN is set, else ``monitoring.log_dir``), durable before the job reports success.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ensemble.cli import EXIT_DATA, EXIT_USAGE, date_arg
from ensemble.config import Settings, load_settings, parse_overrides, with_overrides
from ensemble.data.sources import load_prices
from ensemble.predlog import PredictionLog
from ensemble.recommend import BUY, SELL, recommend
from ensemble.registry import ModelRegistry
from ensemble.registry.errors import VersionNotFoundError
from ensemble.scoring import (
    ALL,
    LoadedVersion,
    ProphetRefit,
    ScoringError,
    feature_descriptions,
    history_days,
    load_version,
    per_ticker_member,
    refresh_stale_prophet,
    score,
)

logger = logging.getLogger("jobs.score")


def resolve_settings(lv: LoadedVersion, config: str | None, overrides: dict[str, Any]) -> Settings:
    """The run's settings: ``config`` (a YAML file) or else the version's stored settings, then ``--set``."""
    if config is not None:
        return load_settings(config, overrides)
    return with_overrides(lv.settings, overrides)


def read_prices(settings: Settings, as_of: pd.Timestamp | None, lv: LoadedVersion) -> pd.DataFrame:
    """The source's prices up to ``as_of`` (none after it is read where the source can filter:
    ``data.end``), from about the history scoring and the risk metrics need (PostgreSQL reads from a
    calendar bound; the exact window is cut by trading dates in ensemble.scoring)."""
    data: dict[str, Any] = {}
    if as_of is not None:
        data["end"] = as_of.date().isoformat()
        if settings.data.source == "postgres":
            days = max(history_days(lv.settings), settings.recommend.risk_window + 1)
            data["start"] = (as_of - pd.Timedelta(days=int(days * 1.5) + 30)).date().isoformat()
    s = with_overrides(settings, {"data": data}) if data else settings
    try:
        prices, _ = load_prices(s)
    except ValueError as exc:  # the contract's 'empty' rule, or the source's "returned no rows"
        if as_of is not None and "no rows" in str(exc):
            raise ScoringError(f"no prices dated {as_of.date()} or earlier in the data source") from None
        raise
    return prices


def refresh_prophet(
    lv: LoadedVersion,
    prices: pd.DataFrame,
    as_of: pd.Timestamp,
    settings: Settings,
    *,
    use_ray: bool = True,
    progress: bool = True,
) -> tuple[LoadedVersion, ProphetRefit | None]:
    """Refit the stale per-ticker models (``scoring.refresh_stale_prophet``, fitted in the Ray fan-out,
    or in-process with ``use_ray=False``)."""
    every = settings.scoring.prophet_refit_every_days

    def fan_out(frame: pd.DataFrame, model: Any) -> Any:
        from jobs.ray_prophet import fit_prophet_fanout
        from jobs.train import connect_ray

        logger.info("prophet: refitting %d stale tickers on Ray (%s)", frame["ticker"].nunique(),
                    connect_ray(settings))  # fmt: skip
        return fit_prophet_fanout(
            frame,
            horizons=model.horizons,
            params=dict(model.params),
            chunk_size=settings.ray.prophet_chunk_size,
            task_cpus=settings.ray.prophet_task_cpus,
            progress=progress,
        ).model

    how = "ray" if use_ray else "local"
    fresh, record = refresh_stale_prophet(lv, prices, as_of, every, fit=fan_out if use_ray else None, how=how)
    if record is None and per_ticker_member(lv) is not None:
        logger.info("prophet: no model older than %d trading dates", every)
    return fresh, record


def run(
    settings: Settings | None = None,
    *,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    registry_root: str | None = None,
    version: str | None = None,
    as_of: str | None = None,
    out: str | None = None,
    refit: bool = True,
    use_ray: bool = True,
    progress: bool = True,
    log_dir: str | None = None,
) -> dict[str, Any]:
    """Score and recommend; write the outputs; return a summary (``recs``: the recommendations)."""
    t0 = time.perf_counter()
    base = settings or load_settings(config, overrides)
    registry = ModelRegistry(registry_root or base.registry_root)
    lv = load_version(registry, version or "production")
    run_settings = settings or resolve_settings(lv, config, overrides or {})
    horizon = run_settings.action_horizon()
    if horizon not in lv.horizons:
        raise ScoringError(
            f"the action horizon {horizon} is not a horizon of version {lv.version} {lv.horizons}"
        )
    t_load = time.perf_counter()
    day = pd.Timestamp(as_of) if as_of is not None else None
    prices = read_prices(run_settings, day, lv)
    day = day or pd.Timestamp(prices["date"].max())
    prices = prices.loc[prices["date"] <= day].reset_index(drop=True)
    t_data = time.perf_counter()
    record = None
    if refit:
        lv, record = refresh_prophet(lv, prices, day, run_settings, use_ray=use_ray, progress=progress)
    t_refit = time.perf_counter()
    result = score(
        lv, prices, day, explain_horizon=horizon, min_history_days=run_settings.scoring.min_history_days
    )
    recs = recommend(result, prices, run_settings.recommend, horizon, descriptions=feature_descriptions())
    t_score = time.perf_counter()

    out_dir = Path(out or Path(run_settings.scoring.out_dir) / day.date().isoformat())
    out_dir.mkdir(parents=True, exist_ok=True)
    recs.to_parquet(out_dir / "recommendations.parquet", index=False)
    recs.to_csv(out_dir / "recommendations.csv", index=False)
    skipped = pd.DataFrame(
        [{"member": m, "ticker": t, "reason": r} for m, d in result.skipped.items() for t, r in d.items()],
        columns=["member", "ticker", "reason"],
    )
    skipped.to_csv(out_dir / "skipped.csv", index=False)
    if record is not None:
        (out_dir / "prophet_refit.json").write_text(json.dumps(record.to_dict(), indent=2))
    db_rows = None
    dsn = run_settings.postgres.dsn()
    if dsn:
        from ensemble.data.recommendations import RecommendationStore

        db_rows = RecommendationStore(dsn, table=run_settings.scoring.table).write(recs)
    logged = None
    if run_settings.monitoring.log:  # every scored forecast, durable before the job reports success
        with PredictionLog.from_settings(run_settings, log_dir) as plog:
            rows = plog.log(result.frame, version=lv.version, source="score", wait=True)
            logged = {"rows": rows, "to": repr(plog.backend)}
    seconds = {
        "load": t_load - t0,
        "data": t_data - t_load,
        "prophet_refit": t_refit - t_data,
        "score": t_score - t_refit,
        **{f"score.{k}": v for k, v in result.seconds.items()},
        "total": time.perf_counter() - t0,
    }
    summary = {
        "as_of": day.date().isoformat(),
        "version": lv.version,
        "registry": registry.uri,
        "horizon": horizon,
        "tickers": {"universe": int(prices["ticker"].nunique()), "scored": len(recs)},
        "actions": {str(k): int(v) for k, v in recs["action"].value_counts().items()},
        "skipped": {m: len(d) for m, d in result.skipped.items()},
        "degraded": result.degraded,
        "prophet_refit": record.to_dict() if record is not None else None,
        "out": str(out_dir),
        "postgres_rows": db_rows,
        "prediction_log": logged,
        "seconds": seconds,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return {**summary, "recs": recs, "skipped_detail": result.skipped}


def _pct(v: float) -> str:
    return f"{v * 100:+.2f}%" if pd.notna(v) else "-"


def format_top(recs: pd.DataFrame, n: int) -> str:
    """The top ``n`` buys and sells (by risk-adjusted score) as a plain table."""
    h = int(recs["horizon"].iloc[0]) if len(recs) else 0
    head = (
        f"{'ticker':<10}{'action':<6}{'close':>10}{'exp ret':>9}{'excess':>9}{'target':>10}"
        f"{'conf':>6}{'risk adj':>9}{'vol':>7}{'VaR':>7}{'beta':>6}{'weight':>8}  top features"
    )
    counts = recs["action"].value_counts()
    lines = [f"actions (h={h}): " + ", ".join(f"{a} {int(counts.get(a, 0))}" for a in (BUY, "HOLD", SELL))]
    for title, action, asc in (("top buys", BUY, False), ("top sells", SELL, True)):
        sub = recs.loc[recs["action"] == action].sort_values("risk_adjusted", ascending=asc).head(n)
        if sub.empty:  # no name passes the thresholds: show the ranking's ends, all HOLD
            title = f"{'highest' if action == BUY else 'lowest'}-ranked (no {action} passes the thresholds)"
            sub = recs.sort_values("risk_adjusted", ascending=asc, na_position="last").head(n)
        lines.append(f"{title}:")
        lines.append(head)
        for r in sub.to_dict("records"):
            lines.append(
                f"{r['ticker']:<10}{r['action']:<6}{r['close']:>10.2f}{_pct(r[f'exp_ret_h{h}']):>9}"
                f"{_pct(r[f'excess_h{h}']):>9}{r[f'price_target_h{h}']:>10.2f}{r[f'confidence_h{h}']:>6.2f}"
                f"{r['risk_adjusted']:>+9.3f}{r['ann_vol']:>7.1%}{r['var']:>7.2%}{r['beta']:>6.2f}"
                f"{r['weight']:>8.2%}  {r['top_features']}"
            )
    return "\n".join(lines)


def format_ticker(recs: pd.DataFrame, ticker: str, skipped: dict[str, dict[str, str]]) -> str:
    """One ticker's full recommendation, or why it was not scored."""
    row = recs.loc[recs["ticker"] == ticker]
    if row.empty:
        why = [f"{m}: {d[ticker]}" for m, d in skipped.items() if ticker in d]
        return f"{ticker}: not scored" + (f" ({'; '.join(why)})" if why else " (not in the data)")
    r = row.iloc[0].to_dict()
    width = max(len(k) for k in r)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in r.items())


def format_skipped(skipped: dict[str, dict[str, str]], limit: int = 5) -> str:
    lines = []
    for member, d in skipped.items():
        if not d:
            continue
        what = "not scored at all" if member == ALL else f"left out by {member}"
        examples = "; ".join(f"{t}: {r}" for t, r in list(d.items())[:limit])
        more = f" (+{len(d) - limit} more)" if len(d) > limit else ""
        lines.append(f"{len(d)} tickers {what}: {examples}{more}")
    return "\n".join(lines) or "every ticker scored by every member"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.score", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML settings (default: the version's stored settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    ap.add_argument(
        "--as-of", type=date_arg, help="the date to score (default: the latest date of the data source)"
    )
    ap.add_argument("--version", help="registry version or alias (default: production)")
    ap.add_argument("--registry", help="registry root (path or URI); default: registry_root of the config")
    ap.add_argument("--top", type=int, default=10, help="buys and sells to print (default 10)")
    ap.add_argument("--ticker", help="print this ticker's full recommendation")
    ap.add_argument("--out", help="output directory (default: scoring.out_dir/<as_of>/)")
    ap.add_argument("--no-refit", action="store_true", help="score with the Prophet models as stored")
    ap.add_argument("--log", help="prediction log directory (Parquet); default: the configured log")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = parse_overrides(args.set)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray on loopback
    try:
        s = run(
            config=args.config,
            overrides=overrides,
            registry_root=args.registry,
            version=args.version,
            as_of=args.as_of,
            out=args.out,
            refit=not args.no_refit,
            progress=not args.no_progress,
            log_dir=args.log,
        )
    except ScoringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except VersionNotFoundError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    recs = s.pop("recs")
    print(
        f"version {s['version']} as of {s['as_of']}: {len(recs)} of {s['tickers']['universe']} tickers scored"
    )
    if args.ticker:
        print(format_ticker(recs, args.ticker, s["skipped_detail"]))
    else:
        print(format_top(recs, args.top))
    print(format_skipped(s["skipped_detail"]))
    for name, why in s["degraded"].items():
        print(f"degraded {name}: {why}")
    if s["prophet_refit"]:
        r = s["prophet_refit"]
        print(
            f"prophet refit: {len(r['refitted'])} tickers through {s['as_of']} ({len(r['failed'])} failed), {r['seconds']:.1f} s"
        )
    sec = s["seconds"]
    print(
        f"wrote {s['out']}" + (f" and {s['postgres_rows']} rows to PostgreSQL" if s["postgres_rows"] else "")
        + f"; {sec['total']:.1f} s (score {sec['score']:.1f} s, data {sec['data']:.1f} s, "
        f"prophet refit {sec['prophet_refit']:.1f} s)"
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    sys.exit(run_main(main))
