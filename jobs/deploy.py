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
Then the deployment, through the service's admin API (``$ENSEMBLE_API_KEY``): ``POST
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
    return report


def check_training_samples(
    reg: Any, vid: str, lv: Any, prices: Any, rtol: float | None = None
) -> dict[str, Any] | str:
    """Forecast the rows recorded at training time again from the stored version and compare."""
    from ensemble import scoring

    man = reg.manifest(vid)
    if "samples" not in man["extras"]:
        logger.warning("%s records no training-time sample forecasts: not checked", vid)
        return "none recorded at training time (not checked)"
    recorded = reg.load_extra(vid, "samples")
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


def deploy(url: str, version: str, api_key: str, timeout_s: float) -> dict[str, Any]:
    """Promote ``version`` on the running service and wait until it serves it, healthy; undo on failure."""
    import httpx

    headers = {"X-API-Key": api_key}
    with httpx.Client(base_url=url, timeout=max(60.0, timeout_s)) as c:
        before = c.get("/api/health")
        before.raise_for_status()
        previous = before.json()["version"]
        r = c.post(
            f"/api/models/{version}/promote", json={"force": True, "reason": "jobs.deploy"}, headers=headers
        )
        if r.status_code != 200:
            raise DeployRefusedError(
                f"the service refused {version} ({r.status_code}): {r.text}; it keeps serving {previous}"
            )
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = c.get("/api/health").json()
            if last["version"] == version and last["healthy"]:
                return {"previous": previous, "health": last}
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
        out = deploy(args.url, report["version"], key, args.timeout)
    except DeployRefusedError as exc:
        print(f"refused: {exc}", file=sys.stderr, flush=True)
        return 1
    h = out["health"]
    print(
        f"deployed {h['version']} (was {out['previous']}): {h['status']}, models {sorted(h['models'])}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    sys.exit(run_main(main))
