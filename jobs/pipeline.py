"""The main job on the embedded default (``make run``): data -> train -> (later) backtest, serve, recommend.

1. Data: generate the default synthetic market, validate it, write it to Parquet and load it back
   through the file loader, load it into PostgreSQL (the server named by ``$ENSEMBLE_PG_DSN``, or
   else a throwaway local server when the binaries exist) and read one year back, then print a
   short summary with the market's stylised facts.
2. Train: the training job of ``jobs.train`` on the same settings, on a local Ray (or the cluster
   named by ``ray.address`` / ``$RAY_ADDRESS``): features, the six models (Prophet fan-out, Ray
   Train, Ray Tune), a new registry version under ``registry_root``, promoted when it beats
   production; the per-stage cost and the validation Rank IC are printed.

``python -m jobs.pipeline [--config FILE] [--set key=value ...] [--tickers N --days N] [--out DIR]
[--no-train]``
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ensemble.config import Settings, load_settings, parse_overrides
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--config", type=Path, default=None, help="YAML settings (defaults: ensemble/config.py)")
    ap.add_argument("--tickers", type=int, default=None)
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("artifacts/run"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    ap.add_argument("--no-train", action="store_true", help="stop after the data stage")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from jobs.train import format_summary
    from jobs.train import run as train

    items = list(args.set)
    if args.tickers is not None:
        items.append(f"synthetic.n_tickers={args.tickers}")
    if args.days is not None:
        items.append(f"synthetic.n_days={args.days}")
    overrides: dict[str, Any] = parse_overrides(items)
    settings = load_settings(args.config, overrides)  # every setting checked before any work
    t0 = time.perf_counter()
    run_data_stage(settings, args.out)
    if not args.no_train:
        print("\n== train stage ==", flush=True)
        summary = train(settings)
        print(format_summary(summary), flush=True)
    print(f"\npipeline finished in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    raise SystemExit(run_main(main))
