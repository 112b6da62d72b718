"""Data-quality report for the real S&P 500 sample (``../shared/data``, see its SOURCE.md).

Run ``python -m ensemble.data.sp500_report [--data-dir DIR]``. It loads the sample with its sectors
strictly (and says which contract rule fails first), then in repair mode, and prints the cleaning
report and an overview. The directory defaults to ``$ENSEMBLE_SAMPLE_DATA`` or ``../shared/data``
relative to the repository root.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from ensemble.data import schema
from ensemble.data.files import load_file

logger = logging.getLogger(__name__)

PRICES_FILE = "sp500_daily.parquet"
SECTORS_FILE = "sp500_sectors.csv"
ENV_VAR = "ENSEMBLE_SAMPLE_DATA"


def default_data_dir() -> Path:
    """``$ENSEMBLE_SAMPLE_DATA`` if set, else ``<repo root>/../shared/data``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def overview(df: pd.DataFrame) -> str:
    """Rows, tickers, date range, rows per ticker and sectors of a contract table."""
    per = df.groupby("ticker", sort=True).size()
    lines = [
        f"rows {len(df):,}, tickers {df['ticker'].nunique()}, "
        f"dates {df['date'].min():%Y-%m-%d} .. {df['date'].max():%Y-%m-%d} "
        f"({df['date'].nunique():,} distinct trading days)",
        f"rows per ticker: min {per.min()} ({per.idxmin()}), median {per.median():.0f}, max {per.max()}",
    ]
    if "sector" in df.columns:
        sectors = df.drop_duplicates("ticker")["sector"]
        lines.append(f"sectors: {sectors.nunique()} (tickers without a sector: {int(sectors.isna().sum())})")
    return "\n".join(lines)


def findings_detail(df: pd.DataFrame, report: schema.CleaningReport) -> str:
    """Every bad print and jump on a line; tickers with missing days or short histories with counts."""
    f = report.findings_frame()
    per = df.groupby("ticker", sort=True)["date"].agg(["size", "min", "max"])
    calendar = pd.DatetimeIndex(df["date"].unique()).sort_values()
    span = calendar.searchsorted(per["max"]) - calendar.searchsorted(per["min"]) + 1
    lines: list[str] = []
    for kind in ("suspect_bad_print", "large_jump"):
        g = f[f["kind"] == kind]
        if len(g):
            lines.append(f"{kind}:")
            lines += [
                f"  {t:6s} {d:%Y-%m-%d}  {why}"
                for t, d, why in g[["ticker", "date", "detail"]].itertuples(index=False)
            ]
    gap_tickers = f.loc[f["kind"] == "missing_days", "ticker"].unique()
    if len(gap_tickers):
        missing = (span - per["size"]).loc[gap_tickers].sort_values(ascending=False, kind="mergesort")
        lines.append(
            f"missing_days ({len(missing)} tickers; trading days missing inside the ticker's range): "
            + ", ".join(f"{t} {n}" for t, n in missing.items())
        )
    short = per["size"].loc[f.loc[f["kind"] == "short_history", "ticker"].unique()]
    if len(short):
        lines.append(
            f"short_history ({len(short)} tickers; rows): " + ", ".join(f"{t} {n}" for t, n in short.items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ensemble.data.sp500_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help=f"directory with {PRICES_FILE} and {SECTORS_FILE}"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data_dir: Path = args.data_dir if args.data_dir is not None else default_data_dir()
    prices, sectors = data_dir / PRICES_FILE, data_dir / SECTORS_FILE
    for p in (prices, sectors):
        if not p.is_file():
            print(f"sample data not found: {p} (pass --data-dir or set {ENV_VAR})", file=sys.stderr)
            return 2

    print(f"== {prices} (+ {sectors.name})")
    print("-- strict load (clean='none')")
    try:
        load_file(prices, sectors_path=sectors)
        print("passed every contract rule")
    except schema.DataValidationError as exc:
        print(f"first rule broken: {exc.rule}\n  {exc}")

    print("-- load with clean='repair'")
    df, report = load_file(prices, sectors_path=sectors, clean="repair")
    assert report is not None
    print(report.summary())
    print("-- findings in detail")
    print(findings_detail(df, report))
    print("-- overview (after repair)")
    print(overview(df))
    return 0


if __name__ == "__main__":
    # The command line's one way to fail (``error: ...``, exit 2 / 3); only the script imports it,
    # never the library.
    from ensemble.cli import run_main

    raise SystemExit(run_main(main))
