"""``bench/quality.py --data PATH``: the quality bench on a price file of the reader's own (another
real data set), split as the S&P 500 sample is, with the same flags as ``jobs.pipeline`` and the
CLIs' error contract (ensemble/cli.py). The benches run as subprocesses, as a reader runs them, on a
small synthetic market written to a file (about 10 s)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.config import SyntheticConfig
from ensemble.data.synthetic import generate_market

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from quality import split_dates  # noqa: E402


def _bench(script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, f"bench/{script}", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """A 40-ticker, 600-day market as a Parquet price file without its sector column, the sectors as
    a ticker,sector CSV beside it, and the prices."""
    d = tmp_path_factory.mktemp("own-data")
    prices = generate_market(SyntheticConfig(n_tickers=40, n_days=600, seed=3), horizons=(5, 20, 60)).prices
    prices.drop(columns="sector").to_parquet(d / "prices.parquet")
    prices[["ticker", "sector"]].drop_duplicates().to_csv(d / "sectors.csv", index=False)
    return d / "prices.parquet", d / "sectors.csv", prices


def test_a_price_file_of_your_own_is_benched_split_as_the_sp500_sample_is(
    files: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    """The file is split by the real-data rule, its sectors joined (the figures move without them),
    and its saved forecasts are refused for other data and reused for the same."""
    data, sectors, prices = files
    flags = ["--models", "xgboost", "--k", "30"]
    r = _bench("quality.py", "--data", data, "--sectors", sectors, *flags, "--save-preds", tmp_path / "preds",
               "--json", tmp_path / "a.json")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"== bench/quality.py --data {data}: 40 tickers x 600 days" in r.stdout, r.stdout[:2000]
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["source"] == "file" and res["data"] == str(data)
    dates = pd.DatetimeIndex(np.sort(prices["date"].unique()))
    real, synthetic = split_dates(dates, "sp500"), split_dates(dates, "synthetic")
    assert res["split"] == {k: str(v.date()) for k, v in real.items()}  # the real-data rule: 70% / test
    assert res["split"] != {k: str(v.date()) for k, v in synthetic.items()}
    assert res["split"]["test_start"] == str(dates[int(len(dates) * 0.70)].date())
    ics = [res["models"]["xgboost"][f"ic_h{h}"] for h in (5, 20, 60)]
    assert all(math.isfinite(x) for x in ics), res["models"]
    assert "oracle" not in res["reference"] and "reversal_5d" in res["reference"]  # no oracle for a file

    r = _bench("quality.py", "--data", data, *flags, "--json", tmp_path / "b.json")  # no sector file
    assert r.returncode == 0, r.stderr[-3000:]
    without = json.loads((tmp_path / "b.json").read_text())["models"]["xgboost"]
    assert [without[f"ic_h{h}"] for h in (5, 20, 60)] != ics  # the sector features were read

    r = _bench("quality.py", "--from-preds", tmp_path / "preds", "--json", tmp_path / "c.json")  # synthetic
    assert r.returncode == 2, r.stderr[-2000:]
    assert "holds forecasts of" in r.stderr.splitlines()[-1] and not (tmp_path / "c.json").exists()
    r = _bench("quality.py", "--data", data, "--sectors", sectors, "--from-preds", tmp_path / "preds",
               "--json", tmp_path / "d.json")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "d.json").read_text())
    ic = [f"ic_h{h}" for h in (5, 20, 60)]  # the same forecasts, the same ensemble
    assert [again["models"]["ensemble"][k] for k in ic] == pytest.approx(
        [res["models"]["ensemble"][k] for k in ic]
    )


CASES = [
    (["--source", "sp500", "--data", "{data}"], "give --source or --data, not both"),
    (["--sectors", "{sectors}"], "--sectors and --clean go with --data PATH"),
    (["--clean", "none"], "--sectors and --clean go with --data PATH"),
    (["--data", "{missing}"], "no such file"),
    (["--data", "{data}", "--sectors", "{missing}"], "no such file"),
]


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [("quality.py", *case) for case in CASES]
    + [(script, *CASES[0]) for script in ("interval_coverage.py", "prophet_params.py")],  # the same checks
)
def test_source_flags_are_checked_before_any_work(
    files: tuple[Path, Path, pd.DataFrame], tmp_path: Path, script: str, args: list[str], message: str
) -> None:
    data, sectors, _ = files
    fill = {"data": data, "sectors": sectors, "missing": tmp_path / "missing.parquet"}
    r = _bench(script, *(a.format(**fill) for a in args))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert message in r.stderr.splitlines()[-1], r.stderr[-2000:]


def test_a_file_that_breaks_the_contract_is_one_error_line(
    files: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    """``--clean none`` refuses the file (exit 3, the rule and the ticker named, no traceback);
    the default ``--clean repair`` treats it as the S&P sample is treated."""
    _, _, prices = files
    bad = prices.copy()
    row = bad.index[(bad["ticker"] == bad["ticker"].iloc[0])][100]
    bad.loc[row, "close"] = -1.0
    path = tmp_path / "bad.parquet"
    bad.to_parquet(path)
    r = _bench("quality.py", "--data", path, "--clean", "none", "--models", "xgboost")
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert str(bad.loc[row, "ticker"]) in line and "bad.parquet" in line, line
    r = _bench(
        "quality.py", "--data", path, "--models", "xgboost", "--k", "30", "--json", tmp_path / "q.json"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bad.parquet cleaned (repair): cleaning mode=repair: 24000 rows in, 23999 rows out" in r.stdout, (
        r.stdout[:2000]
    )


def test_interval_coverage_reads_the_file_and_names_too_few_dates(
    files: tuple[Path, Path, pd.DataFrame],
) -> None:
    data, _, _ = files
    r = _bench("interval_coverage.py", "--data", data)  # 420 dates to the validation end: no 315-date span
    assert r.returncode == 2, r.stderr[-2000:]
    assert "hold no origin" in r.stderr.splitlines()[-1], r.stderr[-2000:]
    r = _bench("interval_coverage.py", "--data", data, "--span", "63")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"== bench/interval_coverage.py --data {data}: 2 origins" in r.stdout, r.stdout
    cov = [ln for ln in r.stdout.splitlines() if ln.startswith("coverage80_h5")]
    assert len(cov) == 1 and cov[0].split()[1].endswith("%"), r.stdout


def test_weight_rules_read_validation_and_score_test(tmp_path: Path) -> None:
    """bench/weight_rules.py on a --save-preds-shaped folder of two members, one forecasting the
    realised return itself on the validation dates only, the other on the test dates only. The
    validation-best rule picks the first, chosen on validation labels alone, and scores about 0 on
    the test dates, where the best member (the second) scores 1."""
    sys.path.insert(0, str(REPO / "bench"))
    from weight_rules import HORIZONS, score_folder

    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2020-01-01", periods=200)
    keys = pd.MultiIndex.from_product([dates, [f"T{i:02d}" for i in range(30)]], names=["date", "ticker"])
    truth = keys.to_frame(index=False).sort_values(["ticker", "date"], ignore_index=True)  # as saved
    for h in HORIZONS:
        truth[f"target_h{h}"] = rng.normal(size=len(truth))
    truth["ref_vol"] = 0.02
    split = {"train_start": dates[0], "train_end": dates[59], "valid_start": dates[60],
             "valid_end": dates[139], "test_start": dates[140], "test_end": dates[-1]}  # fmt: skip
    (tmp_path / "split.json").write_text(json.dumps({k: str(v.date()) for k, v in split.items()}))
    truth.to_parquet(tmp_path / "truth.parquet")
    perfect = truth.rename(columns={f"target_h{h}": f"pred_h{h}" for h in HORIZONS}).drop(columns="ref_vol")
    noise = perfect.assign(**{f"pred_h{h}": rng.normal(size=len(perfect)) for h in HORIZONS})
    is_valid = (
        (perfect["date"] >= split["valid_start"]) & (perfect["date"] <= split["valid_end"])
    ).to_numpy()
    is_test = (perfect["date"] >= split["test_start"]).to_numpy()
    # "early": right on the validation dates only; "late": right on the test dates only
    for name, v_src, t_src in (("early", perfect, noise), ("late", noise, perfect)):
        v_src[is_valid].to_parquet(tmp_path / f"valid_{name}.parquet")
        t_src[is_test].to_parquet(tmp_path / f"test_{name}.parquet")
    res = score_folder(tmp_path)
    for h in HORIZONS:
        assert res["best_member"][h] == pytest.approx(1.0)  # "late", on the test dates
        assert abs(res["validation_best"][h]) < 0.2  # "early", chosen on the validation dates
        assert 0.2 < res["equal"][h] < 0.9
        assert res["prior"][h] is None  # neither name has a configured weight
