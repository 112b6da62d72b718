"""ensemble.data.sources.load_prices: every source (synthetic, Parquet/CSV files, PostgreSQL) returns
exactly the rows of ``data.tickers`` within [``data.start``, ``data.end``], then only the first
``training.training_stocks`` of those tickers in sorted order: the right rows and no others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ensemble.config import SyntheticConfig, load_settings
from ensemble.data.sources import load_prices
from ensemble.data.synthetic import SyntheticMarket, generate_market

SYNTH: dict[str, Any] = {"n_tickers": 6, "n_days": 90, "n_sectors": 3, "seed": 5}
KEYS = ["ticker", "date"]


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return generate_market(SyntheticConfig(**SYNTH))


def _selection(market: SyntheticMarket) -> tuple[dict[str, Any], list[str], pd.Timestamp, pd.Timestamp]:
    """A ``data`` section (three known tickers out of order, one unknown, a date range inside the
    data) and what it must select with ``training_stocks=2``: the first two of the three, sorted."""
    tickers = sorted(market.prices["ticker"].unique())
    dates = sorted(market.prices["date"].unique())
    start, end = pd.Timestamp(dates[10]), pd.Timestamp(dates[40])
    data = {
        "tickers": [tickers[4], tickers[1], tickers[3], "NOT_A_TICKER"],
        "start": f"{start:%Y-%m-%d}",
        "end": f"{end:%Y-%m-%d}",
    }
    return data, [tickers[1], tickers[3]], start, end


def _expected(
    market: SyntheticMarket, tickers: list[str], start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    p = market.prices
    keep = p["ticker"].isin(tickers) & (p["date"] >= start) & (p["date"] <= end)
    return p[keep].sort_values(KEYS).reset_index(drop=True)


def _assert_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_values(KEYS).reset_index(drop=True)
    assert list(zip(got["ticker"], got["date"], strict=True)) == list(
        zip(want["ticker"], want["date"], strict=True)
    )
    cols = ["open", "high", "low", "close", "volume"]
    pd.testing.assert_frame_equal(got[cols], want[cols], check_dtype=False, rtol=1e-12)


def test_synthetic_source_filters_prices_and_oracle_alike(market: SyntheticMarket) -> None:
    data, tickers, start, end = _selection(market)
    s = load_settings(overrides={"synthetic": SYNTH, "data": data, "training": {"training_stocks": 2}})
    prices, oracle = load_prices(s)
    want = _expected(market, tickers, start, end)
    _assert_rows(prices, want)
    assert oracle is not None
    o = oracle.sort_values(KEYS).reset_index(drop=True)
    assert list(zip(o["ticker"], o["date"], strict=True)) == list(
        zip(want["ticker"], want["date"], strict=True)
    )


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_file_source_returns_the_selected_tickers_and_dates_only(
    market: SyntheticMarket, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"prices.{kind}"
    if kind == "parquet":
        market.prices.to_parquet(path, index=False)
    else:
        market.prices.to_csv(path, index=False)
    data, tickers, start, end = _selection(market)
    s = load_settings(
        overrides={"data": {**data, "source": "files", "path": str(path)}, "training": {"training_stocks": 2}}
    )
    prices, oracle = load_prices(s)
    assert oracle is None
    _assert_rows(prices, _expected(market, tickers, start, end))

    # without a filter: every ticker and date, cut to the first training_stocks tickers only
    s_all = load_settings(
        overrides={"data": {"source": "files", "path": str(path)}, "training": {"training_stocks": 4}}
    )
    first4 = sorted(market.prices["ticker"].unique())[:4]
    _assert_rows(
        load_prices(s_all)[0],
        _expected(market, first4, market.prices["date"].min(), market.prices["date"].max()),
    )


@pytest.mark.postgres
def test_postgres_source_returns_the_selected_tickers_and_dates_only(
    market: SyntheticMarket, store, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(market.prices)
    monkeypatch.setenv("TEST_SOURCES_PG_DSN", pg_dsn)
    data, tickers, start, end = _selection(market)
    base = {"postgres": {"dsn_env": "TEST_SOURCES_PG_DSN", "table": "prices"}}
    s = load_settings(
        overrides={**base, "data": {**data, "source": "postgres"}, "training": {"training_stocks": 2}}
    )
    prices, oracle = load_prices(s)
    assert oracle is None
    _assert_rows(prices, _expected(market, tickers, start, end))

    # a selection the cut does not reach (training_stocks above the tickers selected): all three kept
    s3 = load_settings(
        overrides={**base, "data": {**data, "source": "postgres"}, "training": {"training_stocks": 10}}
    )
    _assert_rows(load_prices(s3)[0], _expected(market, data["tickers"][:3], start, end))
