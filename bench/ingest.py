"""PriceStore.write against ``psql \\copy`` of the same rows, side by side on one throwaway server.

Both load the synthetic market (default 500 tickers x 1,260 days) into an identical empty table
(primary key (ticker, date) + date index). The psql CSV is written beforehand (not timed). Each
side takes the best of ``--repeats`` (tables truncated in between, order alternated). Also timed:
re-ingesting the same frame into the full table (the upsert path, nothing changes) and reading
the last 252 trading days of all tickers back with ``PriceStore.read(start=..., end=...)``.

``.venv/bin/python bench/ingest.py [--tickers 500 --days 1260 --repeats 2]``
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg2
from psycopg2 import sql

from ensemble.config import SyntheticConfig
from ensemble.data.pgserver import LocalPostgres
from ensemble.data.store import PriceStore
from ensemble.data.synthetic import generate_market

T = TypeVar("T")


def _truncate(dsn: str, table: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    finally:
        conn.close()


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--days", type=int, default=1260)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    prices = generate_market(SyntheticConfig(n_tickers=args.tickers, n_days=args.days)).prices
    n = len(prices)
    print(
        f"synthetic market: {n:,} rows x {prices.shape[1]} columns, generated in {time.perf_counter() - t0:.1f}s"
    )

    with LocalPostgres(dbname="bench") as pg, tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        store = PriceStore(pg.dsn, table="bench_store")
        baseline = PriceStore(pg.dsn, table="bench_psql")  # used only for its identical schema and count
        store.create_schema()
        baseline.create_schema()
        csv_path = Path(tmp) / "prices.csv"
        prices.to_csv(csv_path, index=False, header=False, date_format="%Y-%m-%d")
        cols = ",".join(prices.columns)
        psql_cmd = [
            str(pg.tool("psql")), pg.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-c", f"\\copy bench_psql ({cols}) FROM '{csv_path}' CSV",
        ]  # fmt: skip

        def run_store() -> None:
            _truncate(pg.dsn, store.table)
            dt, _ = _timed(lambda: store.write(prices))
            assert store.count() == n, "PriceStore.write lost rows"
            times["store"].append(dt)

        def run_psql() -> None:
            _truncate(pg.dsn, baseline.table)
            dt, _ = _timed(lambda: subprocess.run(psql_cmd, check=True, capture_output=True))
            assert baseline.count() == n, "psql \\copy lost rows"
            times["psql"].append(dt)

        times: dict[str, list[float]] = {"store": [], "psql": [], "upsert": [], "read": []}
        for r in range(args.repeats):
            for side in (run_store, run_psql) if r % 2 == 0 else (run_psql, run_store):
                side()
        # bench_store is full now: re-ingest the same rows (upsert path, 0 rows change)
        for _ in range(args.repeats):
            dt, changed = _timed(lambda: store.write(prices))
            assert changed == 0, f"re-ingest changed {changed} rows"
            times["upsert"].append(dt)
        dates = prices["date"].drop_duplicates().sort_values()
        n_days_read = min(252, len(dates))
        start, end = dates.iloc[-n_days_read], dates.iloc[-1]
        n_read = 0
        for _ in range(args.repeats):
            dt, back = _timed(lambda: store.read(start=start, end=end))
            times["read"].append(dt)
            n_read = len(back)
        assert n_read == int(prices["date"].between(start, end).sum()), "read returned the wrong rows"

    best = {k: min(v) for k, v in times.items()}
    rate = {k: (n_read if k == "read" else n) / best[k] for k in best}
    rows = [
        ("PriceStore.write, empty table", best["store"], rate["store"]),
        ("psql \\copy, empty table (baseline)", best["psql"], rate["psql"]),
        ("PriceStore.write again, upsert (0 changed)", best["upsert"], rate["upsert"]),
        (f"PriceStore.read last {n_days_read} days ({n_read:,} rows)", best["read"], rate["read"]),
    ]
    print(f"\ningest: {n:,} rows ({args.tickers} tickers x {args.days} days), best of {args.repeats}")
    print(f"{'step':<48}{'seconds':>9}{'rows/s':>12}")
    print("-" * 69)
    for name, secs, rps in rows:
        print(f"{name:<48}{secs:>9.2f}{rps:>12,.0f}")
    print("-" * 69)
    ratio = rate["store"] / rate["psql"]
    print(
        f"{'ratio store/psql (rows/s), aim >= 0.5':<48}{ratio:>9.2f}  {'OK' if ratio >= 0.5 else 'BELOW AIM'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
