"""The Prophet fan-out on Ray (jobs.ray_prophet): same fits as a local ProphetForecaster, failures
reported per ticker and per chunk, never a crashed job."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from ensemble.config import DEFAULT_HORIZONS, SyntheticConfig
from ensemble.data.synthetic import generate_market
from ensemble.models.prophet_model import ProphetForecaster
from jobs.ray_prophet import (
    ChunkResult,
    fit_chunk,
    fit_prophet_fanout,
    plan_chunk_size,
    run_chunks,
    split_chunks,
)

PRED_COLS = [f"pred_h{h}" for h in DEFAULT_HORIZONS]


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    """10 synthetic tickers x 260 days; one with an all-NaN close, one with only 30 rows."""
    prices = generate_market(SyntheticConfig(n_tickers=10, n_days=260, n_sectors=3, seed=3)).prices
    tickers = sorted(prices["ticker"].unique())
    nan_t, short_t = tickers[2], tickers[7]
    prices.loc[prices["ticker"] == nan_t, "close"] = np.nan
    first_dates = prices["date"].drop_duplicates().sort_values().iloc[:30]
    prices = prices[(prices["ticker"] != short_t) | prices["date"].isin(first_dates)].reset_index(drop=True)
    prices.attrs["broken"] = (nan_t, short_t)
    return prices


@pytest.fixture(scope="module")
def local(market: pd.DataFrame) -> ProphetForecaster:
    return ProphetForecaster().fit(market)


def test_plan_chunk_size_gives_about_four_chunks_per_slot() -> None:
    assert plan_chunk_size(500, 2) == 63  # 8 chunks
    assert plan_chunk_size(500, 16, task_cpus=2) == 16  # 8 slots -> 32 chunks
    assert plan_chunk_size(10, 2) == 2
    assert plan_chunk_size(3, 64) == 1
    assert plan_chunk_size(10, 1, task_cpus=4) == 3  # a slot even when a task wants more than a node


def test_split_chunks_keeps_rows_and_only_fit_columns(market: pd.DataFrame) -> None:
    chunks = split_chunks(market, 3)
    assert [len(c.tickers) for c in chunks] == [3, 3, 3, 1]
    assert sum((c.tickers for c in chunks), []) == sorted(market["ticker"].unique())
    for c in chunks:
        assert list(c.frame.columns) == ["date", "ticker", "close"]
        assert sorted(c.frame["ticker"].unique()) == c.tickers
        expected = market[market["ticker"].isin(c.tickers)][["date", "ticker", "close"]].reset_index(
            drop=True
        )
        pd.testing.assert_frame_equal(c.frame, expected, check_dtype=False)


@pytest.mark.ray
def test_fanout_matches_local_fit_and_reports_broken_tickers(
    ray_local: None, market: pd.DataFrame, local: ProphetForecaster
) -> None:
    nan_t, short_t = market.attrs["broken"]
    r = fit_prophet_fanout(market, horizons=DEFAULT_HORIZONS, params={}, chunk_size=None, progress=False)
    assert r.n_chunks == 5  # 2 CPUs -> 8 target chunks -> 2 tickers each
    assert sorted(r.failures) == sorted([nan_t, short_t])
    assert "0 rows" in r.failures[nan_t] and "30 rows" in r.failures[short_t]
    assert r.failures == local.failed_ and r.model.failed_ == r.failures
    assert r.model.tickers_ == local.tickers_ and len(r.model.tickers_) == 8
    assert sum(r.tickers_per_node.values()) == 8 and len(r.tickers_per_node) == 1
    assert r.task_cpu_s > 0 and r.wall_s > 0
    got = r.model.predict(market)
    want = local.predict(market)
    pd.testing.assert_frame_equal(got[["date", "ticker"]], want[["date", "ticker"]])
    assert np.array_equal(
        got[PRED_COLS].to_numpy(), want[PRED_COLS].to_numpy(), equal_nan=True
    )  # bit-identical
    fitted = got["ticker"].isin(r.model.tickers_).to_numpy()
    assert np.isfinite(got.loc[fitted, PRED_COLS].to_numpy()).all()
    assert np.isnan(got.loc[~fitted, PRED_COLS].to_numpy()).all()


@pytest.mark.ray
def test_fanout_passes_params_and_refuses_bad_input(ray_local: None, market: pd.DataFrame) -> None:
    sub = market[market["ticker"].isin(sorted(market["ticker"].unique())[:2])]
    r = fit_prophet_fanout(
        sub, horizons=(5,), params={"n_changepoints": 5}, chunk_size=1, task_cpus=0.5, progress=True
    )
    assert r.n_chunks == 2 and not r.failures
    assert r.model.horizons == (5,) and r.model.resolved_params()["n_changepoints"] == 5
    assert r.task_cpu_s > 0
    with pytest.raises(TypeError, match="unknown parameters"):
        fit_prophet_fanout(sub, horizons=(5,), params={"mcmc": 1}, progress=False)
    with pytest.raises(ValueError, match="lacks column"):
        fit_prophet_fanout(sub.drop(columns="close"), horizons=(5,), params={}, progress=False)


@pytest.mark.ray
def test_fanout_carries_the_extra_regressor_columns(ray_local: None, market: pd.DataFrame) -> None:
    from ensemble.models.prophet_model import MARKET_LEVEL, market_log_level

    ok = [t for t in sorted(market["ticker"].unique()) if t not in market.attrs["broken"]][:3]
    sub = market[market["ticker"].isin(ok)].merge(market_log_level(market), on="date", how="left")
    assert [c.frame.columns[-1] for c in split_chunks(sub, 2, [MARKET_LEVEL])] == [MARKET_LEVEL] * 2
    params = {"regressors": [MARKET_LEVEL]}
    r = fit_prophet_fanout(sub, horizons=(5, 20), params=params, chunk_size=2, progress=False)
    local = ProphetForecaster((5, 20), **params).fit(sub)
    assert not r.failures and r.model.tickers_ == ok and r.model.regressors == [MARKET_LEVEL]
    assert np.array_equal(
        r.model.predict(sub)[["pred_h5", "pred_h20"]].to_numpy(),
        local.predict(sub)[["pred_h5", "pred_h20"]].to_numpy(),
    )
    with pytest.raises(ValueError, match=f"lacks regressor column.*{MARKET_LEVEL}"):
        fit_prophet_fanout(market, horizons=(5,), params=params, progress=False)


@pytest.mark.ray
def test_dead_chunk_is_retried_then_reported_not_raised(
    ray_local: None, market: pd.DataFrame, tmp_path: Path
) -> None:
    """Chunk 0's worker dies once (Ray retries it: it fits); chunk 1's worker always dies and chunk 2
    raises (both reported as failures of their tickers); the other chunks fit."""
    nan_t, short_t = market.attrs["broken"]
    chunks = split_chunks(market, 3)
    crash_once = set(chunks[0].tickers)
    crash_always = set(chunks[1].tickers)
    raises = set(chunks[2].tickers)
    marker = tmp_path / "crashed_once"

    @ray.remote
    def flaky(chunk: pd.DataFrame, horizons, params) -> ChunkResult:
        present = set(chunk["ticker"])
        if present == crash_once and not marker.exists():
            marker.touch()
            os._exit(1)
        if present == crash_always:
            os._exit(1)
        if present == raises:
            raise RuntimeError("boom in the task")
        model, wall = fit_chunk(chunk, horizons, params)
        return ChunkResult(model, wall, ray.get_runtime_context().get_node_id(), os.getpid())

    r = run_chunks(flaky, chunks, horizons=DEFAULT_HORIZONS, params={}, max_retries=1, progress=False)
    assert marker.exists()
    assert r.n_chunks == 4
    dead = crash_always | raises
    assert set(r.failures) == dead | {nan_t, short_t}
    for t in crash_always:
        assert r.failures[t].startswith("chunk task failed:") and "Worker" in r.failures[t]
    for t in raises:
        assert r.failures[t] == "chunk task failed: RuntimeError: boom in the task"
    fitted = sorted(set(market["ticker"]) - dead - {nan_t, short_t})
    assert r.model.tickers_ == fitted and crash_once - {nan_t} <= set(fitted)  # fitted on the retry
    assert sum(r.tickers_per_node.values()) == len(fitted)


@pytest.mark.ray
def test_every_chunk_failing_gives_an_empty_model_not_an_exception(
    ray_local: None, market: pd.DataFrame
) -> None:
    @ray.remote
    def always_raises(chunk: pd.DataFrame, horizons, params) -> ChunkResult:
        raise ValueError("no")

    chunks = split_chunks(market, 5)
    r = run_chunks(always_raises, chunks, horizons=DEFAULT_HORIZONS, params={}, progress=False)
    assert r.model.tickers_ == [] and len(r.failures) == 10 and r.task_cpu_s == 0.0
    assert np.isnan(r.model.predict(market)[PRED_COLS].to_numpy()).all()
