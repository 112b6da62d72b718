"""Load a price file (or the synthetic market) into the PostgreSQL ``prices`` table.

``python -m jobs.ingest SOURCE [--dsn DSN] [--sectors CSV] [--clean none|drop|repair] [--table prices]``

SOURCE is a .parquet/.csv path or the word ``synthetic`` (then ``--tickers N --days N --seed N``).
The DSN defaults to ``$ENSEMBLE_PG_DSN`` (prefer it to ``--dsn``: a password on the command line is
visible to other users). The write is an idempotent upsert: running the same file twice changes
nothing. Exit codes: 0 ok, 1 source/connection problem, 2 usage, 3 the data breaks the contract.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import pandas as pd
from tqdm import tqdm

from ensemble.cli import run_main, user_error
from ensemble.config import PostgresConfig, SyntheticConfig
from ensemble.data.store import PriceStore, check_table_name

log = logging.getLogger("jobs.ingest")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    pg = PostgresConfig()
    syn = SyntheticConfig()
    p = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a .parquet or .csv file, or 'synthetic'")
    p.add_argument("--dsn", default=None, help=f"libpq DSN (default: ${pg.dsn_env})")
    p.add_argument("--table", default=pg.table, help="target table (default: %(default)s)")
    p.add_argument("--sectors", default=None, help="optional ticker->sector CSV joined onto a file")
    p.add_argument(
        "--clean", choices=["none", "drop", "repair"], default="none", help="cleaning mode for files"
    )
    p.add_argument("--tickers", type=int, default=syn.n_tickers, help="synthetic: number of tickers")
    p.add_argument("--days", type=int, default=syn.n_days, help="synthetic: number of trading days")
    p.add_argument("--seed", type=int, default=syn.seed, help="synthetic: seed")
    p.add_argument(
        "--chunk-rows", type=int, default=100_000, help="rows per COPY chunk (default: %(default)s)"
    )
    args = p.parse_args(argv)
    args.dsn = args.dsn or pg.dsn()
    if not args.dsn:
        p.error(f"no PostgreSQL DSN: set ${pg.dsn_env} or pass --dsn")
    try:
        args.table = check_table_name(args.table)
    except ValueError as exc:
        p.error(str(exc))
    if args.source == "synthetic" and (args.sectors or args.clean != "none"):
        p.error("--sectors and --clean apply to files, not to the synthetic market")
    return args


def _load(args: argparse.Namespace) -> pd.DataFrame:
    if args.source == "synthetic":
        from ensemble.data.synthetic import generate_market

        cfg = SyntheticConfig(n_tickers=args.tickers, n_days=args.days, seed=args.seed)
        return generate_market(cfg).prices
    from ensemble.data.files import load_file

    df, report = load_file(args.source, sectors_path=args.sectors, clean=args.clean)
    if report is not None:
        print(report.summary())
    return df


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parse(argv)
    try:
        t0 = time.perf_counter()
        df = _load(args)
        t_load = time.perf_counter() - t0
        print(
            f"loaded {len(df):,} rows, {df['ticker'].nunique():,} tickers from {args.source} in {t_load:.1f}s"
        )
        store = PriceStore(args.dsn, table=args.table, chunk_rows=args.chunk_rows)
        t1 = time.perf_counter()
        with tqdm(
            total=len(df), unit="rows", unit_scale=True, desc=f"COPY -> {args.table}", file=sys.stderr
        ) as bar:
            changed = store.write(df, progress=bar.update)
        secs = time.perf_counter() - t1
        total = store.count()
    except (OSError, ValueError, LookupError) as exc:  # missing file, no connection, no table
        if user_error(exc) is not None and not isinstance(exc, OSError):
            raise  # a refused setting (2) or data that break the contract / a bad format (3): run_main
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{len(df):,} rows written to {args.table} in {secs:.2f}s ({len(df) / secs:,.0f} rows/s); "
        f"{changed:,} inserted or changed; table holds {total:,} rows"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
