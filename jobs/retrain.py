"""Scheduled retraining: train a candidate on the latest data, promote it only if it beats production
on the most recent window, hot-reload serving, record the decision and its evidence.

    python -m jobs.retrain --config cluster/train.yaml                      # registry only
    python -m jobs.retrain --config cluster/train.yaml --url http://127.0.0.1:8000   # and the service
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.retrain --config cluster/train.yaml --registry "$PWD/artifacts/registry"

A daily schedule (cron, 06:30 on weekdays, after the day's data has landed)::

    30 6 * * 1-5  cd /srv/ensemble && .venv/bin/python -m jobs.retrain --config cluster/train.yaml \\
                  --url http://127.0.0.1:8000 >> artifacts/retrain.log 2>&1

Steps:
  1. the candidate: ``jobs.train.run`` (the one training path, within ``training.cost_limit_usd``)
     as of the walk-forward cutoff, which leaves out the ``--window`` (default 21) most recent dates
     whose 5-day returns are realised; stored without promotion. ``--candidate V`` gates an existing
     version instead (its validation end is the cutoff);
  2. the gate (``ensemble.retrain.gate``): candidate and production forecast every window date as
     they would have served it (per-ticker models refitted through the cutoff), and the candidate is
     promoted only if its Rank IC there beats production's by more than ``--min-gain``. So the
     promoted model's data ends ``window + 5`` trading dates before the latest: the price of judging
     it on dates it has not seen;
  3. promotion: with ``--url`` through the running service (``jobs.deploy``: the training-time
     samples checked through the service first, then promote, then every member healthy on it: a hot
     reload, no restart); without, the registry's ``production`` alias (a service reading
     ``production`` picks it up on its next promotion or restart);
  4. the record: ``<registry>/retrain/<time>-<candidate>.json`` (the decision, both versions'
     metrics on the window, the dates scored, the training summary's cost) and, when promoted, the
     alias history's reason.

Exit codes: 0 done (promoted or kept: both are outcomes, printed); 1 the promotion failed (the
service refused the version or it did not become healthy: the previous version keeps serving);
2 usage; 3 data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

logger = logging.getLogger("jobs.retrain")

RECORD_DIR = "retrain"


def run(
    settings: Any,
    *,
    registry_root: str | None = None,
    candidate: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    window: int = 21,
    min_gain: float = 0.0,
    timeout_s: float = 600.0,
    progress: bool = True,
    truth: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Train (or take) a candidate as of the walk-forward cutoff, gate it against production on the
    window after it, promote it if it passes; return the record that is also written to the
    registry. ``truth``: the realised returns to judge by (default: from the prices)."""
    from ensemble import retrain
    from ensemble.config import with_overrides
    from ensemble.data.sources import load_prices
    from ensemble.registry import ModelRegistry
    from ensemble.registry.errors import VersionNotFoundError
    from jobs import deploy, train

    registry = ModelRegistry(registry_root or settings.registry_root)
    prices, oracle = load_prices(settings)  # loaded once: the candidate trains on what the gate judges by
    h = int(min(settings.horizons))
    summary: dict[str, Any] = {}
    if candidate is None:
        cutoff = retrain.cutoff_for(prices["date"], window, h)
        tsettings = with_overrides(settings, {"training": {"as_of": str(cutoff.date())}})
        logger.info("training the candidate as of %s (the %d dates after it are the gate's window)",
                    cutoff.date(), window)  # fmt: skip
        summary = train.run(tsettings, registry_root=registry.root, promote=False, progress=progress,
                            prices=prices, oracle=oracle)  # fmt: skip
        cand = str(summary["version"])
    else:
        cand = registry.resolve(candidate)
    cutoff = pd.Timestamp(registry.load_extra(cand, "training")["split"]["valid_end"])
    try:
        prod_id: str | None = registry.resolve("production")
    except VersionNotFoundError:
        prod_id = None

    production, through = None, None
    if prod_id is not None and prod_id != cand:
        production = as_served(registry, prod_id, prices, cutoff, progress)
        through = registry.load_extra(prod_id, "training")["split"]["valid_end"]
    decision = retrain.gate(
        as_served(registry, cand, prices, cutoff, progress), production, prices, cutoff, window,
        min_gain=min_gain, production_through=through, truth=truth,
    )  # fmt: skip
    if prod_id == cand:
        decision.promote, decision.reason = False, f"{cand} already is production"
    record: dict[str, Any] = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **decision.to_dict(),
        "trained": bool(summary),
        "cost": summary.get("cost") or registry.manifest(cand).get("cost"),
        "served_by": url,
        "previous_production": prod_id,
    }
    logger.info("gate: %s", decision.reason)
    if decision.promote:
        reason = f"jobs.retrain: {decision.reason}"
        if url:
            try:
                report = deploy.validate(registry.root, cand)  # checksums, loading, samples
                recorded = deploy.samples_to_check(registry, report)
                out = deploy.deploy(url, cand, api_key or "", timeout_s, recorded, reason=reason)
            except deploy.DeployRefusedError as exc:
                record.update(promoted=False, promotion_error=str(exc))
                _write(registry, record)
                raise
            record["service"] = {"previous": out["previous"], "version": out["health"]["version"],
                                 "served_samples": out["served_samples"]}  # fmt: skip
        else:
            registry.set_alias("production", cand, reason, actor="jobs.retrain")
    record["promoted"] = decision.promote
    record["record"] = _write(registry, record)
    return record


def as_served(registry: Any, vid: str, prices: pd.DataFrame, cutoff: Any, progress: bool = True) -> Any:
    """Version ``vid`` loaded with its per-ticker models refitted through ``cutoff`` (the Ray
    fan-out of ``jobs.score``), as serving would hold them on the dates after it."""
    from ensemble import scoring
    from ensemble.config import with_overrides
    from jobs.score import refresh_prophet

    lv = scoring.load_version(registry, vid)
    cutoff = pd.Timestamp(cutoff)
    upto = prices.loc[prices["date"] <= cutoff].reset_index(drop=True)
    every0 = with_overrides(lv.settings, {"scoring": {"prophet_refit_every_days": 0}})
    fresh, _ = refresh_prophet(lv, upto, cutoff, every0, progress=progress)
    return fresh


def _write(registry: Any, record: dict[str, Any]) -> str:
    name = f"{record['at'].replace(':', '')}-{record['candidate']}.json"
    path = registry.io.p(RECORD_DIR, name)
    registry.io.replace_bytes(path, json.dumps(record, indent=2, default=str).encode())
    return str(path)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    from ensemble.config import load_settings, parse_overrides
    from jobs.deploy import DeployRefusedError

    ap = argparse.ArgumentParser(prog="python -m jobs.retrain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML settings (default: the built-in defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    ap.add_argument("--registry", help="registry root (path or URI); default: registry_root of the config")
    ap.add_argument("--candidate", help="gate this existing version instead of training one")
    ap.add_argument("--url", help="the running service to hot-reload (admin key: --api-key-env)")
    ap.add_argument("--api-key-env", default="ENSEMBLE_API_KEY")
    ap.add_argument("--window", type=int, default=21, help="trading dates of the gate's window")
    ap.add_argument("--min-gain", type=float, default=0.0, help="Rank IC the candidate must gain")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the service's health")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.window < 2:
        ap.error("--window must be >= 2")
    key = os.environ.get(args.api_key_env, "")
    if args.url and not key:
        print(
            f"error: ${args.api_key_env} is not set (the admin API key, needed with --url)", file=sys.stderr
        )
        return 2
    settings = load_settings(args.config, parse_overrides(args.set))
    try:
        r = run(
            settings,
            registry_root=args.registry,
            candidate=args.candidate,
            url=args.url,
            api_key=key,
            window=args.window,
            min_gain=args.min_gain,
            timeout_s=args.timeout,
            progress=not args.no_progress,
        )
    except DeployRefusedError as exc:
        print(f"promotion failed: {exc}", file=sys.stderr, flush=True)
        return 1
    h = r["horizon"]
    c, p = (m.get(f"rank_ic_h{h}") for m in (r["candidate_metrics"], r["production_metrics"]))
    w = r["window"]
    print(
        f"candidate {r['candidate']} (trained as of {w['cutoff']}): Rank IC h{h} {_fmt(c)} vs production "
        f"{r['previous_production']} {_fmt(p)} on the {w['dates']} dates {w['first']}..{w['last']}",
        flush=True,
    )
    for n in r["notes"]:
        print(f"note: {n}")
    print(f"{'promoted' if r['promoted'] else 'kept production'}: {r['reason']}", flush=True)
    print(f"record: {r['record']}", flush=True)
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    sys.exit(run_main(main))
