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
