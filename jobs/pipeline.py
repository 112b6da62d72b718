"""The main job (``make run``): data -> train -> score -> serve -> backtest, then serve until Ctrl-C.

1. Data: generate the synthetic market, validate it, write it to Parquet and load it back through
   the file loader, load it into PostgreSQL (the server named by ``$ENSEMBLE_PG_DSN``, or else a
   throwaway local server when the binaries exist, stopped after this stage) and read one year back,
   then print a short summary with the market's stylised facts.
2. Train: ``jobs.train.run`` (the six models on Ray: Prophet fan-out, Ray Train, Ray Tune; a new
   registry version under ``registry_root``, promoted when it beats production); the per-stage cost
   and the validation Rank IC are printed.
3. Score: ``jobs.score.run`` on the production version as of the market's last date; the top buys
   and sells are printed and written under ``scoring.out_dir``.
4. Serve: the Serve application of ``serving.app.build_app`` (one deployment per member, the
   ensemble, the FastAPI ingress) on ``--host``:``--port`` (127.0.0.1:8000), serving the production
   version; ready-to-paste curl commands are printed once ``/api/health`` says healthy.
5. Backtest: ``jobs.backtest.run`` (the walk-forward backtest of the ``backtest`` settings) while the
   service answers; its table and the report's path are printed.
Then the job serves until Ctrl-C (or SIGTERM), and stops what it started (Serve, the local Ray).

One Ray for every stage: the private local one of ``jobs.train.connect_ray`` (or the cluster of
``ray.address`` / ``$RAY_ADDRESS``). The service's address and key variable come from ``serving``
(``--host`` / ``--port`` override them). Admin routes need ``$ENSEMBLE_API_KEY``; when it is unset the job
makes a key for this session (printed once, never written to a file) before Ray starts, so that the
replicas see it.

``--data FILE`` replaces the synthetic market of stage 1 with a price file of one's own: ingested into
PostgreSQL, every later stage reads it from there (:func:`run_file_stage`).

``python -m jobs.pipeline [--config FILE] [--set key=value ...] [--tickers N --days N] [--out DIR]
[--data FILE [--sectors CSV] [--clean MODE]] [--no-train] [--no-backtest] [--no-serve] [--host H --port P] [--top N]``
(``make run``: ``--config cluster/quick.yaml``; ``make run-full``: ``--config cluster/train.yaml``.)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ensemble.config import ConfigError, Settings, load_settings, parse_overrides, with_overrides
from ensemble.data.files import load_file
from ensemble.data.schema import validate
from ensemble.data.stylized import format_facts, stylized_facts
from ensemble.data.synthetic import generate_market

log = logging.getLogger("jobs.pipeline")


@contextlib.contextmanager
def _postgres(settings: Settings) -> Iterator[tuple[str | None, str]]:
    """Yield (dsn, where): the configured server, else a throwaway local one, else (None, reason)."""
    dsn = settings.postgres.dsn()
    if dsn:
        yield dsn, f"${settings.postgres.dsn_env}"
        return
    from ensemble.data.pgserver import LocalPostgres

    try:
        server = LocalPostgres()
        server.start()
    except RuntimeError as exc:  # no binaries on this machine: the data stage still runs
        yield None, f"skipped ({exc})"
        return
    try:
        yield server.dsn, "throwaway local server"
    finally:
        server.stop()


def run_data_stage(settings: Settings, out_dir: Path) -> pd.DataFrame:
    t0 = time.perf_counter()
    market = generate_market(settings.synthetic, horizons=tuple(settings.horizons))
    validate(market.prices)
    t_gen = time.perf_counter() - t0
    prices_path, oracle_path = market.save(out_dir / "market.parquet")
    t1 = time.perf_counter()
    prices, _ = load_file(prices_path)
    t_load = time.perf_counter() - t1
    if not prices.equals(market.prices):
        raise RuntimeError(f"{prices_path} did not load back identical to the generated market")

    pg_line = ""
    with _postgres(settings) as (dsn, where):
        if dsn is None:
            pg_line = f"PostgreSQL: {where}"
        else:
            from ensemble.data.store import PriceStore

            store = PriceStore(dsn, table=settings.postgres.table)
            store.create_schema()
            t2 = time.perf_counter()
            store.write(prices)
            t_write = time.perf_counter() - t2
            n = store.count()
            last_year = prices["date"].drop_duplicates().nlargest(252).min()
            t3 = time.perf_counter()
            back = store.read(start=last_year)
            t_read = time.perf_counter() - t3
            pg_line = (
                f"PostgreSQL ({where}): table holds {n:,} rows after a write of {t_write:.1f}s ({len(prices) / t_write:,.0f} rows/s); "
                f"read one year ({len(back):,} rows) in {t_read:.2f}s"
            )

    facts = stylized_facts(prices, market.oracle)
    print("\n== data stage ==")
    print(
        f"synthetic market (seed {settings.synthetic.seed}): {prices['ticker'].nunique()} tickers x "
        f"{prices['date'].nunique()} days = {len(prices):,} rows, {prices['sector'].nunique()} sectors, "
        f"{prices['date'].min():%Y-%m-%d} .. {prices['date'].max():%Y-%m-%d}"
    )
    print(
        f"generated + validated in {t_gen:.1f}s; written to {prices_path} (oracle: {oracle_path.name}); "
        f"loaded back in {t_load:.2f}s, identical"
    )
    print(pg_line)
    print(format_facts({"synthetic": facts}))
    return prices


def run_file_stage(
    settings: Settings, path: Path, sectors: Path | None, clean: str | None, stack: contextlib.ExitStack
) -> Settings:
    """Ingest a price file: load it through the file loader (the contract checked; cleaned as
    ``clean``, default ``data.clean``), write it into PostgreSQL (the server of ``$ENSEMBLE_PG_DSN``,
    else a throwaway local one that lives until the job ends, its DSN put in the environment before Ray
    starts so that the replicas read it too), read it back, and return the settings every later stage
    uses: ``data.source: postgres``. Without a server (no DSN, no binaries) the stages read the file."""
    t0 = time.perf_counter()
    mode = clean or settings.data.clean
    prices, report = load_file(path, sectors_path=sectors, clean=mode)  # type: ignore[arg-type]
    t_load = time.perf_counter() - t0
    print("\n== data stage ==")
    print(
        f"{path}: {prices['ticker'].nunique()} tickers x {prices['date'].nunique()} days = {len(prices):,} rows, "
        f"{prices['date'].min():%Y-%m-%d} .. {prices['date'].max():%Y-%m-%d}; loaded and checked in {t_load:.1f}s"
        + (f" (clean={mode}: {report.summary()})" if report is not None else "")
    )
    dsn, where = stack.enter_context(_postgres(settings))
    if dsn is None:
        print(f"PostgreSQL: {where}; every stage reads {path}")
        data = {"source": "files", "path": str(path), "clean": mode}
        data["sectors_path"] = str(sectors) if sectors else None
        return with_overrides(settings, {"data": data})
    from ensemble.data.store import PriceStore

    store = PriceStore(dsn, table=settings.postgres.table)
    store.create_schema()
    before = store.count()
    if before and before != len(prices):  # someone else's rows: the stages would read a mix
        raise ConfigError(
            f"postgres.table {settings.postgres.table} ({where}) already holds {before:,} rows, not this file's "
            f"{len(prices):,}: ingest into an empty table (--set postgres.table=NAME)"
        )
    t1 = time.perf_counter()
    store.write(prices)
    t_write = time.perf_counter() - t1
    back = store.read()
    if len(back) != len(prices):
        raise RuntimeError(
            f"PostgreSQL ({where}) gave back {len(back):,} rows of the {len(prices):,} written"
        )
    os.environ[settings.postgres.dsn_env] = dsn  # before Ray starts: the replicas inherit it
    print(f"PostgreSQL ({where}): {len(prices):,} rows written in {t_write:.1f}s and read back; every stage "
          f"reads table {settings.postgres.table} from here")  # fmt: skip
    if where == "throwaway local server":
        print("note: the throwaway server stops when this job ends; the versions trained here read their "
              "prices from it, so score or serve them later with $ENSEMBLE_PG_DSN set to a server holding them")  # fmt: skip
    return with_overrides(settings, {"data": {"source": "postgres", "path": None, "sectors_path": None}})


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM end the job with KeyboardInterrupt, so that everything it started
    is stopped. Installed after ``ray.init`` (whose handlers would replace these) and also when the
    job was started with SIGINT ignored (a shell's background job)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread (e.g. called from a test)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def start_serving(
    registry_root: str, host: str, port: int, api_key_env: str, timeout_s: float = 600.0
) -> str:
    """Start Serve on ``host``:``port`` with the application of ``serving.app.build_app`` serving the
    registry's production version (admin key from ``$api_key_env``); return its URL once
    ``/api/health`` reports it healthy."""
    import httpx
    from ray import serve

    from serving.app import build_app

    serve.start(http_options={"host": host, "port": port})
    app = build_app({"registry": str(Path(registry_root).resolve()), "api_key_env": api_key_env})
    serve.run(app, name="forecast", blocking=False)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/api/health", timeout=30).json()
            if health.get("healthy"):
                return url
            last = health
        except (httpx.HTTPError, ValueError) as exc:  # still starting
            last = exc
        time.sleep(2)
    raise RuntimeError(f"the service at {url} was not healthy after {timeout_s:.0f} s: {last!r}")


def curl_examples(url: str, ticker: str) -> str:
    return "\n".join(
        [
            f"  curl -s {url}/api/health",
            f"  curl -s -XPOST {url}/api/predict -H 'Content-Type: application/json' -d '{{\"ticker\": \"{ticker}\"}}'",
            f"  curl -s '{url}/api/recommendations?top=5'",
            f"  curl -s {url}/api/models",
            f"  open {url}/docs   # the OpenAPI page",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--config", type=Path, default=None, help="YAML settings (defaults: ensemble/config.py)")
    ap.add_argument("--tickers", type=int, default=None)
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("artifacts/run"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    ap.add_argument("--no-train", action="store_true", help="stop after the data stage")
    ap.add_argument("--no-backtest", action="store_true", help="skip the walk-forward backtest")
    ap.add_argument("--no-serve", action="store_true", help="exit after scoring (and the backtest)")
    ap.add_argument("--host", default=None, help="the service's address (default: serving.host, 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="the service's port (default: serving.port, 8000)")
    ap.add_argument("--top", type=int, default=10, help="buys and sells to print (default 10)")
    ap.add_argument(
        "--data", type=Path, default=None,
        help="a Parquet/CSV price file: ingested into PostgreSQL, then every stage reads it from there "
        "(default: the synthetic market)",
    )  # fmt: skip
    ap.add_argument("--sectors", type=Path, default=None, help="with --data: a ticker,sector CSV")
    ap.add_argument(
        "--clean", choices=["none", "drop", "repair"], default=None, help="with --data (default data.clean)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)

    items = list(args.set)
    if args.tickers is not None:
        items.append(f"synthetic.n_tickers={args.tickers}")
    if args.days is not None:
        items.append(f"synthetic.n_days={args.days}")
    overrides: dict[str, Any] = parse_overrides(items)
    settings = load_settings(args.config, overrides)  # every setting checked before any work
    if args.data is not None and not args.data.is_file():
        ap.error(f"--data {args.data}: no such file")
    with contextlib.ExitStack() as stack:  # a throwaway PostgreSQL of --data lives until the end
        return _run(args, settings, stack)


def _run(args: argparse.Namespace, settings: Settings, stack: contextlib.ExitStack) -> int:
    t0 = time.perf_counter()
    if args.data is not None:
        settings = run_file_stage(settings, args.data, args.sectors, args.clean, stack)
    else:
        run_data_stage(settings, args.out)
    if args.no_train:
        print(f"\npipeline finished in {time.perf_counter() - t0:.1f}s")
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray on loopback
    sc = settings.serving
    made_key = False
    if not args.no_serve and not os.environ.get(sc.api_key_env):
        os.environ[sc.api_key_env] = secrets.token_urlsafe(24)  # before Ray: the replicas inherit it
        made_key = True

    import ray

    from jobs import backtest, score, train

    how = train.connect_ray(settings)
    _stop_on_signals()
    serving = finished = False
    try:
        print("\n== train stage ==", flush=True)
        summary = train.run(settings)
        print(train.format_summary(summary), flush=True)

        print("\n== score stage ==", flush=True)
        scored = score.run(settings, registry_root=settings.registry_root)
        recs = scored.pop("recs")
        print(f"version {scored['version']} as of {scored['as_of']}: {len(recs)} of "
              f"{scored['tickers']['universe']} tickers scored; written to {scored['out']}")  # fmt: skip
        print(score.format_top(recs, args.top), flush=True)

        if not args.no_serve:
            print("\n== serve stage ==", flush=True)
            url = start_serving(
                settings.registry_root, args.host or sc.host, args.port or sc.port, sc.api_key_env
            )
            serving = True
            ticker = str(recs["ticker"].iloc[0]) if len(recs) else "TICKER"
            print(
                f"serving {url} (version {scored['version']}), {time.perf_counter() - t0:.0f} s after the start"
            )
            print(curl_examples(url, ticker), flush=True)
            if made_key:
                print(f"admin key for this session (X-API-Key): {os.environ[sc.api_key_env]}")

        if not args.no_backtest:
            print("\n== backtest stage ==", flush=True)
            bt = backtest.run(settings)
            res = bt["result"]
            print(f"{res['title']}: test {res['test']['start']} .. {res['test']['end']} "
                  f"({res['test']['dates']} dates, {res['test']['tickers']} tickers)")  # fmt: skip
            print(backtest.format_table(res))
            print(f"report: {bt['report']}", flush=True)

        print(f"\npipeline finished in {time.perf_counter() - t0:.1f}s", flush=True)
        finished = True
        if serving:
            print(f"serving {url} until Ctrl-C", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
    finally:
        if serving:
            from ray import serve

            serve.shutdown()
        if how == "local Ray":  # the Ray this job started, never a cluster it joined
            ray.shutdown()
    return 0 if finished else 130  # interrupted before the job finished: the shell's Ctrl-C status


if __name__ == "__main__":
    from ensemble.cli import run_main

    raise SystemExit(run_main(main))
