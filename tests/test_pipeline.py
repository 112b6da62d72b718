"""jobs.pipeline's data stage driven by ``--set``: dotted keys into nested sections, values parsed as
YAML (integers, floats, lists, strings), a later ``--set`` of the same key winning; the stage's
outputs (the Parquet market, its oracle, the PostgreSQL table) follow the overridden settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ensemble.config import SyntheticConfig
from ensemble.data.store import PriceStore
from ensemble.data.synthetic import generate_market
from jobs import pipeline

pytestmark = pytest.mark.postgres


def test_no_train_runs_the_data_stage_with_the_set_overrides(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEST_PIPELINE_PG_DSN", pg_dsn)
    out = tmp_path / "run"
    sets = [
        "synthetic.n_tickers=8",  # int
        "synthetic.n_days=100",
        "synthetic.seed=1",
        "synthetic.seed=11",  # the later item wins
        "synthetic.signal_strength=0.5",  # float
        "horizons=[20, 5]",  # a YAML list (sorted by the settings)
        "postgres.dsn_env=TEST_PIPELINE_PG_DSN",  # strings, two levels down
        "postgres.table=pipeline_prices",
    ]
    argv = ["--no-train", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    assert pipeline.main(argv) == 0
    printed = capsys.readouterr().out

    want = generate_market(
        SyntheticConfig(n_tickers=8, n_days=100, seed=11, signal_strength=0.5), horizons=(5, 20)
    )
    prices = pd.read_parquet(out / "market.parquet")
    pd.testing.assert_frame_equal(prices, want.prices, check_dtype=False)
    oracle = pd.read_parquet(out / "market.oracle.parquet")
    assert [c for c in oracle.columns if c.startswith("oracle_h")] == ["oracle_h5", "oracle_h20"]
    pd.testing.assert_frame_equal(oracle, want.oracle, check_dtype=False)
    assert "synthetic market (seed 11): 8 tickers x 100 days = 800 rows" in printed

    # the overridden DSN variable and table name: the rows went there
    assert PriceStore(pg_dsn, table="pipeline_prices").count() == 800
    assert "PostgreSQL ($TEST_PIPELINE_PG_DSN): table holds 800 rows" in printed
    assert "== train stage ==" not in printed  # --no-train


def test_a_price_file_is_ingested_into_postgres_and_every_stage_reads_it_from_there(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--data FILE``: the file is loaded (contract checked), written into PostgreSQL and read back;
    training and scoring then read the prices from PostgreSQL (the version's stored settings say
    so), not from the file (removed before they run) nor from the synthetic market."""
    from ensemble.registry import ModelRegistry

    monkeypatch.setenv("TEST_FILE_PG_DSN", pg_dsn)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    market = generate_market(SyntheticConfig(n_tickers=24, n_days=320, seed=5), horizons=(5, 20))
    path = tmp_path / "prices.csv"
    market.prices.to_csv(path, index=False)
    registry = tmp_path / "registry"
    real_load = pipeline.load_file

    def load_then_remove(*a, **k):  # the later stages cannot read the file: only PostgreSQL
        out = real_load(*a, **k)
        path.unlink()
        return out

    monkeypatch.setattr(pipeline, "load_file", load_then_remove)
    sets = [
        "postgres.dsn_env=TEST_FILE_PG_DSN", "postgres.table=file_prices", "horizons=[5, 20]",
        "training.models=[xgboost, lightgbm]", "training.training_stocks=24", "training.training_days=200",
        "training.tuning_trials=1", "features.selection_k=12", f"registry_root={registry}",
        f"scoring.out_dir={tmp_path / 'scores'}", f"monitoring.log_dir={tmp_path / 'predlog'}",
        "ray.trial_cpus=0.5", "models.xgboost.n_estimators=10", "models.lightgbm.n_estimators=10",
    ]  # fmt: skip
    argv = ["--data", str(path), "--no-serve", "--no-backtest"] + [a for s in sets for a in ("--set", s)]
    assert pipeline.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{path}: 24 tickers x 320 days = 7,680 rows" in printed
    assert "PostgreSQL ($TEST_FILE_PG_DSN): 7,680 rows written" in printed
    assert PriceStore(pg_dsn, table="file_prices").count() == 7680
    reg = ModelRegistry(registry)
    (version,) = reg.list_versions()
    data = reg.manifest(version)["config"]["data"]
    assert data["source"] == "postgres" and data["path"] is None, data
    assert "== score stage ==" in printed and f"version {version} as of" in printed
    assert not path.exists()
