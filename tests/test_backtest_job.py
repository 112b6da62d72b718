"""jobs.backtest end to end on a tiny synthetic market: every fold a Ray task through the one
training path, every model, the ensemble and every baseline evaluated, the report written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.config import MODEL_NAMES, load_settings
from jobs import backtest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = {
    "synthetic": {"n_tickers": 24, "n_days": 420, "seed": 3},
    "features": {"selection_k": 15, "sequence_length": 10},
    "training": {"training_stocks": 24, "training_days": 1000, "max_epochs": 2, "valid_fraction": 0.2},
    "backtest": {
        "mode": "expanding",
        "every": 40,
        "embargo": 5,
        "test_days": 80,
        "seeds": 2,
        "fold_cpus": 1.0,
        "rolling_window": 20,
    },  # fmt: skip
    "models": {
        "xgboost": {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1},
        "lightgbm": {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1},
        "random_forest": {"n_estimators": 10, "max_depth": 4, "n_jobs": 1},
        "lstm": {
            "hidden": 8,
            "attn_dim": 8,
            "batch_size": 128,
            "max_samples_per_epoch": 1000,
            "num_threads": 1,
        },
        "transformer": {
            "d_model": 16,
            "layers": 1,
            "dim_feedforward": 32,
            "batch_size": 128,
            "max_samples_per_epoch": 1000,
            "num_threads": 1,
        },  # fmt: skip
        "prophet": {"min_history": 100},
    },
}


def test_quick_backtest_end_to_end(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(None, TINY)
    summary = backtest.run(settings, out=str(tmp_path / "report"), progress=False)
    report = Path(summary["report"])
    assert report.exists() and report.stat().st_size > 10_000
    for name in ("metrics.csv", "metrics.json", "result.json", "weights.csv", "folds.csv"):
        assert (report.parent / name).exists(), name

    results = summary["fold_results"]
    assert len(results) == 2 and not summary["fold_failures"]
    dates = pd.DatetimeIndex(sorted(settings_dates(settings)))
    covered = []
    for r in results:
        f = r.fold
        expected = dates[(dates >= f.test_start) & (dates <= f.test_end)]
        assert len(expected) == 40 and dates.get_loc(f.test_start) == dates.get_loc(f.as_of) + 6
        assert not r.failures, r.failures
        assert sorted(r.member_preds) == sorted(MODEL_NAMES)
        # every fold forecasts its own test window, and only it
        for p in [*r.member_preds.values(), r.ensemble, r.truth]:
            assert pd.DatetimeIndex(sorted(p["date"].unique())).equals(expected)
            assert p["pred_h5" if "pred_h5" in p else "target_h5"].notna().any()
        for m in ("lstm", "transformer"):
            assert sorted(r.seed_preds[m]) == [0, 1]  # two seeds each
        for h in settings.horizons:
            w = np.array(list(r.weights[h].values()))
            assert (w >= 0).all() and np.isclose(w.sum(), 1.0)
        covered += list(expected)
    assert pd.DatetimeIndex(covered).equals(dates[-80:])  # back to back over the test period

    res = summary["result"]
    table = pd.DataFrame(res["metrics"])
    expected_models = {*MODEL_NAMES, "ensemble", "zero", "reversal_5d", "momentum_12_1", "equal_weight"}
    assert set(table["model"]) == expected_models
    assert set(table["horizon"]) == set(settings.horizons)
    ens = table[table["model"] == "ensemble"].set_index("horizon")
    assert np.isfinite(ens.loc[5, ["rank_ic", "icir", "directional_accuracy", "sharpe", "max_drawdown",
                                   "turnover", "coverage80", "coverage95"]].astype(float)).all()  # fmt: skip
    assert table.loc[table["model"] == "lstm", "seeds"].eq(2).all()
    ew = table[table["model"] == "equal_weight"]
    assert np.isfinite(ew["sharpe"].astype(float)).all() and ew["rank_ic"].isna().all()
    zero = table[table["model"] == "zero"]
    assert np.allclose(zero["rmse"].astype(float), zero["rmse_zero"].astype(float))
    text = backtest.format_table(res)
    for name in expected_models:
        assert f"\n{name} " in text
    # each row says over how many test dates its Rank IC was measured (fewer at longer horizons)
    row = next(line for line in text.splitlines() if line.startswith("ensemble") and line.split()[1] == "5")
    assert row.split()[2] == f"{ens.loc[5, 'n_dates']:.0f}", (row, ens.loc[5, "n_dates"])
    assert ens.loc[60, "n_dates"] < ens.loc[5, "n_dates"], ens["n_dates"]
    saved = json.loads((report.parent / "metrics.json").read_text())
    assert {row["model"] for row in saved} == expected_models


def settings_dates(settings) -> list:
    from ensemble.data.sources import load_prices

    prices, _ = load_prices(settings)
    return list(prices["date"].unique())
