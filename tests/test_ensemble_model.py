"""The learned ensemble (ensemble/models/ensemble.py) and the per-date normalisation it and the
learning targets rest on (ensemble/features/normalize.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ensemble.backtest.metrics import interval_coverage, rank_ic
from ensemble.features.normalize import cross_sectional_targets, per_date
from ensemble.models.ensemble import (
    LAMBDAS,
    VOL_COLUMN,
    EnsembleForecaster,
    outside_block,
    trailing_volatility,
)

HORIZONS = (5, 20)
PRIOR = {"good": 0.2, "noise": 0.4, "weak": 0.4}


def panel(
    n_dates: int = 160, n_tickers: int = 60, seed: int = 0, horizons: tuple[int, ...] = HORIZONS
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Members with known skill: 'good' sees most of the signal, 'weak' a little, 'noise' none.
    Member scales differ wildly (the ensemble must only use per-date rankings)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_dates)
    keys = pd.DataFrame(
        {
            "date": np.repeat(dates, n_tickers),
            "ticker": np.tile([f"T{i:02d}" for i in range(n_tickers)], n_dates),
        }
    )
    vol = np.tile(rng.uniform(0.01, 0.04, n_tickers), n_dates)  # per-ticker daily volatility
    truth = keys.copy()
    truth[VOL_COLUMN] = vol
    members = {m: keys.copy() for m in PRIOR}
    for h in horizons:
        signal = rng.normal(size=len(keys))
        noise = rng.normal(size=len(keys))
        truth[f"target_h{h}"] = 0.002 * h + vol * np.sqrt(h) * (0.3 * signal + noise)
        members["good"][f"pred_h{h}"] = 1000.0 * (signal + 0.5 * rng.normal(size=len(keys)))
        members["weak"][f"pred_h{h}"] = signal + 4.0 * rng.normal(size=len(keys))
        members["noise"][f"pred_h{h}"] = 1e-3 * rng.normal(size=len(keys))
    return members, truth


# -- per-date normalisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["demean", "zscore", "rank", "rank_gauss"])
def test_per_date_kinds_are_centred_within_each_date_and_keep_the_ranking(kind: str) -> None:
    rng = np.random.default_rng(1)
    f = pd.DataFrame(
        {"date": np.repeat([1, 2, 3], 7), "x": rng.lognormal(size=21) * np.repeat([1, 10, 100], 7)}
    )
    f.loc[4, "x"] = np.nan
    z = per_date(f, ["x"], kind)["x"]
    assert np.isnan(z[4])
    for _, g in z.groupby(f["date"]):
        assert g.mean() == pytest.approx(0.0, abs=1e-12)
    for _, g in f.groupby("date"):  # monotone within the date: the same Spearman ranking
        ok = g["x"].notna()
        assert stats.spearmanr(g["x"][ok], z[g.index][ok]).statistic == pytest.approx(1.0)
    if kind == "zscore":
        assert z.groupby(f["date"]).std(ddof=0).to_numpy() == pytest.approx(1.0)


def test_per_date_reads_nothing_but_its_date() -> None:
    rng = np.random.default_rng(2)
    f = pd.DataFrame({"date": np.repeat([1, 2], 5), "x": rng.normal(size=10)})
    g = f.copy()
    g.loc[g["date"] == 2, "x"] *= 1e6  # poison the later date
    for kind in ("demean", "zscore", "rank", "rank_gauss"):
        a, b = per_date(f, ["x"], kind), per_date(g, ["x"], kind)
        np.testing.assert_array_equal(a["x"][:5].to_numpy(), b["x"][:5].to_numpy())


def test_cross_sectional_targets_replace_targets_only_and_keep_rank_ic() -> None:
    members, truth = panel(n_dates=20, n_tickers=30)
    t = cross_sectional_targets(truth, "rank_gauss")
    assert t[VOL_COLUMN].equals(truth[VOL_COLUMN])
    d = truth["date"].to_numpy()
    p = members["good"]["pred_h5"].to_numpy()
    assert rank_ic(d, p, t["target_h5"].to_numpy()) == pytest.approx(
        rank_ic(d, p, truth["target_h5"].to_numpy())
    )
    assert not np.allclose(t["target_h5"], truth["target_h5"])


# -- the learned ensemble --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted() -> tuple[EnsembleForecaster, dict[str, pd.DataFrame], pd.DataFrame]:
    members, truth = panel()
    dates = np.sort(truth["date"].unique())
    valid = truth["date"] < dates[100]
    vmembers = {m: p[valid.to_numpy()] for m, p in members.items()}
    ens = EnsembleForecaster(PRIOR, HORIZONS).fit(vmembers, truth[valid].reset_index(drop=True))
    test = ~valid.to_numpy()
    return (
        ens,
        {m: p[test].reset_index(drop=True) for m, p in members.items()},
        truth[test].reset_index(drop=True),
    )


def test_learned_weights_are_non_negative_sum_to_one_and_favour_the_skilled_member(fitted) -> None:
    ens, _, _ = fitted
    for h in HORIZONS:
        w = ens.weights(h)
        assert all(v >= 0 for v in w.values()) and sum(w.values()) == pytest.approx(1.0)
        # the prior gives 'good' the least weight; validation evidence gives it the most
        assert w["good"] > w["weak"] > w["noise"] - 1e-12, w
        assert w["good"] > PRIOR["good"]


def test_learned_ensemble_ranks_at_least_as_well_as_the_fixed_weights(fitted) -> None:
    ens, members, truth = fitted
    fixed = EnsembleForecaster(PRIOR, HORIZONS, mode="fixed")
    members_v, truth_v = panel()  # the same panel: refit the fixed one on the same validation rows
    dates = np.sort(truth_v["date"].unique())
    valid = (truth_v["date"] < dates[100]).to_numpy()
    fixed.fit({m: p[valid] for m, p in members_v.items()}, truth_v[valid].reset_index(drop=True))
    assert fixed.weights(5) == pytest.approx({m: w / sum(PRIOR.values()) for m, w in PRIOR.items()})
    d = truth["date"].to_numpy()
    for h in HORIZONS:
        y = truth[f"target_h{h}"].to_numpy()
        learned = rank_ic(d, ens.predict(members, truth)[f"pred_h{h}"].to_numpy(), y)
        base = rank_ic(d, fixed.predict(members, truth)[f"pred_h{h}"].to_numpy(), y)
        best = rank_ic(d, members["good"][f"pred_h{h}"].to_numpy(), y)
        # the one-standard-error rule keeps the weights a little nearer the prior than the best fit
        assert learned > base and learned >= best - 0.02, (learned, base, best)


def test_forecasts_are_returns_and_intervals_cover_at_their_level(fitted) -> None:
    ens, members, truth = fitted
    out = ens.predict(members, truth)
    for h in HORIZONS:
        # return units: the level is the universe's mean forward return, the spread is a return's
        assert out[f"pred_h{h}"].mean() == pytest.approx(0.002 * h, abs=0.002)
        assert (out[f"hi95_h{h}"] - out[f"lo95_h{h}"] > out[f"hi80_h{h}"] - out[f"lo80_h{h}"]).all()
        # wider for the more volatile tickers
        width = out[f"hi80_h{h}"] - out[f"lo80_h{h}"]
        assert np.corrcoef(width, truth[VOL_COLUMN])[0, 1] > 0.99
        assert out[f"confidence_h{h}"].between(0, 1).all()
    cov = interval_coverage(out, truth, HORIZONS, (0.8, 0.95))
    for h in HORIZONS:
        assert cov[f"coverage80_h{h}"] == pytest.approx(0.80, abs=0.03)
        assert cov[f"coverage95_h{h}"] == pytest.approx(0.95, abs=0.03)


def test_a_missing_member_drops_out_and_the_rest_renormalise(fitted) -> None:
    ens, members, truth = fitted
    without = {m: p for m, p in members.items() if m != "good"}
    out = ens.predict(without, truth)
    assert out["pred_h5"].notna().all() and (out["n_models_h5"] == 2).all()
    only_weak = ens.predict({"weak": members["weak"]}, truth)
    d = truth["date"].to_numpy()
    # with one member left, the ensemble's ranking is that member's
    assert rank_ic(
        d, only_weak["pred_h5"].to_numpy(), members["weak"]["pred_h5"].to_numpy()
    ) == pytest.approx(1.0)
    # and its confidence is lower than with every member present
    assert only_weak["confidence_h5"].mean() < ens.predict(members, truth)["confidence_h5"].mean()


def test_state_round_trips_through_json(fitted) -> None:
    ens, members, truth = fitted
    again = EnsembleForecaster.from_dict(json.loads(json.dumps(ens.to_dict())))
    pd.testing.assert_frame_equal(again.predict(members, truth), ens.predict(members, truth))
    bad = ens.to_dict()
    bad["weights"]["5"] = [0.9, 0.9, -0.8]
    with pytest.raises(ValueError, match="non-negative numbers summing to 1"):
        EnsembleForecaster.from_dict(bad)


def test_lambdas_set_the_shrinkage_candidates_and_travel_with_the_state() -> None:
    members, truth = panel()
    valid = (truth["date"] < np.sort(truth["date"].unique())[100]).to_numpy()
    vm, vt = {m: p[valid] for m, p in members.items()}, truth[valid].reset_index(drop=True)
    plain = EnsembleForecaster(PRIOR, HORIZONS, lambdas=(0.0,)).fit(vm, vt)
    pinned = EnsembleForecaster(PRIOR, HORIZONS, lambdas=(1e6,)).fit(vm, vt)
    for h in HORIZONS:
        assert plain.lambda_[h] == 0.0 and pinned.lambda_[h] == 1e6
        # no penalty: the fit drops the pure-noise member; a huge one keeps the prior
        assert plain.weights(h)["noise"] < 0.05 < PRIOR["noise"]
        assert pinned.weights(h) == pytest.approx(PRIOR, abs=1e-3)
    again = EnsembleForecaster.from_dict(json.loads(json.dumps(plain.to_dict())))
    assert again.lambdas == (0.0,)
    for bad in ((), (-1.0,), (float("nan"),)):
        with pytest.raises(ValueError, match="lambdas"):
            EnsembleForecaster(PRIOR, HORIZONS, lambdas=bad)


def test_se_rule_sets_how_far_below_the_best_held_out_score_the_shrinkage_may_score() -> None:
    members, truth = panel()
    valid = (truth["date"] < np.sort(truth["date"].unique())[100]).to_numpy()
    vm, vt = {m: p[valid] for m, p in members.items()}, truth[valid].reset_index(drop=True)
    best = EnsembleForecaster(PRIOR, HORIZONS, se_rule=0.0).fit(vm, vt)  # the best held-out score
    one_se = EnsembleForecaster(PRIOR, HORIZONS).fit(vm, vt)  # the default, 1
    loose = EnsembleForecaster(PRIOR, HORIZONS, se_rule=1e9).fit(vm, vt)  # anything within reach
    for h in HORIZONS:
        # the good member's signal is strong: the best score is away from the prior-most lambda
        assert best.lambda_[h] < max(LAMBDAS) and best.weights(h)["good"] > PRIOR["good"] + 0.2
        assert best.lambda_[h] <= one_se.lambda_[h] <= loose.lambda_[h] == max(LAMBDAS)
    again = EnsembleForecaster.from_dict(json.loads(json.dumps(best.to_dict())))
    assert again.se_rule == 0.0 and again.lambda_ == best.lambda_
    older = {k: v for k, v in one_se.to_dict().items() if k != "se_rule"}  # saved before se_rule
    assert EnsembleForecaster.from_dict(older).se_rule == 1.0
    # the out-of-fold ensembles choose their shrinkage by the same rule
    oof = {
        r.se_rule: r.cross_fit_predict(vm, vt, folds=2)[[f"pred_h{h}" for h in HORIZONS]]
        for r in (best, one_se)
    }
    assert not np.allclose(oof[0.0].to_numpy(), oof[1.0].to_numpy(), equal_nan=True)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="se_rule"):
            EnsembleForecaster(PRIOR, HORIZONS, se_rule=bad)


def test_weights_keep_the_prior_without_two_independent_windows_of_held_out_evidence() -> None:
    # h=60 on 130 validation dates: the second half holds 65 dates, 1.1 independent windows, so no
    # error can be estimated: the much better member does not move the weights
    members, truth = panel(n_dates=130, n_tickers=200, horizons=(60,))
    few = EnsembleForecaster(PRIOR, (60,)).fit(members, truth)
    assert few.lambda_[60] == max(LAMBDAS)
    assert few.weights(60) == pytest.approx(PRIOR, abs=0.01)
    # 300 dates hold out 150, 2.5 windows: the same kind of evidence moves them toward that member
    members, truth = panel(n_dates=300, n_tickers=200, horizons=(60,))
    more = EnsembleForecaster(PRIOR, (60,)).fit(members, truth)
    assert more.lambda_[60] < max(LAMBDAS)
    assert more.weights(60)["good"] > PRIOR["good"] + 0.2, more.weights(60)


def test_the_gate_zeroes_the_prior_of_a_member_with_significantly_negative_validation_skill() -> None:
    members, truth = panel()
    valid = (truth["date"] < np.sort(truth["date"].unique())[100]).to_numpy()
    vm, vt = (
        {m: p[valid].reset_index(drop=True) for m, p in members.items()},
        truth[valid].reset_index(drop=True),
    )
    vm["anti"] = vm["good"].copy()  # the good member upside down: it ranks the tickers backwards
    for h in HORIZONS:
        vm["anti"][f"pred_h{h}"] *= -1.0
    prior = {**PRIOR, "anti": 0.5}
    fits = {
        g: EnsembleForecaster(prior, HORIZONS, lambdas=(1e6,), gate=g).fit(vm, vt)
        for g in ("none", "negative", "significant")
    }
    d = vt["date"].to_numpy()
    for h in HORIZONS:
        # a penalty this large pins the weights to the (gated) prior
        assert fits["none"].weights(h) == pytest.approx({m: w / 1.5 for m, w in prior.items()}, abs=1e-3)
        assert fits["none"].excluded_[h] == []
        assert fits["significant"].excluded_[h] == ["anti"]  # noise's skill is ~0: within one error, kept
        assert fits["significant"].weights(h) == pytest.approx({**PRIOR, "anti": 0.0}, abs=1e-3)
        noise_ic = rank_ic(d, vm["noise"][f"pred_h{h}"].to_numpy(), vt[f"target_h{h}"].to_numpy())
        expected = ["noise", "anti"] if noise_ic <= 0 else ["anti"]  # negative: any skill <= 0 goes
        assert fits["negative"].excluded_[h] == expected
        assert sum(fits["negative"].weights(h).values()) == pytest.approx(1.0)
        # the gate only moves the prior: out of the ensemble's ranking the anti member is gone
        combined = fits["significant"].predict(vm, vt)
        assert rank_ic(d, combined[f"pred_h{h}"].to_numpy(), vt[f"target_h{h}"].to_numpy()) > rank_ic(
            d, fits["none"].predict(vm, vt)[f"pred_h{h}"].to_numpy(), vt[f"target_h{h}"].to_numpy()
        )
    again = EnsembleForecaster.from_dict(json.loads(json.dumps(fits["significant"].to_dict())))
    assert again.gate == "significant" and again.excluded_ == fits["significant"].excluded_
    # every member significantly wrong: no evidence for any of them, the prior is kept as given
    flipped = {m: vm["anti"] if m == "good" else vm[m] for m in ("good", "weak")}
    for h in HORIZONS:
        flipped["weak"] = flipped["weak"].assign(
            **{f"pred_h{h}": -vm["good"][f"pred_h{h}"] + vm["weak"][f"pred_h{h}"]}
        )
    both = EnsembleForecaster({"good": 0.2, "weak": 0.4}, HORIZONS, lambdas=(1e6,)).fit(flipped, vt)
    for h in HORIZONS:
        assert both.skill_[h]["good"] < 0 and both.skill_[h]["weak"] < 0
        assert both.excluded_[h] == [] and both.weights(h) == pytest.approx(
            {"good": 1 / 3, "weak": 2 / 3}, abs=1e-3
        )
    with pytest.raises(ValueError, match="gate"):
        EnsembleForecaster(PRIOR, HORIZONS, gate="sometimes")  # type: ignore[arg-type]


def test_outside_block_purges_the_labels_that_overlap_the_held_out_block() -> None:
    """By hand: 2 tickers x 10 dates, block = dates 4..5. Rows before it keep a label realised by
    date 3 (h=2: dates 0, 1); rows after it lose the labels of its first h dates (h=2: 6, 7)."""
    dates = pd.bdate_range("2021-01-04", periods=10)
    f = pd.DataFrame({"date": np.tile(dates, 2), "ticker": np.repeat(["A", "B"], 10)})
    f["target_h2"] = np.arange(20.0)
    f["target_h1"] = 100.0 + np.arange(20.0)
    f["ref_vol"] = 0.01
    shuffled = f.sample(frac=1.0, random_state=0)  # any row order: the result keeps it
    out = outside_block(shuffled, dates[4:6])
    assert out.index.tolist() == [i for i in shuffled.index if f.loc[i, "date"] not in dates[4:6]]
    day = {i: dates.get_loc(f.loc[i, "date"]) for i in out.index}
    for i in out.index:
        kept2 = day[i] in (0, 1, 8, 9)
        kept1 = day[i] in (0, 1, 2, 7, 8, 9)
        assert np.isfinite(out.loc[i, "target_h2"]) == kept2, (i, day[i])
        assert np.isfinite(out.loc[i, "target_h1"]) == kept1, (i, day[i])
        if kept2:
            assert out.loc[i, "target_h2"] == f.loc[i, "target_h2"]
    assert (out["ref_vol"] == 0.01).all()
    # a frame without tickers (the universe's mean per date) is one series: the same dates kept
    universe = f[f["ticker"] == "A"].drop(columns="ticker").sample(frac=1.0, random_state=1)
    per_date = outside_block(universe, dates[4:6])
    day = {i: dates.get_loc(universe.loc[i, "date"]) for i in per_date.index}
    assert sorted(d for i, d in day.items() if np.isfinite(per_date.loc[i, "target_h2"])) == [0, 1, 8, 9]
    assert sorted(d for i, d in day.items() if np.isfinite(per_date.loc[i, "target_h1"])) == [
        0,
        1,
        2,
        7,
        8,
        9,
    ]


def test_the_shrinkage_choice_reads_no_label_that_overlaps_the_second_half() -> None:
    """lambda is chosen by fitting on the first half of the validation dates and scoring on the
    second: the first half's last h dates' labels overlap the second half's and are purged, so
    poisoning them with labels that follow one member leaves the chosen lambda unchanged (without
    the purge it moves)."""
    members, truth = panel(n_dates=100)
    dates = np.sort(truth["date"].unique())
    poisoned = truth.copy()
    for h in HORIZONS:
        zone = truth["date"].isin(dates[50 - h : 50]).to_numpy()  # the first half ends at date 49
        poisoned.loc[zone, f"target_h{h}"] = -members["good"].loc[zone, f"pred_h{h}"].to_numpy()
    clean = EnsembleForecaster(PRIOR, HORIZONS).fit(members, truth)
    again = EnsembleForecaster(PRIOR, HORIZONS).fit(members, poisoned)
    for h in HORIZONS:
        assert again.lambda_[h] == clean.lambda_[h]


def test_out_of_fold_forecasts_read_no_label_that_overlaps_their_block() -> None:
    """cross_fit_predict forecasts each block of dates with an ensemble fitted on the other blocks:
    their labels that overlap the block's (the h dates before it, realised inside it, and the h
    dates after it, which start inside its labels' windows) are purged, in the truth and in the
    history, so poisoning them leaves the block's forecasts and intervals unchanged (without the
    purge they move); poisoning a label just outside that zone moves them."""
    members, truth = panel(n_dates=120)
    dates = np.sort(truth["date"].unique())  # folds=3: blocks of dates 0-39, 40-79, 80-119
    middle = truth["date"].isin(dates[40:80]).to_numpy()

    def poison(zone_dates: dict[int, np.ndarray]) -> pd.DataFrame:
        out = truth.copy()
        for h, zd in zone_dates.items():
            zone = truth["date"].isin(zd).to_numpy()
            out.loc[zone, f"target_h{h}"] = -members["good"].loc[zone, f"pred_h{h}"].to_numpy() / 100
        return out

    ens = EnsembleForecaster(PRIOR, HORIZONS)

    def oof(t: pd.DataFrame) -> pd.DataFrame:
        return ens.cross_fit_predict(members, t, folds=3, history=t).loc[middle]

    clean = oof(truth)
    cols = [c for c in clean.columns if c not in ("date", "ticker")]
    assert np.isfinite(clean[[f"pred_h{h}" for h in HORIZONS]].to_numpy()).all()
    overlapping = poison({h: np.concatenate([dates[40 - h : 40], dates[80 : 80 + h]]) for h in HORIZONS})
    pd.testing.assert_frame_equal(oof(overlapping), clean)
    for h in HORIZONS:  # one date further out on either side is read
        for near in (dates[40 - h - 1 : 40 - h], dates[80 + h : 80 + h + 1]):
            moved = oof(poison({h: near}))
            assert not np.allclose(moved[cols].to_numpy(), clean[cols].to_numpy(), equal_nan=True), (h, near)


def test_a_block_without_out_of_fold_evidence_at_a_horizon_has_no_forecast_there() -> None:
    """Blocks of 20 dates: the middle one's fold keeps no 20-day label once the purge has blanked the
    20 dates either side of it, so it forecasts NaN at 20 days (no evidence), and still at 5 days."""
    members, truth = panel(n_dates=60)
    out = EnsembleForecaster(PRIOR, HORIZONS).cross_fit_predict(members, truth, folds=3)
    dates = np.sort(truth["date"].unique())
    middle = out["date"].isin(dates[20:40]).to_numpy()
    assert out.loc[middle, "pred_h20"].isna().all() and np.isfinite(out.loc[middle, "pred_h5"]).all()
    assert np.isfinite(out.loc[~middle, "pred_h20"]).all()


def test_fitting_reads_only_the_rows_it_is_given(fitted) -> None:
    """Poisoned forecasts and returns after the validation window change no learned number."""
    members, truth = panel()
    dates = np.sort(truth["date"].unique())
    valid = (truth["date"] < dates[100]).to_numpy()
    poisoned_truth = truth.copy()
    poisoned_truth.loc[~valid, "target_h5"] = 10.0
    clean = EnsembleForecaster(PRIOR, HORIZONS).fit({m: p[valid] for m, p in members.items()}, truth[valid])
    again = EnsembleForecaster(PRIOR, HORIZONS).fit(
        {m: p[valid] for m, p in members.items()}, poisoned_truth[valid]
    )
    assert json.dumps(clean.to_dict()) == json.dumps(again.to_dict())


def test_trailing_volatility_is_point_in_time() -> None:
    rng = np.random.default_rng(4)
    dates = pd.bdate_range("2021-01-01", periods=120)
    prices = pd.DataFrame(
        {"date": np.tile(dates, 2), "ticker": np.repeat(["A", "B"], 120),
         "close": np.exp(np.cumsum(rng.normal(0, [0.01] * 120 + [0.03] * 120)))}
    )  # fmt: skip
    v = trailing_volatility(prices, window=60)
    poisoned = prices.copy()
    poisoned.loc[poisoned["date"] > dates[80], "close"] *= 10
    w = trailing_volatility(poisoned, window=60)
    early = v["date"] <= dates[80]
    np.testing.assert_array_equal(v.loc[early, VOL_COLUMN].to_numpy(), w.loc[early, VOL_COLUMN].to_numpy())
    last = v[v["date"] == dates[-1]].set_index("ticker")[VOL_COLUMN]
    assert last["B"] == pytest.approx(0.03, rel=0.3) and last["A"] == pytest.approx(0.01, rel=0.3)


def test_the_calibration_never_reverses_the_ranking() -> None:
    """Members whose validation skill is negative still forecast in their combined order: the
    calibration's slope is floored at a tiny positive number (no excess return), never negative."""
    members, truth = panel(n_dates=60, n_tickers=40, seed=3)
    flipped = {m: p.assign(**{f"pred_h{h}": -p[f"pred_h{h}"] for h in HORIZONS}) for m, p in members.items()}
    ens = EnsembleForecaster(PRIOR, HORIZONS, mode="fixed").fit(flipped, truth)
    out = ens.predict(flipped, truth)
    plain = EnsembleForecaster(PRIOR, HORIZONS, mode="fixed").fit(members, truth).predict(members, truth)
    d = truth["date"].to_numpy()
    for h in HORIZONS:
        assert 0 < ens.beta_[h] < 1e-5
        # the same weights on negated members: exactly the reverse order of the plain ensemble
        assert rank_ic(d, out[f"pred_h{h}"].to_numpy(), plain[f"pred_h{h}"].to_numpy()) == pytest.approx(-1)
        assert rank_ic(d, out[f"pred_h{h}"].to_numpy(), truth[f"target_h{h}"].to_numpy()) < 0
        assert np.abs(out[f"excess_h{h}"]).max() < 1e-4


def test_history_sets_the_universe_part_of_the_intervals_and_the_expected_return() -> None:
    """The validation dates' universe barely moves; the history's moves a lot: with the history the
    expected universe return is its mean and the intervals widen to cover its moves."""
    members, truth = panel(n_dates=80, n_tickers=40, seed=4)
    rng = np.random.default_rng(5)
    hist_dates = pd.bdate_range("2018-01-01", periods=400)
    history = pd.DataFrame({"date": hist_dates})
    for h in HORIZONS:
        history[f"target_h{h}"] = 0.01 + 0.5 * rng.normal(size=len(hist_dates))
    plain = EnsembleForecaster(PRIOR, HORIZONS).fit(members, truth)
    wide = EnsembleForecaster(PRIOR, HORIZONS).fit(members, truth, history=history)
    for h in HORIZONS:
        assert wide.market_[h] == pytest.approx(history[f"target_h{h}"].mean())
        assert wide.quantiles_[h]["80"] > 2 * plain.quantiles_[h]["80"]
        assert wide.weights(h) == plain.weights(h)  # the history changes neither weights nor ranking
    # a history of the same universe moves as the validation dates keeps the intervals alike
    same = truth.groupby("date")[[f"target_h{h}" for h in HORIZONS]].mean().reset_index()
    alike = EnsembleForecaster(PRIOR, HORIZONS).fit(members, truth, history=same)
    for h in HORIZONS:
        assert alike.quantiles_[h]["80"] == pytest.approx(plain.quantiles_[h]["80"], rel=0.1)


def test_history_own_parts_before_validation_join_the_interval_calibration() -> None:
    """Dates before validation whose own (excess) returns are three times as dispersed as the
    validation dates' widen the intervals; the same dates dated inside validation are ignored."""
    members, truth = panel(n_dates=80, n_tickers=40, seed=6)
    rng = np.random.default_rng(7)
    early = pd.DataFrame(
        {
            "date": np.repeat(pd.bdate_range("2018-01-01", periods=300), 40),
            "ticker": np.tile([f"T{i:02d}" for i in range(40)], 300),
        }
    )
    early[VOL_COLUMN] = 0.02
    for h in HORIZONS:
        early[f"target_h{h}"] = 0.002 * h + 3 * 0.02 * np.sqrt(h) * rng.normal(size=len(early))
    same_market = truth.groupby("date")[[f"target_h{h}" for h in HORIZONS]].mean().reset_index()
    base = EnsembleForecaster(PRIOR, HORIZONS).fit(members, truth, history=same_market)
    wide = EnsembleForecaster(PRIOR, HORIZONS).fit(members, truth, history=pd.concat([early, same_market]))
    late = early.assign(date=early["date"] + pd.Timedelta(days=5000))  # after the validation's first date
    ignored = EnsembleForecaster(PRIOR, HORIZONS).fit(members, truth, history=pd.concat([same_market, late]))
    for h in HORIZONS:
        assert wide.quantiles_[h]["80"] > 1.5 * base.quantiles_[h]["80"]
        assert ignored.quantiles_[h]["80"] < 1.2 * base.quantiles_[h]["80"]
