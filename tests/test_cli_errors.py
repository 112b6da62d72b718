"""Every command line fails the same way: one ``error: ...`` line per problem on stderr, no traceback,
exit 2 for a usage or configuration error, 3 for data that break the contract; a bug keeps its
traceback (exit 1). The CLIs run as subprocesses, as a user runs them; each fails before any data
is generated or Ray started, so these tests take about a second each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ensemble.data.schema import DataValidationError

REPO = Path(__file__).resolve().parents[1]
EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 2, 3, 130  # the documented contract (ensemble/cli.py)


def _cli(module: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _assert_clear_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, proc.stderr
    for needle in needles:
        assert any(needle in line for line in errors), (needle, proc.stderr)


@pytest.fixture
def bad_prices(tmp_path: Path) -> Path:
    """A contract table whose second row has a negative close."""
    p = tmp_path / "prices.csv"
    pd.DataFrame(
        {
            "date": ["2024-01-02", "2024-01-03"],
            "ticker": ["AAA", "AAA"],
            "open": [1.0, 1.0],
            "high": [1.0, 1.0],
            "low": [1.0, 1.0],
            "close": [1.0, -1.0],
            "volume": [10.0, 10.0],
        }
    ).to_csv(p, index=False)
    return p


# ---------------------------------------------------------------------------- jobs.train
@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        (
            "training:\n  tuning_trials: 0\n",
            ("training.tuning_trials: Input should be greater than or equal to 1 (got 0)",),
        ),
        ("training:\n  tuning_trails: 4\n", ("training.tuning_trails: unknown setting",)),
        ("models:\n  xgboost: {max_dept: 4}\n", ("models.xgboost", "'max_dept'", "'max_depth'")),
        ("ensemble:\n  weights: {lstm: .inf}\n", ("ensemble.weights must be finite",)),
        ("training:\n  models: [xgboost]\nensemble:\n  weights: {lstm: 1.0}\n", ("ensemble.weights names",)),
        ("training:\n  models: []\n", ("training.models must name at least one model",)),
        ("training: [1\n", ("bad.yaml is not valid YAML", "line 2")),
    ],
)
def test_train_refuses_a_bad_config_file_in_one_line(tmp_path: Path, yaml_text: str, needles) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    proc = _cli("jobs.train", "--config", cfg, "--registry", tmp_path / "registry")
    _assert_clear_error(proc, EXIT_USAGE, *needles)
    assert not (tmp_path / "registry").exists()


def test_train_reports_a_missing_config_file(tmp_path: Path) -> None:
    proc = _cli("jobs.train", "--config", tmp_path / "nope.yaml")
    _assert_clear_error(proc, EXIT_USAGE, "config file not found", "nope.yaml")


def test_train_reports_a_conflicting_set_naming_the_key() -> None:
    proc = _cli("jobs.train", "--set", "training=5", "--set", "training.x=1")
    _assert_clear_error(proc, EXIT_USAGE, "--set training.x: 'training' was set to 5")


def test_train_reports_a_contract_violation_with_exit_3(tmp_path: Path, bad_prices: Path) -> None:
    proc = _cli(
        "jobs.train", "--set", "data.source=files", "--set", f"data.path={bad_prices}",
        "--registry", tmp_path / "registry",
    )  # fmt: skip
    _assert_clear_error(proc, EXIT_DATA, "close_positive", "'AAA'")


# ---------------------------------------------------------------------------- other entry points
def test_pipeline_refuses_a_bad_config_before_the_data_stage(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("synthetic:\n  n_tickers: 1\n")
    proc = _cli("jobs.pipeline", "--config", cfg, "--out", tmp_path / "run", "--no-train")
    _assert_clear_error(proc, EXIT_USAGE, "synthetic.n_tickers: Input should be greater than or equal to 2")
    assert not (tmp_path / "run").exists()  # nothing was generated


def test_pipeline_reports_a_set_that_conflicts_with_its_own_flags(tmp_path: Path) -> None:
    proc = _cli("jobs.pipeline", "--set", "synthetic=7", "--tickers", "20", "--out", tmp_path / "run")
    _assert_clear_error(proc, EXIT_USAGE, "'synthetic' was set to 7")


def test_ingest_reports_contract_and_settings_errors(tmp_path: Path, bad_prices: Path) -> None:
    dsn = "host=127.0.0.1 port=1 dbname=unused"  # never reached: every error comes first
    _assert_clear_error(_cli("jobs.ingest", bad_prices, "--dsn", dsn), EXIT_DATA, "close_positive")
    proc = _cli("jobs.ingest", "synthetic", "--tickers", "1", "--dsn", dsn)
    _assert_clear_error(proc, EXIT_USAGE, "synthetic.n_tickers")


def test_synthetic_cli_reports_a_refused_setting(tmp_path: Path) -> None:
    proc = _cli("ensemble.data.synthetic", "--tickers", "1", "--out", tmp_path / "m.parquet")
    _assert_clear_error(proc, EXIT_USAGE, "synthetic.n_tickers: Input should be greater than or equal to 2")


def test_local_cluster_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    proc = _cli("jobs.local_cluster", "add-worker", "--state-dir", tmp_path / "state")
    _assert_clear_error(proc, 1, "no running local cluster recorded", "run `start` first")


# ---------------------------------------------------------------------------- run_main itself
def test_a_bug_keeps_its_traceback() -> None:
    code = "import sys; from ensemble.cli import run_main; sys.exit(run_main(lambda: 1 / 0))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_run_main_maps_user_errors_to_exit_codes(capsys) -> None:
    from ensemble.cli import run_main

    def contract() -> int:
        raise DataValidationError("close_positive", "close must be > 0", ticker="AAA")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_main(contract) == EXIT_DATA
    assert capsys.readouterr().err == (
        "error: data contract rule 'close_positive' violated: close must be > 0; ticker 'AAA'\n"
    )
    assert run_main(interrupted) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "error: interrupted\n"
    assert run_main(lambda: 0) == 0 and run_main(lambda: None) == 0 and run_main(lambda: 4) == 4

    def bug() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # not a user error: re-raised, traceback shown
        run_main(bug)


# ------------------------------------------------------------------ jobs.score, jobs.monitor
@pytest.mark.parametrize("module", ["jobs.score", "jobs.monitor"])
@pytest.mark.parametrize("value", ["2023-02-30", "tomorrow-ish", "", "now", "2023-01-01T10:00+05:00"])
def test_a_bad_as_of_date_is_a_usage_error_naming_the_option(module: str, value: str, capsys) -> None:
    """argparse's own form (usage line, ``error: argument --as-of: ...``, exit 2), before any work:
    only an ISO date is a date (pandas would read "now" or "" too)."""
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--as-of", value])
    assert exc.value.code == EXIT_USAGE
    assert f"error: argument --as-of: must be a date YYYY-MM-DD, got {value!r}" in capsys.readouterr().err


def test_an_iso_as_of_date_is_passed_on_as_yyyy_mm_dd() -> None:
    from ensemble.cli import date_arg

    assert date_arg("2023-06-30") == "2023-06-30"
    assert date_arg(" 20230630 ") == "2023-06-30"
