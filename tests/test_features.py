"""Feature pipeline: point-in-time correctness, split invariance, targets, catalogue, preprocessing."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.config import SyntheticConfig
from ensemble.data.synthetic import generate_market
from ensemble.features import Preprocessor, build_features, catalogue, feature_columns
from ensemble.features.__main__ import main as cli_main
from ensemble.features.catalog import FAMILIES, OHLCV
from ensemble.features.targets import forward_log_returns

N_TICKERS, N_DAYS, CUT, SPLIT = 30, 320, 280, 150
PRICE_COLS = ["open", "high", "low", "close"]
SP500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sp500_daily.parquet"

# The catalogue's size per family, counted once by hand from each family's ``specs`` in
# ensemble/features/<family>.py (a change there must show here):
# returns.specs: ret_ x RET_WINDOWS 9, mom_ x MOMENTUM 3, vol_ x VOL_WINDOWS 5, vol_ratio_ 2, downvol/skew/kurt
#   3, dd_ and du_ x EXTREME_WINDOWS 3 + 3, gap/intraday 4, range/parkinson/garman_klass 5, clv 2,
#   vlm_ratio/vlm_z 4, dvol/amihud 2, max_ret/min_ret/up_frac 3, sharpe 2 = 50
# technical._spec_table: rsi 3, macd 4, ppo 1, adx 2, adxr/plus_di/minus_di 3, stoch/stochf/stochrsi 4, willr 2,
#   cci 2, roc 3, cmo 1, mfi 2, ultosc/trix 2, aroonosc 2, bop 1, dist_sma 5, dist_ema 3, sma_cross 2,
#   dist_kama 1, lr_slope 2, trend_corr 2, dist_sar 1, natr 3, bb_pos 2, bb_width 1, obv_chg 3,
#   ad_chg/adosc 2, cdl_ 4 = 63
# cross_section.specs without a sector column: mkt_ret 3, mkt_vol 2, mkt_vol_ratio/xs_disp 2,
#   beta/corr/idio_vol 4, mrel_ret x REL_RET 4, resid_ret 2, mrel_mom 1, rank_ x RANKED 8, z_ x ZSCORED 4,
#   mrel_ret_5 hivol/lovol/x_vlm 3 = 33; with one: + srel_ret 4, srel_mom 1, srel_ret_5 hivol/lovol 2,
#   sector_ret 3, beta_sec/corr_sec 2, rank_in_sector 2 = 14
# fundamental.specs: pe 10, pb 4, market_cap 3, dividend_yield 4 = 21
# sentiment.specs: sent 1, sent_ema 3, sent_chg 3, dev/z 2, innov/surprise 2, innov_ema 2, surprise_sq 1,
#   innov_x_regime 1, rank_sent/rank_sent_innov 2 = 17
# calendar.specs: its table of 10
OHLCV_COUNTS = {"returns": 50, "technical": 63, "cross_section": 33, "calendar": 10}
SECTOR_COUNTS = {"cross_section": 14}
FULL_COUNTS = {**OHLCV_COUNTS, "cross_section": 33 + 14, "fundamental": 21, "sentiment": 17}


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return generate_market(SyntheticConfig(n_tickers=N_TICKERS, n_days=N_DAYS, seed=5)).prices


@pytest.fixture(scope="module")
def dates(prices: pd.DataFrame) -> np.ndarray:
    return np.sort(prices["date"].unique())


@pytest.fixture(scope="module")
def feats(prices: pd.DataFrame) -> pd.DataFrame:
    return build_features(prices)


def _bits(frame: pd.DataFrame, cols: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy()[rows].view(np.uint32) for c in cols}


def _differing(a: pd.DataFrame, b: pd.DataFrame, rows: np.ndarray) -> list[str]:
    """Feature columns whose values on ``rows`` are not bit-identical (NaN == NaN)."""
    cols = feature_columns(a)
    assert cols == feature_columns(b)
    assert a[cols].dtypes.eq(np.float32).all()
    ba, bb = _bits(a, cols, rows), _bits(b, cols, rows)
    return [c for c in cols if not np.array_equal(ba[c], bb[c])]


def _poison(prices: pd.DataFrame, cutoff: np.datetime64) -> pd.DataFrame:
    """Every input after the cutoff multiplied by 10, and NaNs scattered over those rows."""
    q = prices.copy()
    late = (q["date"] > cutoff).to_numpy()
    for c in [*PRICE_COLS, "volume", "pe", "pb", "market_cap", "dividend_yield", "sentiment"]:
        q.loc[late, c] = q.loc[late, c] * 10.0
    rng = np.random.default_rng(0)
    rows = np.flatnonzero(late)
    for c in ["open", "high", "close", "volume", "pe", "pb", "sentiment"]:
        q.loc[rng.choice(rows, 60, replace=False), c] = np.nan
    q.loc[rows[::7], "low"] = np.nan
    return q


# ------------------------------------------------------------------ point in time
def test_future_poisoning_changes_no_feature_at_or_before_the_cutoff(prices, dates, feats) -> None:
    cutoff = dates[CUT]
    poisoned = build_features(_poison(prices, cutoff))
    early = (feats["date"] <= cutoff).to_numpy()
    assert early.sum() == N_TICKERS * (CUT + 1)
    assert _differing(feats, poisoned, early) == []
    # the poison did reach the later rows, and the long-lookback features are populated before it
    assert _differing(feats, poisoned, ~early) != []
    assert feats.loc[early, feature_columns(feats)].notna().any().all()


def test_a_ticker_listed_after_the_cutoff_changes_nothing_before_it(prices, dates, feats) -> None:
    cutoff = dates[CUT]
    donor = prices[(prices["ticker"] == prices["ticker"].iloc[0]) & (prices["date"] > cutoff)]
    newcomer = donor.assign(ticker="AAA000", sector="Newly Listed")  # sorts first, a new sector too
    grown = pd.concat([newcomer, prices], ignore_index=True)
    out = build_features(grown)
    old = (out["ticker"] != "AAA000").to_numpy()
    early = (feats["date"] <= cutoff).to_numpy()
    assert _differing(feats, out.loc[old].reset_index(drop=True), early) == []


def test_preprocessor_fitted_before_the_cutoff_ignores_poisoned_rows(prices, dates, feats) -> None:
    cutoff = dates[CUT]
    poisoned = build_features(_poison(prices, cutoff))
    a = Preprocessor(k=40).fit(feats, cutoff)
    b = Preprocessor(k=40).fit(poisoned, cutoff)
    assert a.selected_ == b.selected_
    pd.testing.assert_series_equal(a.medians_, b.medians_, check_exact=True)
    np.testing.assert_array_equal(a.scaler_.center_, b.scaler_.center_)
    np.testing.assert_array_equal(a.scaler_.scale_, b.scaler_.scale_)
    pd.testing.assert_frame_equal(a.report(), b.report(), check_exact=True)
    early = (feats["date"] <= cutoff).to_numpy()
    ta, tb = a.transform(feats), b.transform(poisoned)
    pd.testing.assert_frame_equal(ta.loc[early, a.selected_], tb.loc[early, b.selected_], check_exact=True)


def test_a_split_changes_nothing_before_its_date_and_shows_as_a_return_on_it(prices, dates, feats) -> None:
    ticker, day = prices["ticker"].unique()[3], dates[SPLIT]
    is_t = (prices["ticker"] == ticker).to_numpy()
    after = is_t & (prices["date"] >= day).to_numpy()
    raw = prices.copy()  # 2:1 split on `day`, not adjusted: prices halve, volume doubles from then on
    raw.loc[after, PRICE_COLS] = raw.loc[after, PRICE_COLS] / 2.0
    raw.loc[after, "volume"] = raw.loc[after, "volume"] * 2.0
    adjusted = prices.copy()  # the same split, history adjusted: the whole series is rescaled
    adjusted.loc[is_t, PRICE_COLS] = adjusted.loc[is_t, PRICE_COLS] / 2.0
    adjusted.loc[is_t, "volume"] = adjusted.loc[is_t, "volume"] * 2.0
    f_raw, f_adj = build_features(raw), build_features(adjusted)
    before = (feats["date"] < day).to_numpy()
    assert _differing(feats, f_raw, before) == []
    # scale-free: the adjusted history gives the same features as the original, on every date
    assert _differing(feats, f_adj, np.ones(len(feats), dtype=bool)) == []
    on_day = is_t & (feats["date"] == day).to_numpy()
    jump = f_raw.loc[on_day, "ret_1"].iloc[0] - feats.loc[on_day, "ret_1"].iloc[0]
    assert jump == pytest.approx(np.log(0.5), abs=1e-6)


def test_oracle_columns_are_never_read(prices, feats) -> None:
    with_oracle = prices.assign(oracle_h5=np.arange(len(prices), dtype=float))
    out = build_features(with_oracle)
    assert not any(c.startswith("oracle") for c in out.columns)
    pd.testing.assert_frame_equal(out, feats, check_exact=True)


@pytest.mark.parametrize("fork", [True, False])
def test_n_jobs_does_not_change_the_result(prices, feats, fork, monkeypatch) -> None:
    if not fork:  # the fallback where fork is unavailable: TA-Lib chunks in spawned workers
        monkeypatch.setattr("ensemble.features.pipeline._can_fork", lambda: False)
    pd.testing.assert_frame_equal(build_features(prices, n_jobs=2), feats, check_exact=True)


def test_a_bad_print_gives_nan_features_on_its_row_only(prices, feats) -> None:
    bad = prices.copy()
    t0 = bad["ticker"].iloc[0]
    row = int(np.flatnonzero((bad["ticker"] == t0).to_numpy())[100])
    bad.loc[row, "open"] = np.nan
    out = build_features(bad)
    cols = feature_columns(out)
    assert out.loc[row, cols].isna().all()
    # later TA-Lib values stay finite (a NaN inside the series would otherwise corrupt them)
    later = out.loc[row + 60 : row + 80, ["rsi_14", "adx_14", "dist_ema_50", "macd_12_26"]]
    assert later.notna().all().all()


# ------------------------------------------------------------------ targets
def test_targets_are_forward_log_returns_with_nan_where_unknown() -> None:
    p = generate_market(SyntheticConfig(n_tickers=4, n_days=100, seed=2)).prices
    p = p.drop(index=p.index[(p["ticker"] == p["ticker"].iloc[0]).to_numpy()][:30]).reset_index(drop=True)
    out = build_features(p, horizons=(5, 20, 60))
    for h in (5, 20, 60):
        c = out[f"target_h{h}"].to_numpy()
        expect = np.log((p["close"].groupby(p["ticker"]).shift(-h) / p["close"]).to_numpy())
        np.testing.assert_array_equal(c, expect)
        tail = out.groupby("ticker").tail(h).index
        assert out.loc[tail, f"target_h{h}"].isna().all()
        assert out.drop(index=tail)[f"target_h{h}"].notna().all()
        assert c.dtype == np.float64
    assert forward_log_returns(p, [3]).columns.tolist() == ["target_h3"]


# ------------------------------------------------------------------ catalogue and families
def test_catalogue_counts_and_frame_columns_match(prices, feats) -> None:
    def counts(specs: list) -> dict[str, int]:
        return dict(Counter(s.family for s in specs))

    full = catalogue(prices.columns)
    assert set(FULL_COUNTS) == set(FAMILIES)
    assert counts(full) == FULL_COUNTS and len(full) == sum(FULL_COUNTS.values()) == 208
    assert counts(catalogue()) == FULL_COUNTS  # the synthetic market holds the whole contract
    assert counts(catalogue(["date", "ticker", *OHLCV])) == OHLCV_COUNTS
    with_sector = catalogue(["date", "ticker", *OHLCV, "sector"])
    assert counts(with_sector) == {**OHLCV_COUNTS, "cross_section": 33 + SECTOR_COUNTS["cross_section"]}
    assert counts(catalogue(["date", "ticker", *OHLCV, "pe"]))["fundamental"] == 10
    assert feature_columns(feats) == [s.name for s in full]
    assert [c for c in feats.columns if c.startswith("target_")] == ["target_h5", "target_h20", "target_h60"]
    assert list(feats.columns[:2]) == ["date", "ticker"]
    assert all(s.lookback >= 1 and s.inputs and s.description for s in full)


def test_absent_families_are_skipped_with_one_log_line(prices, caplog) -> None:
    small = prices[prices["ticker"].isin(prices["ticker"].unique()[:6])][["date", "ticker", *OHLCV]]
    with caplog.at_level(logging.INFO, logger="ensemble.features"):
        out = build_features(small)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert sum("'fundamental' skipped" in m for m in skipped) == 1
    assert sum("'sentiment' skipped" in m for m in skipped) == 1
    assert sum("sector-relative" in m for m in skipped) == 1
    assert feature_columns(out) == [s.name for s in catalogue(small.columns)]
    partial = prices[["date", "ticker", *OHLCV, "pe"]]
    assert "ey" in build_features(partial.head(600)).columns


def test_cli_lists_the_catalogue(capsys) -> None:
    assert cli_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "rsi_14" in out and "technical" in out
    assert f"{len(catalogue())} features" in out


@pytest.mark.skipif(not SP500.exists(), reason="S&P 500 sample not available")
def test_real_sample_builds_with_ohlcv_families_only() -> None:
    p = pd.read_parquet(SP500, filters=[("ticker", "in", ["AAPL", "DHR", "O", "APTV", "LNT", "XOM"])])
    out = build_features(p)
    cols = feature_columns(out)
    assert cols == [s.name for s in catalogue(p.columns)] and len(cols) == sum(OHLCV_COUNTS.values())
    dhr_nan_open = (out["ticker"] == "DHR") & (out["date"] == "2016-01-12")
    assert out.loc[dhr_nan_open, cols].isna().all(axis=1).all()
    assert out.loc[out["ticker"] == "AAPL", "rsi_14"].iloc[-100:].notna().all()


# ------------------------------------------------------------------ preprocessing
def test_preprocessor_learns_from_training_rows_only(feats, dates) -> None:
    cutoff = dates[200]
    frame = feats.copy()
    train = (frame["date"] <= cutoff).to_numpy()
    frame.loc[~train, "ret_5"] = 1000.0  # whatever happens later must not move the fitted state
    train_median = float(np.nanmedian(frame.loc[train, "ret_5"].to_numpy(dtype=np.float64)))
    pre = Preprocessor(k=len(feature_columns(frame)), min_coverage=0.0).fit(frame, cutoff)
    assert "ret_5" in pre.selected_
    j = pre.selected_.index("ret_5")
    assert pre.medians_["ret_5"] == train_median == pre.scaler_.center_[j]
    assert pre.train_end_ == pd.Timestamp(cutoff)
    # labels after the cutoff are purged: the last 5 rows of each ticker before it carry no label
    assert pre.n_label_rows_ == N_TICKERS * (201 - 5)


def test_preprocessor_selects_k_reports_scores_and_transforms(feats, dates) -> None:
    cutoff = dates[220]
    pre = Preprocessor(k=25).fit(feats, cutoff)
    rep = pre.report()
    assert len(pre.selected_) == 25 and rep["selected"].sum() == 25
    assert set(rep.index) == set(feature_columns(feats))
    assert rep["rank"].tolist() == list(range(1, len(rep) + 1))
    eligible = rep[(rep["coverage"] >= 0.5) & rep["score"].notna()]
    assert eligible.index.tolist() == rep.index[: len(eligible)].tolist()  # eligible first, best first
    assert (np.diff(eligible["score"].to_numpy()) <= 0).all()
    np.testing.assert_allclose(rep["score"], rep["ic_mean"].abs())
    # the selection is the top 25 by score, skipping near-duplicates of a better feature
    upto = rep.iloc[: int(rep["rank"][pre.selected_].max())]
    assert upto.index[upto["selected"]].tolist() == pre.selected_
    twins = upto.loc[~upto["selected"], "redundant_with"]
    assert twins.isin(pre.selected_).all()
    assert {"family", "coverage", "ic_mean", "icir", "ic_t", "redundant_with"} <= set(rep.columns)
    no_dedup = Preprocessor(k=25, max_corr=None).fit(feats, cutoff)
    assert no_dedup.selected_ == rep.index[:25].tolist()
    out = pre.transform(feats)
    assert out.columns.tolist() == ["date", "ticker", *pre.selected_, "target_h5", "target_h20", "target_h60"]
    x = out[pre.selected_].to_numpy()
    assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() <= 10.0
    # transform applies the training state unchanged: a later frame's own statistics play no part
    late = feats[feats["date"] > cutoff]
    pd.testing.assert_frame_equal(pre.transform(late), out.loc[late.index], check_exact=True)
    with pytest.raises(ValueError, match="train_end"):
        Preprocessor().fit(feats)


def test_preprocessor_lgbm_gain_is_deterministic(feats, dates) -> None:
    kw = {"k": 10, "method": "lgbm", "lgbm_params": {"n_estimators": 20}}
    a = Preprocessor(**kw).fit(feats, dates[220])
    b = Preprocessor(**kw).fit(feats, dates[220])
    assert a.selected_ == b.selected_ and len(a.selected_) == 10
    assert a.report()["score"].sum() == pytest.approx(1.0)


def test_preprocessor_json_round_trip_transforms_identically(feats, dates) -> None:
    import json

    pp = Preprocessor(k=25).fit(feats, dates[len(dates) // 2])
    restored = Preprocessor.from_dict(json.loads(json.dumps(pp.to_dict())))
    assert restored.selected_ == pp.selected_
    pd.testing.assert_frame_equal(restored.transform(feats), pp.transform(feats), check_exact=True)
    assert restored.report().loc[pp.selected_[0], "selected"]
