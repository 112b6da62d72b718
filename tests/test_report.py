"""The backtest report (ensemble.backtest.report): one offline HTML file with the plots' data, and
the tables as CSV/JSON that round-trip the metrics."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from ensemble.backtest.evaluation import daily_rank_ic, evaluate, metric_rows, rolling
from ensemble.backtest.portfolio import equal_weight, long_short
from ensemble.backtest.report import series_payload, write_report

MODELS = ("ensemble", "xgboost", "lightgbm", "reversal_5d")


def _result() -> dict:
    """A small result built the way jobs.backtest builds one: evaluation, portfolios, series."""
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2024-01-01", periods=90)
    tick = [f"T{i:02d}" for i in range(30)]
    idx = pd.MultiIndex.from_product([dates, tick], names=["date", "ticker"])
    truth = pd.DataFrame({"target_h5": rng.normal(0, 0.03, len(idx))}, index=idx).reset_index()
    returns = truth[["date", "ticker"]].assign(ret_1d=rng.normal(0, 0.01, len(idx)))
    rows, equity, ric = [], {}, {}
    for i, m in enumerate(MODELS):
        preds = truth[["date", "ticker"]].assign(
            pred_h5=truth["target_h5"] * 0.1 * i + rng.normal(0, 0.03, len(idx))
        )
        if m == "ensemble":
            for lvl, half in ((80, 0.038), (95, 0.058)):
                preds[f"lo{lvl}_h5"] = preds["pred_h5"] - half
                preds[f"hi{lvl}_h5"] = preds["pred_h5"] + half
        ev = evaluate(preds, truth, [5])
        port = long_short(preds, returns, score_col="pred_h5", quantile=0.1, cost_bps=10)
        kind = "ensemble" if m == "ensemble" else "baseline" if m == "reversal_5d" else "member"
        rows += metric_rows(m, {5: {**ev[5], **port.stats()}}, kind=kind)
        equity[m] = series_payload(port.equity())
        ric[m] = series_payload(rolling(daily_rank_ic(preds, truth, 5), 21))
    ew = equal_weight(returns)
    rows.append({"model": "equal_weight", "horizon": 5, "kind": "baseline", **ew.stats()})
    equity["equal_weight"] = series_payload(ew.equity())
    cov = {"80": series_payload(pd.Series(0.8 + rng.normal(0, 0.02, 60), index=dates[30:]))}
    cov["95"] = {"dates": cov["80"]["dates"], "values": [0.95] * 59 + [float("nan")]}
    return {
        "title": "Walk-forward backtest <test>",
        "horizons": [5],
        "metrics": rows,
        "equity": {"5": equity},
        "rolling_rank_ic": {"5": ric},
        "coverage": {"5": cov},
        "weights": {
            "5": {"fold 1": {"xgboost": 0.6, "lightgbm": 0.4}, "fold 2": {"xgboost": 0.3, "lightgbm": 0.7}},
            20: {"fold 1": {"xgboost": 0.5, "lightgbm": 0.5}},
        },
        "folds": [
            {"fold": "1", "train_end": "2023-12-29", "test_start": "2024-01-01", "test_end": "2024-02-15"},
            {"fold": "2", "train_end": "2024-02-15", "test_start": "2024-02-16", "test_end": "2024-05-03"},
        ],
        "notes": ["synthetic test data", "costs 10 bps"],
        "meta": {"cost_bps": 10, "quantile": 0.1},
    }


def test_report_writes_an_offline_html_with_the_plots(tmp_path):
    result = _result()
    path = write_report(result, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    # offline: plotly.js is inlined, and no script (or stylesheet) is fetched over the network
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, flags=re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']https?:", text, flags=re.I)
    assert len(text) > 1_000_000 and "Plotly.newPlot" in text
    assert text.count('class="plotly-graph-div"') == 4  # equity, rolling IC, coverage, weights
    for name in (*MODELS, "equal_weight", "fold 2", "80% interval", "95% interval"):
        assert f'"{name}"' in text, name
    # the data of the curves is in the page
    assert json.dumps(result["equity"]["5"]["xgboost"]["dates"][3]) in text
    # the title is escaped, the metrics table is an HTML table with the ensemble row highlighted
    assert "Walk-forward backtest &lt;test&gt;" in text
    assert '<table class="tbl">' in text and '<tr class="ensemble">' in text
    assert "synthetic test data" in text


def test_report_tables_round_trip_the_metrics(tmp_path):
    result = _result()
    write_report(result, tmp_path)
    rows = result["metrics"]
    for table in (
        pd.read_csv(tmp_path / "metrics.csv"),
        pd.DataFrame(json.loads((tmp_path / "metrics.json").read_text())),
    ):
        assert len(table) == len(rows)
        assert list(table.columns[:4]) == ["model", "horizon", "kind", "rank_ic"]
        for row, (_, got) in zip(rows, table.iterrows(), strict=True):
            for k, v in row.items():
                g = got[k]
                if isinstance(v, str):
                    assert g == v
                elif v is None or (isinstance(v, float) and math.isnan(v)):
                    assert g is None or (isinstance(g, float) and math.isnan(g)), (k, g)
                else:
                    assert float(g) == pytest.approx(float(v), rel=1e-15, abs=0), (row["model"], k)
    weights = pd.read_csv(tmp_path / "weights.csv")
    assert weights.shape == (6, 4)
    assert weights.groupby(["horizon", "fold"])["weight"].sum().tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert json.loads((tmp_path / "weights.json").read_text())["20"] == {
        "fold 1": {"xgboost": 0.5, "lightgbm": 0.5}
    }
    assert len(pd.read_csv(tmp_path / "folds.csv")) == 2
    whole = json.loads((tmp_path / "result.json").read_text())  # strict JSON: NaN written as null
    assert whole["coverage"]["5"]["95"]["values"][-1] is None


def test_report_accepts_flat_sections_and_refuses_non_json(tmp_path):
    s = {"dates": ["2024-01-01", "2024-01-02"], "values": [0.0, 0.01]}
    minimal = {
        "title": "flat",
        "metrics": [{"model": "ensemble", "horizon": 5, "rank_ic": 0.02}],
        "equity": {"ensemble": s},
        "rolling_rank_ic": {"ensemble": s},
        "coverage": {"80": s},
    }
    text = write_report(minimal, tmp_path).read_text(encoding="utf-8")
    assert text.count('class="plotly-graph-div"') == 3
    assert not (tmp_path / "weights.csv").exists()
    with pytest.raises(TypeError, match="object"):
        write_report({**minimal, "notes": [object()]}, tmp_path)
    with pytest.raises(ValueError, match="horizon"):
        write_report({"title": "x", "metrics": [{"model": "a"}]}, tmp_path)
