from __future__ import annotations

import pytest
from pydantic import ValidationError

from ensemble.config import MODEL_NAMES, Settings, load_settings


def test_defaults_match_the_platform_spec() -> None:
    s = Settings()
    assert s.training.training_stocks == 500
    assert s.training.training_days == 1000
    assert s.features.selection_k == 100
    assert s.training.max_epochs == 50
    assert s.training.tuning_trials == 30
    assert s.training.cost_limit_usd == 5.0
    assert s.horizons == [5, 20, 60]
    assert s.ensemble.weights == {
        "lstm": 0.20,
        "transformer": 0.20,
        "xgboost": 0.15,
        "lightgbm": 0.15,
        "random_forest": 0.10,
        "prophet": 0.20,
    }
    assert set(s.ensemble.weights) == set(MODEL_NAMES)
    assert s.serving.host == "127.0.0.1"
    assert s.data.source == "synthetic"


def test_yaml_overrides_defaults_and_keeps_the_rest(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  tuning_trials: 4\nsynthetic:\n  n_tickers: 20\nhorizons: [20, 5]\n")
    s = load_settings(p)
    assert s.training.tuning_trials == 4
    assert s.training.max_epochs == 50
    assert s.synthetic.n_tickers == 20
    assert s.horizons == [5, 20]


def test_overrides_dict_wins_over_yaml(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  tuning_trials: 4\n")
    s = load_settings(p, {"training": {"tuning_trials": 7}})
    assert s.training.tuning_trials == 7


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("training:\n  tuning_trails: 4\n", "tuning_trails"),  # typo must not pass silently
        ("ensemble:\n  weights: {lstm: 1.0, arima: 0.5}\n", "arima"),
        ("ensemble:\n  weights: {lstm: -1.0}\n", "non-negative"),
        ("horizons: [5, 5]\n", "horizons"),
        ("data:\n  source: files\n", "data.path"),
        ('postgres:\n  table: "prices; drop table x"\n', "identifier"),
        ("training:\n  cost_limit_usd: -1\n", "cost_limit_usd"),
    ],
)
def test_bad_config_is_rejected_naming_the_field(tmp_path, yaml_text: str, field: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ValidationError) as ei:
        load_settings(p)
    assert field in str(ei.value)


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_settings(tmp_path / "nope.yaml")


def test_dsn_comes_from_the_environment(monkeypatch) -> None:
    s = Settings()
    monkeypatch.delenv("ENSEMBLE_PG_DSN", raising=False)
    assert s.postgres.dsn() is None
    monkeypatch.setenv("ENSEMBLE_PG_DSN", "host=127.0.0.1 dbname=x")
    assert s.postgres.dsn() == "host=127.0.0.1 dbname=x"
