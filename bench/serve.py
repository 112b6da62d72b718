"""Serving latency and throughput, beside a no-op Serve deployment on the same instance, same run.

    python bench/serve.py                                   # trains a tiny version first (~2 min)
    python bench/serve.py --registry artifacts/registry     # the production version of a registry
    python bench/serve.py --registry artifacts/registry-bench --cold-dates 0   # 500 tickers: no earlier dates

Starts a private local Ray (2 CPUs) and Serve on a free port, deploys the application (all six
members) and a no-op deployment, then prints, for 1 and 16 concurrent clients:
  * ``/api/predict`` warm (a date already forecast: the composition's overhead over cached member
    forecasts) and cold (a new as-of date per request: features, six members, the ensemble),
  * the no-op's latency, and the ratio ensemble p50 / no-op p50 (aim: warm <= 3x);
  * ``/api/predict/batch`` for every ticker of the universe (seconds per call, cold and warm) on the
    latest date and, unless ``--cold-dates 0``, on an earlier one (every Prophet model refitted first);
  * the resident memory of the application's replicas;
  * the cost of the prediction log: warm ``/api/predict`` with logging on and off (switched in place
    on the Ensemble replica between the two, alternated over rounds), p50 ratio on / off.
The machine is shared and noisy: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY = {
    "synthetic": {"n_tickers": 40, "n_days": 400, "seed": 3},
    "features": {"selection_k": 20, "sequence_length": 10},
    "training": {
        "training_stocks": 40,
        "training_days": 240,
        "max_epochs": 1,
        "tuning_trials": 1,
        "valid_fraction": 0.3,
    },  # fmt: skip
    "ray": {"trial_cpus": 0.5, "cpus_per_worker": 0.5, "prophet_task_cpus": 0.5, "max_failures": 0},
    "models": {
        "xgboost": {"n_estimators": 20, "n_jobs": 1},
        "lightgbm": {"n_estimators": 20, "n_jobs": 1},
        "random_forest": {"n_estimators": 10, "max_depth": 4, "n_jobs": 1},
        "lstm": {"hidden": 8, "batch_size": 128, "max_samples_per_epoch": 1000},
        "transformer": {"d_model": 16, "batch_size": 128, "max_samples_per_epoch": 1000},
        "prophet": {"min_history": 100},
    },
}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def load(url: str, make: Any, n: int, clients: int) -> dict[str, float]:
    import httpx

    def worker(i: int) -> list[float]:
        out = []
        with httpx.Client(timeout=600) as c:
            for k in range(i, n, clients):
                method, path, body = make(k)
                t0 = time.perf_counter()
                r = c.request(method, url + path, json=body)
                out.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(worker, range(clients)) for x in part]
    wall = time.perf_counter() - t0
    return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "rps": len(lat) / wall, "n": len(lat)}


def replica_rss_mb() -> float:
    import psutil

    total = 0
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ServeReplica:forecast" in cmd:
            total += p.info["memory_info"].rss
    return total / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", help="a registry with a production version (default: train a tiny one)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument(
        "--cold-dates", type=int, default=None,
        help="new-date requests per client count (default 6 and 16; 0 skips them: on a large universe "
        "each earlier date refits every Prophet model through it)",
    )  # fmt: skip
    ap.add_argument("--log-rounds", type=int, default=3, help="rounds of logging off / on (alternated)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    import ray
    from ray import serve

    from ensemble.data.pgserver import free_port
    from serving.app import build_app

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    try:
        root = args.registry
        if root is None:
            from ensemble.config import load_settings
            from jobs import train

            root = str(Path(tmp.name) / "registry")
            t0 = time.perf_counter()
            train.run(
                load_settings(overrides={**TINY, "registry_root": root}), registry_root=root, progress=False
            )
            print(f"trained a tiny version in {time.perf_counter() - t0:.0f} s", flush=True)

        @serve.deployment(ray_actor_options={"num_cpus": 0.05})
        class Noop:
            async def __call__(self, request: Any) -> dict[str, str]:
                return {"ok": "yes"}

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        t0 = time.perf_counter()
        log_dir = str(Path(tmp.name) / "predlog")
        serve.run(
            build_app({"registry": root, "member_timeout_s": 300, "log": True, "log_dir": log_dir}),
            name="forecast",
            route_prefix="/",
            blocking=False,
        )
        serve.run(Noop.bind(), name="noop", route_prefix="/noop", blocking=False)
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(url + "/api/health", timeout=30).json()["healthy"]:
                    break
            except Exception:
                pass
            time.sleep(2)
        print(f"application healthy in {time.perf_counter() - t0:.0f} s", flush=True)
        from ensemble import scoring
        from ensemble.data.sources import load_prices
        from ensemble.registry import ModelRegistry

        lv = scoring.load_version(ModelRegistry(root), "production", members=["xgboost"])
        prices = load_prices(lv.settings)[0]
        tickers = sorted(prices["ticker"].astype(str).unique())
        dates = [str(d)[:10] for d in sorted(prices["date"].unique())]
        print(f"universe: {len(tickers)} tickers; version {lv.version}", flush=True)

        # the whole universe on the latest date, first cold (nothing forecast yet; the stored Prophet
        # models are fresh there), then warm; this also warms the latest date for the predict rows
        batches = [("latest date, cold", dates[-1]), ("latest date, warm", dates[-1])]
        if args.cold_dates != 0:  # an earlier date: every Prophet model refitted through it first
            batches += [("earlier date, cold", dates[-60]), ("earlier date, warm", dates[-60])]
        for label, day in batches:
            t0 = time.perf_counter()
            r = httpx.post(url + "/api/predict/batch", json={"tickers": tickers, "as_of": day}, timeout=900)
            r.raise_for_status()
            left = r.json().get("left_out") or {}
            print(f"batch of {len(tickers)} tickers ({label}): {time.perf_counter() - t0:.2f} s per call"
                  + (f"; left out: {left}" if left else ""), flush=True)  # fmt: skip
        n = args.requests
        rows = []
        cold_dates, used = dates[-2:-80:-1], 0  # never forecast yet: each request a new date
        for clients in (1, 16):
            noop = load(url, lambda k: ("GET", "/noop", None), n, clients)
            warm = load(
                url, lambda k: ("POST", "/api/predict", {"ticker": tickers[k % len(tickers)]}), n, clients
            )
            m = (6 if clients == 1 else 16) if args.cold_dates is None else args.cold_dates
            cold = None
            if m:
                pool, used = cold_dates[used : used + m], used + m
                cold = load(url, lambda k, p=pool: ("POST", "/api/predict", {"ticker": tickers[0], "as_of": p[k]}), m, clients)  # fmt: skip
            rows.append((clients, noop, warm, cold))
        print(f"\n{'clients':>7} {'what':<22} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>8} {'p50 / no-op':>12}")
        for clients, noop, warm, cold in rows:
            for what, m in (("no-op", noop), ("predict (warm date)", warm), ("predict (new date)", cold)):
                if m is None:
                    continue
                ratio = m["p50"] / noop["p50"]
                print(
                    f"{clients:>7} {what:<22} {m['p50'] * 1e3:>9.1f} {m['p99'] * 1e3:>9.1f} {m['rps']:>8.1f} {ratio:>11.1f}x"
                )
        print(f"resident memory of the application's replicas: {replica_rss_mb():.0f} MiB")

        # the prediction log's cost on the request path: warm predicts, logging on vs off, alternated
        on: list[float] = []
        off: list[float] = []
        # switched in place on the Ensemble replica (its reconfigure: the setting alone, nothing
        # reloaded or restarted); serve.run with other args would redeploy every replica
        ens = serve.get_deployment_handle("Ensemble", app_name="forecast")
        for _ in range(args.log_rounds):
            for log, into in ((False, off), (True, on)):
                ens.reconfigure.remote({"log": log}).result(timeout_s=60)
                m = load(url, lambda k: ("POST", "/api/predict", {"ticker": tickers[k % len(tickers)]}), n, 1)
                into.append(m["p50"])
        from ensemble.predlog import ParquetLogBackend

        logged = ParquetLogBackend(log_dir).read()
        on_p50, off_p50 = sorted(on)[len(on) // 2], sorted(off)[len(off) // 2]
        print(f"prediction log: warm predict p50 {on_p50 * 1e3:.1f} ms logging on, {off_p50 * 1e3:.1f} ms off "
              f"(median of {args.log_rounds} rounds of {n}): on / off {on_p50 / off_p50:.2f}x; "
              f"{len(logged)} rows logged", flush=True)  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
