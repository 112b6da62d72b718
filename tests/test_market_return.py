"""The equal-weighted market return: one definition (ensemble.features.panel.market_log_return) for the
cross-sectional features (Panel.market_r1) and Prophet's market regressor (market_log_level)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble.config import SyntheticConfig
from ensemble.data.synthetic import generate_market
from ensemble.features.panel import Panel, market_log_return
from ensemble.models.prophet_model import MARKET_LEVEL, market_log_level

D = pd.bdate_range("2024-01-01", periods=5)
NAN = np.nan


def _closes() -> pd.DataFrame:
    """A: clean. B: NaN close on D2, no row on D4. C: a non-positive close on D1, listed from D1."""
    rows = [
        ("A", D[0], 10.0), ("A", D[1], 11.0), ("A", D[2], 11.0), ("A", D[3], 9.9), ("A", D[4], 9.9),
        ("B", D[0], 20.0), ("B", D[1], 20.0), ("B", D[2], NAN), ("B", D[3], 22.0),
        ("C", D[1], 0.0), ("C", D[2], 5.0), ("C", D[3], 5.5), ("C", D[4], 6.05),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["ticker", "date", "close"])


def test_market_return_rule_for_invalid_and_absent_closes() -> None:
    m = market_log_return(_closes())
    assert m.name == "mkt_r1" and list(m.index) == list(D)
    expected = [
        NAN,  # no ticker has a previous close
        np.log1p((0.10 + 0.0) / 2),  # A +10%, B 0%; C's first row is invalid (close 0)
        np.log1p(0.0),  # A 0%; B's NaN close is left out; C's first valid row has no return
        np.log1p((-0.10 + 0.10 + 0.10) / 3),  # B returns against its last valid close (D1)
        np.log1p((0.0 + 0.10) / 2),  # B has no row
    ]
    np.testing.assert_allclose(m.to_numpy(), expected, rtol=0, atol=1e-15)
    shuffled = _closes().sample(frac=1.0, random_state=0)
    pd.testing.assert_series_equal(market_log_return(shuffled), m)
    # with the other price columns present, an invalid one leaves the row out, as the panel does
    ohlcv = _closes().assign(open=1.0, high=1e9, low=1e-9, volume=1.0)
    ohlcv.loc[(ohlcv["ticker"] == "A") & (ohlcv["date"] == D[1]), "volume"] = -1.0
    m2 = market_log_return(ohlcv)
    assert m2[D[1]] == pytest.approx(np.log1p(0.0))  # B only
    assert m2[D[2]] == pytest.approx(np.log1p(0.10))  # A's D2 against its D0 close (bridged); C new
    assert np.isnan(market_log_return(_closes().iloc[:1])).all()


def test_market_return_refuses_a_bad_frame() -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['close'\]"):
        market_log_return(_closes().drop(columns="close"))
    twice = pd.concat([_closes(), _closes().iloc[[2]]])
    with pytest.raises(ValueError, match="ticker 'A' has two rows dated 2024-01-03"):
        market_log_return(twice)


@pytest.mark.parametrize("dirty", [False, True])
def test_features_and_prophet_regressor_share_the_market(dirty: bool) -> None:
    prices = generate_market(SyntheticConfig(n_tickers=12, n_days=90, seed=5)).prices
    if dirty:  # a NaN close, an invalid high, a missing row
        prices = prices.copy()
        prices.loc[prices.index[[7, 200]], "close"] = NAN
        prices.loc[prices.index[[31, 450]], "high"] = -1.0
        prices = prices.drop(prices.index[[95, 600]]).reset_index(drop=True)
    market = market_log_return(prices)
    panel = Panel(prices)
    assert np.array_equal(panel.market_r1(), market.to_numpy(), equal_nan=True)
    assert np.array_equal(panel.dates, market.index.to_numpy())
    level = market_log_level(prices)
    assert np.array_equal(level["date"].to_numpy(), market.index.to_numpy())
    assert np.array_equal(level[MARKET_LEVEL].to_numpy(), np.cumsum(market.fillna(0.0).to_numpy()))
