"""One entry point for every data source: the contract table the config asks for.

``load_prices(settings)`` returns (prices, oracle-or-None): the synthetic market (with its exact oracle),
a Parquet/CSV file, or the PostgreSQL ``prices`` table (DSN from the environment variable named in
``settings.postgres.dsn_env``), restricted to ``data.tickers`` / ``data.start`` / ``data.end``, then to
the first ``training.training_stocks`` tickers in sorted order. Every source is validated against the
contract (or cleaned, with a logged report, when ``data.clean`` asks for it).
"""

from __future__ import annotations

import logging

import pandas as pd

from ensemble.config import Settings
from ensemble.data import schema

logger = logging.getLogger(__name__)


def load_prices(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    d = settings.data
    oracle: pd.DataFrame | None = None
    if d.source == "synthetic":
        from ensemble.data.synthetic import generate_market

        market = generate_market(settings.synthetic, horizons=tuple(settings.horizons))
        prices, oracle = market.prices, market.oracle
        if d.tickers is not None:
            keep = prices["ticker"].isin(d.tickers)
            prices, oracle = prices[keep], oracle[oracle["ticker"].isin(d.tickers)]
        if d.start is not None or d.end is not None:
            lo = pd.Timestamp(d.start) if d.start else pd.Timestamp.min
            hi = pd.Timestamp(d.end) if d.end else pd.Timestamp.max
            prices = prices[prices["date"].between(lo, hi)]
            oracle = oracle[oracle["date"].between(lo, hi)]
        prices = schema.validate(prices.reset_index(drop=True))
    elif d.source == "files":
        from ensemble.data.files import load_file

        assert d.path is not None  # the config validator requires it
        prices, report = load_file(
            d.path, sectors_path=d.sectors_path, clean=d.clean, tickers=d.tickers, start=d.start, end=d.end
        )
        if report is not None:
            logger.info("data cleaning (%s): %s", d.clean, report.summary())
    else:
        from ensemble.data.store import PriceStore

        store = PriceStore(settings.postgres.dsn(), table=settings.postgres.table)
        prices = store.read(tickers=d.tickers, start=d.start, end=d.end)
        if d.clean != "none":
            prices, report = schema.clean(prices, mode=d.clean)
            logger.info("data cleaning (%s): %s", d.clean, report.summary())
        else:
            prices = schema.validate(prices)
    if prices.empty:
        raise ValueError(f"data source {d.source!r} returned no rows for the configured tickers/dates")
    n = settings.training.training_stocks
    tickers = sorted(prices["ticker"].unique())
    if len(tickers) > n:
        keep_t = set(tickers[:n])
        prices = prices[prices["ticker"].isin(keep_t)].reset_index(drop=True)
        if oracle is not None:
            oracle = oracle[oracle["ticker"].isin(keep_t)].reset_index(drop=True)
        logger.info(
            "training universe: the first %d of %d tickers (training.training_stocks)", n, len(tickers)
        )
    return prices, oracle
