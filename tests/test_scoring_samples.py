"""What serving and deployment add to ensemble/scoring.py, with the tiny trained version (no Ray):
sample forecasts recorded at training time and compared at deploy time, the in-process refresh of
stale Prophet models (the same as ``jobs.score``'s), each tree member's contributions computed apart
and combined (as the Serve deployments do), and a version loaded without members."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from ensemble import scoring
from ensemble.scoring import (
    compare_samples,
    explain,
    load_version,
    member_contributions,
    predict_member,
    prepare_frame,
    refresh_stale_prophet,
    sample_forecasts,
)


@pytest.fixture(scope="module")
def lv(tiny_version):
    return load_version(tiny_version[0], "production")


@pytest.fixture(scope="module")
def prices(tiny_version) -> pd.DataFrame:
    return tiny_version[2].prices


@pytest.fixture(scope="module")
def samples(lv, tiny_version, prices):
    return sample_forecasts(lv, prices, tiny_version[2].split.valid_end)


def test_samples_are_a_few_rows_of_score(lv, prices, samples, tiny_version) -> None:
    day = tiny_version[2].split.valid_end
    assert samples["as_of"] == day.date().isoformat() and len(samples["tickers"]) == scoring.SAMPLE_TICKERS
    assert sorted(samples["members"]) == sorted(lv.models)
    res = scoring.score(lv, prices, day)
    t = samples["tickers"][0]
    row = res.frame.set_index("ticker").loc[t]
    assert samples["frame"][t]["pred_h5"] == row["pred_h5"]
    assert samples["frame"][t]["xgboost_h20"] == row["xgboost_h20"]
    raw = res.members["lstm"].set_index("ticker").loc[t, "pred_h5"]
    assert samples["members"]["lstm"][t]["pred_h5"] == raw
    # every member forecasts every sampled ticker
    assert all(sorted(samples["members"][m]) == sorted(samples["tickers"]) for m in samples["members"])


def test_the_stored_version_forecasts_its_samples_again(tiny_version, prices, samples) -> None:
    again = load_version(tiny_version[0], "production")  # a fresh load from the registry
    now = sample_forecasts(again, prices, samples["as_of"], tickers=samples["tickers"])
    assert compare_samples(samples, now) == []


def test_a_difference_is_named(lv, prices, samples) -> None:
    t = samples["tickers"][1]
    moved = copy.deepcopy(samples)
    moved["members"]["xgboost"][t]["pred_h20"] *= 1 + 1e-7
    moved["frame"][t]["confidence_h5"] += 1e-6
    diff = compare_samples(moved, samples)
    assert len(diff) == 2 and any(d.startswith(f"xgboost {t} pred_h20") for d in diff), diff
    assert any(d.startswith(f"ensemble {t} confidence_h5") for d in diff), diff
    tiny = copy.deepcopy(samples)
    tiny["members"]["xgboost"][t]["pred_h20"] *= 1 + 1e-12  # inside the tolerance
    assert compare_samples(tiny, samples) == []
    assert compare_samples({**samples, "as_of": "1999-01-04"}, samples)[0].startswith("as_of")


def test_a_member_missing_now_is_a_difference(tiny_version, prices, samples) -> None:
    less = load_version(tiny_version[0], "production", ["lstm", "lightgbm", "random_forest", "prophet"])
    now = sample_forecasts(less, prices, samples["as_of"], tickers=samples["tickers"])
    diff = compare_samples(samples, now)
    assert "xgboost: recorded, but it did not forecast now" in diff
    assert any(d.startswith("ensemble ") for d in diff)  # the ensemble renormalised without it


def test_refresh_stale_prophet_is_jobs_score_refit(lv, prices) -> None:
    from jobs import score as job

    day = pd.Timestamp(prices["date"].max())
    mine, record = refresh_stale_prophet(lv, prices, day)
    theirs, their_record = job.refresh_prophet(lv, prices, day, lv.settings, use_ray=False)
    assert record is not None and their_record is not None
    assert sorted(record.refitted) == sorted(their_record.refitted) and record.refitted
    frame, _ = prepare_frame(lv, prices, day)
    a, _ = predict_member(mine, "prophet", frame, day)
    b, _ = predict_member(theirs, "prophet", frame, day)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    old, _ = predict_member(lv, "prophet", frame, day)
    assert not old["pred_h5"].equals(a["pred_h5"])  # the refit changed the forecasts
    # nothing stale right after the refit, and nothing stale on the training window's last date
    assert refresh_stale_prophet(mine, prices, day) == (mine, None)
    through = max(scoring.prophet_fitted_through(lv.models["prophet"]).values())
    assert refresh_stale_prophet(lv, prices, through) == (lv, None)


def test_contributions_computed_apart_add_up_to_explain(lv, prices) -> None:
    day = pd.Timestamp(prices["date"].max())
    frame, _ = prepare_frame(lv, prices, day)
    preds = {m: predict_member(lv, m, frame, day)[0] for m in lv.models}
    want = explain(lv, preds, frame, 5)
    parts = {m: member_contributions(lv, m, frame, 5, preds[m]["ticker"]) for m in lv.models}
    assert parts["lstm"] is None and parts["prophet"] is None and parts["xgboost"] is not None
    got = explain(lv, preds, frame, 5, parts)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    only = explain(lv, preds, frame, 5, {"xgboost": parts["xgboost"]})
    assert not only.equals(want) and set(only["ticker"]) == set(want["ticker"])


def test_a_version_loaded_without_members(tiny_version, lv) -> None:
    head = load_version(tiny_version[0], "production", members=[])
    assert head.models == {} and head.version == lv.version and head.horizons == lv.horizons
    assert head.ensemble.to_dict() == lv.ensemble.to_dict()
    assert head.preprocessor.selected_ == lv.preprocessor.selected_
    assert head.settings == lv.settings
