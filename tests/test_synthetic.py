from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble.config import SyntheticConfig
from ensemble.data.schema import FUNDAMENTAL_COLUMNS, REQUIRED_COLUMNS, validate
from ensemble.data.stylized import forward_log_return, stylized_facts
from ensemble.data.synthetic import generate_market, main


@pytest.fixture(scope="module")
def market():
    return generate_market(SyntheticConfig(n_tickers=200, n_days=800, seed=11))


def test_same_seed_gives_an_identical_frame_and_another_seed_does_not() -> None:
    cfg = SyntheticConfig(n_tickers=15, n_days=120, seed=3)
    a, b = generate_market(cfg), generate_market(cfg)
    pd.testing.assert_frame_equal(a.prices, b.prices)
    pd.testing.assert_frame_equal(a.oracle, b.oracle)
    c = generate_market(SyntheticConfig(n_tickers=15, n_days=120, seed=4))
    assert not np.allclose(a.prices["close"].to_numpy(), c.prices["close"].to_numpy())


def test_frame_follows_the_contract(market) -> None:
    p = market.prices
    validate(p)
    assert len(p) == 200 * 800
    assert set(REQUIRED_COLUMNS) | set(FUNDAMENTAL_COLUMNS) | {"sector", "sentiment"} <= set(p.columns)
    assert p["ticker"].nunique() == 200
    assert p["sector"].nunique() == 11
    assert p.groupby("ticker")["sector"].nunique().max() == 1
    assert not any(c.startswith("oracle") for c in p.columns), "the oracle must never sit in the price table"
    assert list(market.oracle[["date", "ticker"]].itertuples(index=False)) == list(
        p[["date", "ticker"]].itertuples(index=False)
    )


def test_fundamentals_evolve_slowly_and_point_in_time(market) -> None:
    p = market.prices
    # EPS implied by price / pe changes only on (quarterly) announcement days
    eps = p["close"] / p["pe"]
    changed = eps.groupby(p["ticker"]).pct_change().abs() > 1e-9
    per_ticker = changed.groupby(p["ticker"]).sum()
    assert per_ticker.between(800 // 63 - 1, 800 // 63 + 1).all()
    assert (p["market_cap"] > 0).all() and (p["pb"] > 0).all() and (p["dividend_yield"] >= 0).all()


def test_stylised_facts_look_like_a_real_market(market) -> None:
    f = stylized_facts(market.prices, market.oracle)
    assert f["kurtosis_median"] > 3.0, "daily returns must be fat-tailed"
    assert f["abs_ret_acf_min_1_10"] > 0.03, "volatility must cluster over lags 1-10"
    assert f["corr_within_sector"] > f["corr_across_sector"] + 0.05
    assert 0.05 <= f["oracle_rank_ic_h5"] <= 0.15
    assert f["oracle_rank_ic_h20"] > 0.05 and f["oracle_rank_ic_h60"] > 0.03
    assert abs(f["ret_acf_1"]) < 0.05


@pytest.mark.parametrize("h", [5, 20])
def test_oracle_is_the_conditional_expectation(market, h: int) -> None:
    """Realised forward returns regressed on the oracle (both demeaned per date) give slope ~1.

    A look-ahead oracle (one that saw tomorrow's shock) or a mis-scaled one fails this.
    """
    df = market.prices[["date", "ticker", "close"]].merge(market.oracle, on=["date", "ticker"])
    df["y"] = forward_log_return(df, h)
    d = df.dropna(subset=["y", f"oracle_h{h}"])
    x = d[f"oracle_h{h}"] - d.groupby("date")[f"oracle_h{h}"].transform("mean")
    y = d["y"] - d.groupby("date")["y"].transform("mean")
    slope = float((x * y).sum() / (x * x).sum())
    assert 0.8 < slope < 1.25
    assert market.oracle.groupby("ticker")[f"oracle_h{h}"].apply(lambda s: s.tail(h).isna().all()).all()


def test_no_signal_means_no_oracle_skill() -> None:
    m = generate_market(SyntheticConfig(n_tickers=100, n_days=400, seed=5, signal_strength=0.0))
    f = stylized_facts(m.prices, m.oracle, horizons=(5,))
    assert abs(f["oracle_rank_ic_h5"]) < 0.03


def test_cli_writes_prices_and_oracle(tmp_path, capsys) -> None:
    out = tmp_path / "m.parquet"
    assert main(["--tickers", "12", "--days", "100", "--seed", "2", "--out", str(out)]) == 0
    prices = pd.read_parquet(out)
    oracle = pd.read_parquet(tmp_path / "m.oracle.parquet")
    assert len(prices) == len(oracle) == 1200
    assert "valid" in capsys.readouterr().out
