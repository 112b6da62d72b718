"""Validate a registry version, then make the running Serve application serve it.

    python -m jobs.deploy --version v2026... [--registry artifacts/registry] [--url http://127.0.0.1:8000]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.deploy --version v2026... --registry "$PWD/artifacts/registry"

Validation, here, before anything changes (each step names what failed):
  1. checksums: every file of the version against its manifest (``ModelRegistry.verify``);
  2. every artifact loads: ``scoring.load_version`` of every member (no member may fail to load);
  3. sample forecasts: ``scoring.score`` on the latest date of the version's data: every member
     forecasts, and the ensemble's forecasts are finite; and the rows recorded at training time (the
     ``samples`` extra: every member's and the ensemble's forecasts of a few tickers of the last
     validation date, ``scoring.sample_forecasts``) are forecast again from the stored version and
     must agree within ``--sample-rtol`` (relative; default 1e-9): a mismatch refuses the version (a
     version trained before samples were recorded is validated without this check, and says so).
Then, through the running service (admin API, ``$ENSEMBLE_API_KEY``): 4. the same recorded rows
are asked of the service with the version pinned (``POST /api/predict/batch`` with ``version``:
production and the A/B split are untouched) and every value it answers (the ensemble's forecast,
excess return, interval, confidence, each member) must agree with the recorded one within
``--sample-rtol``; a difference refuses the version with nothing changed. Then the deployment: ``POST
/api/models/{version}/promote`` with ``force`` (every member replica loads the version first; the
service refuses, and keeps serving, when one cannot), then ``/api/health`` is polled until every
member is healthy on the new version. If that does not happen within ``--timeout`` seconds, the
previous production version is restored (``POST /api/rollback``) and the job fails.

Exit codes: 0 deployed; 1 refused or rolled back (the running version keeps serving); 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("jobs.deploy")


class DeployRefusedError(RuntimeError):
    """The version failed validation or did not become healthy; nothing was changed (or it was undone)."""


def validate(registry_root: str, version: str, sample_rtol: float | None = None) -> dict[str, Any]:
    """The three checks of the module docstring; returns a report, raises DeployRefusedError."""
    import numpy as np

    from ensemble import scoring
    from ensemble.data.sources import load_prices
    from ensemble.registry import ModelRegistry

    reg = ModelRegistry(registry_root)
    report: dict[str, Any] = {"registry": reg.uri}
    try:
        vid = reg.verify(version)
    except Exception as exc:
        raise DeployRefusedError(f"{version}: checksums: {type(exc).__name__}: {exc}") from exc
    report["version"] = vid
    t0 = time.perf_counter()
    try:
        lv = scoring.load_version(reg, vid)
    except Exception as exc:
        raise DeployRefusedError(f"{vid}: loading: {type(exc).__name__}: {exc}") from exc
    failed = {m: why for m, why in lv.degraded.items() if not why.startswith("failed at training")}
    if failed:
        raise DeployRefusedError(f"{vid}: member(s) do not load: {failed}")
    report["members"] = sorted(lv.models)
    report["degraded_at_training"] = {m: w for m, w in lv.degraded.items() if m not in failed}
    report["load_s"] = time.perf_counter() - t0
    prices, _ = load_prices(lv.settings)
    res = scoring.score(lv, prices)
    broken = {m: why for m, why in res.degraded.items() if m in lv.models}
    if broken:
        raise DeployRefusedError(f"{vid}: sample forecasts: member(s) failed to predict: {broken}")
    cols = [f"pred_h{h}" for h in lv.horizons]
    vals = res.frame[cols].to_numpy(dtype=np.float64) if len(res.frame) else np.zeros((0, len(cols)))
    if len(vals) == 0 or not np.isfinite(vals).all():
        raise DeployRefusedError(
            f"{vid}: sample forecasts as of {res.as_of.date()}: {len(vals)} tickers, finite: "
            f"{bool(len(vals)) and bool(np.isfinite(vals).all())}"
        )
    report["sample"] = {
        "as_of": str(res.as_of.date()),
        "tickers": len(res.frame),
        "mean_pred": {c: float(np.mean(res.frame[c])) for c in cols},
    }
    report["training_samples"] = check_training_samples(reg, vid, lv, prices, sample_rtol)
    report["stale_at_samples"] = stale_at_samples(reg, vid, lv, prices)
    return report


def stale_at_samples(reg: Any, vid: str, lv: Any, prices: Any) -> int:
    """How many per-ticker models the service would refit on the samples' date (they were recorded
    with the models as stored: a version whose stored Prophet was fitted through its training end,
    as versions trained before the stored fit moved to the validation end were, cannot be checked
    through the service)."""
    from ensemble import scoring

    recorded, name = recorded_samples(reg, vid), scoring.per_ticker_member(lv)
    if recorded is None or name is None:
        return 0
    every = lv.settings.scoring.prophet_refit_every_days
    through = scoring.prophet_fitted_through(lv.models[name])
    return len(scoring.stale_prophet_tickers(through, prices["date"], recorded["as_of"], every))


def check_training_samples(
    reg: Any, vid: str, lv: Any, prices: Any, rtol: float | None = None
) -> dict[str, Any] | str:
    """Forecast the rows recorded at training time again from the stored version and compare."""
    from ensemble import scoring

    recorded = recorded_samples(reg, vid)
    if recorded is None:
        logger.warning("%s records no training-time sample forecasts: not checked", vid)
        return "none recorded at training time (not checked)"
    rtol = scoring.SAMPLE_RTOL if rtol is None else float(rtol)
    try:
        now = scoring.sample_forecasts(lv, prices, recorded["as_of"], tickers=recorded["tickers"])
    except Exception as exc:
        raise DeployRefusedError(
            f"{vid}: training-time sample forecasts ({recorded.get('as_of')}) cannot be recomputed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    diff = scoring.compare_samples(recorded, now, rtol=rtol)
    if diff:
        more = f" (+{len(diff) - 5} more)" if len(diff) > 5 else ""
        raise DeployRefusedError(
            f"{vid}: sample forecasts differ from those recorded at training time (rtol {rtol:g}), "
            f"{len(diff)} value(s): {'; '.join(diff[:5])}{more}"
        )
    n = sum(len(v or {}) for v in recorded["frame"].values())
    n += sum(len(c) for m in recorded["members"].values() for c in m.values())
    return {"as_of": recorded["as_of"], "tickers": recorded["tickers"], "values": n, "rtol": rtol}


def recorded_samples(reg: Any, vid: str) -> dict[str, Any] | None:
    """The sample forecasts recorded with ``vid`` at training time (its ``samples`` extra), or None."""
    return reg.load_extra(vid, "samples") if "samples" in reg.manifest(vid)["extras"] else None


def samples_to_check(reg: Any, report: dict[str, Any]) -> dict[str, Any] | str | None:
    """What :func:`deploy` checks through the service for a version :func:`validate` passed: its
    recorded samples, or why they cannot be checked there (a string), or None (none recorded)."""
    recorded = recorded_samples(reg, report["version"])
    if recorded is not None and report["stale_at_samples"]:
        why = (f"not checked: the service would refit {report['stale_at_samples']} Prophet models on "
               f"the samples' date {recorded['as_of']}")  # fmt: skip
        logger.warning("%s: samples %s", report["version"], why)
        return why
    return recorded


def served_view(forecasts: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """``/api/predict/batch``'s forecasts as the ``frame`` of ``scoring.sample_forecasts``: ticker ->
    ``pred_h{h}`` (the ensemble), ``excess_h{h}``, ``lo{L}_h{h}`` / ``hi{L}_h{h}``,
    ``confidence_h{h}``, ``n_models_h{h}`` and ``{member}_h{h}`` (each member in return units)."""
    out: dict[str, dict[str, Any] | None] = {}
    for f in forecasts:
        if "horizons" not in f:
            out[f["ticker"]] = None
            continue
        row: dict[str, Any] = {}
        for h, v in f["horizons"].items():
            row[f"pred_h{h}"], row[f"excess_h{h}"] = v["ensemble"], v["excess"]
            row[f"confidence_h{h}"], row[f"n_models_h{h}"] = v["confidence"], v["n_models"]
            for level, (lo, hi) in v["interval"].items():
                row[f"lo{level}_h{h}"], row[f"hi{level}_h{h}"] = lo, hi
            for m, x in v["members"].items():
                row[f"{m}_h{h}"] = x
        out[f["ticker"]] = row
    return out


def check_served_samples(
    client: Any, version: str, recorded: dict[str, Any], headers: dict[str, str], rtol: float | None = None
) -> dict[str, Any]:
    """Ask the running service for the recorded sample rows, scored by ``version`` (a pinned batch
    request: the A/B split and production are untouched), and compare every value it answers with
    the one recorded at training time (``scoring.compare_samples``; a recorded row or column it does
    not answer is a difference). Raises DeployRefusedError on any difference."""
    from ensemble import scoring

    rtol = scoring.SAMPLE_RTOL if rtol is None else float(rtol)
    r = client.post(
        "/api/predict/batch",
        json={"tickers": recorded["tickers"], "as_of": recorded["as_of"], "version": version},
        headers=headers,
    )
    if r.status_code != 200:
        raise DeployRefusedError(
            f"{version}: the service could not score the samples ({r.status_code}): {r.text}"
        )
    body = r.json()
    if body["version"] != version:
        raise DeployRefusedError(f"{version}: the service answered the samples with {body['version']}")
    now = served_view(body["forecasts"])
    want: dict[str, Any] = {}
    for t in recorded["tickers"]:
        rec = recorded["frame"].get(t)
        keys = set(now.get(t) or {}) | {k for k in rec or {} if k.startswith("pred_h")}
        want[t] = None if rec is None else {k: rec.get(k) for k in keys}
    diff = scoring.compare_samples(
        {"as_of": recorded["as_of"], "tickers": recorded["tickers"], "frame": want},
        {"as_of": body["as_of"], "tickers": recorded["tickers"], "frame": now},
        rtol=rtol,
    )
    if diff:
        more = f" (+{len(diff) - 5} more)" if len(diff) > 5 else ""
        raise DeployRefusedError(
            f"{version}: the service's forecasts of the samples differ from those recorded at training "
            f"time (rtol {rtol:g}), {len(diff)} value(s): {'; '.join(diff[:5])}{more}"
        )
    n = sum(len(v or {}) for v in want.values())
    return {"as_of": body["as_of"], "tickers": recorded["tickers"], "values": n, "rtol": rtol}


def deploy(
    url: str,
    version: str,
    api_key: str,
    timeout_s: float,
    recorded: dict[str, Any] | str | None = None,
    sample_rtol: float | None = None,
    reason: str = "jobs.deploy",
) -> dict[str, Any]:
    """Check ``recorded`` (the training-time samples; a string: why they are not checked) through the
    running service, promote ``version`` and wait until it serves it, healthy; undo on failure."""
    import httpx

    headers = {"X-API-Key": api_key}
    with httpx.Client(base_url=url, timeout=max(60.0, timeout_s)) as c:
        before = c.get("/api/health")
        before.raise_for_status()
        previous = before.json()["version"]
        if recorded is None or isinstance(recorded, str):  # str: why they cannot be checked
            served: Any = recorded or "none recorded at training time (not checked)"
        else:
            served = check_served_samples(c, version, recorded, headers, sample_rtol)
        r = c.post(f"/api/models/{version}/promote", json={"force": True, "reason": reason}, headers=headers)
        if r.status_code != 200:
            raise DeployRefusedError(
                f"the service refused {version} ({r.status_code}): {r.text}; it keeps serving {previous}"
            )
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = c.get("/api/health").json()
            if last["version"] == version and last["healthy"]:
                return {"previous": previous, "health": last, "served_samples": served}
            time.sleep(2.0)
        if previous != version:
            c.post(
                "/api/rollback",
                json={"to": previous, "reason": f"jobs.deploy: {version} not healthy"},
                headers=headers,
            )
        raise DeployRefusedError(
            f"{version} did not become healthy within {timeout_s:.0f} s ({last.get('models')}); rolled back to {previous}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.deploy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", required=True, help="a version id (or an alias)")
    ap.add_argument("--registry", default="artifacts/registry", help="registry root (path or URI)")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    ap.add_argument("--api-key-env", default="ENSEMBLE_API_KEY")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for health")
    ap.add_argument("--validate-only", action="store_true", help="validate, change nothing")
    ap.add_argument(
        "--sample-rtol", type=float, default=None,
        help="relative tolerance of the training-time sample forecasts (default 1e-9)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = validate(args.registry, args.version, args.sample_rtol)
        print(
            f"validated {report['version']}: members {report['members']}, sample {report['sample']}, "
            f"training-time samples {report['training_samples']}",
            flush=True,
        )
        if args.validate_only:
            return 0
        key = os.environ.get(args.api_key_env, "")
        if not key:
            print(f"error: ${args.api_key_env} is not set (the admin API key)", file=sys.stderr)
            return 2
        from ensemble.registry import ModelRegistry

        recorded = samples_to_check(ModelRegistry(args.registry), report)
        out = deploy(args.url, report["version"], key, args.timeout, recorded, args.sample_rtol)
    except DeployRefusedError as exc:
        print(f"refused: {exc}", file=sys.stderr, flush=True)
        return 1
    h = out["health"]
    print(
        f"deployed {h['version']} (was {out['previous']}): {h['status']}, models {sorted(h['models'])}, "
        f"samples through the service {out['served_samples']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    sys.exit(run_main(main))
