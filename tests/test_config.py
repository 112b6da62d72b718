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


# ---------------------------------------------------------------------------- ensemble weights
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_weight_that_is_not_finite_is_refused(tmp_path, value: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"ensemble:\n  weights: {{lstm: {value}, xgboost: 0.5}}\n")
    with pytest.raises(ValidationError, match=r"ensemble\.weights must be finite and non-negative"):
        load_settings(p)


def test_weights_set_for_a_model_that_is_not_trained_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"ensemble\.weights names \['lstm'\].*training\.models"):
        load_settings(
            overrides={
                "training": {"models": ["xgboost", "prophet"]},
                "ensemble": {"weights": {"xgboost": 0.5, "lstm": 0.5}},
            }
        )


def test_explicit_weights_for_trained_models_are_kept_as_given() -> None:
    s = load_settings(
        overrides={"training": {"models": ["xgboost", "prophet"]}, "ensemble": {"weights": {"xgboost": 1.0}}}
    )
    assert s.ensemble.weights == {"xgboost": 1.0}


def test_default_weights_are_restricted_to_the_trained_models() -> None:
    s = load_settings(overrides={"training": {"models": ["prophet", "xgboost"]}})
    assert s.ensemble.weights == {"xgboost": 0.15, "prophet": 0.20}
    # the restricted settings round-trip (a registry version stores model_dump())
    assert Settings.model_validate(s.model_dump()) == s


def test_training_needs_at_least_one_model() -> None:
    with pytest.raises(ValidationError, match=r"training\.models must name at least one model"):
        load_settings(overrides={"training": {"models": []}})


# ---------------------------------------------------------------------------- model hyperparameters
@pytest.mark.parametrize(
    ("model", "typo", "known"),
    [
        ("xgboost", "max_dept", "max_depth"),
        ("prophet", "regresors", "regressors"),
        ("lstm", "hiden", "dropout"),
    ],
)
def test_an_unknown_hyperparameter_is_refused_at_load(tmp_path, model: str, typo: str, known: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"models:\n  {model}: {{{typo}: 4}}\n")
    with pytest.raises(ValidationError) as ei:
        load_settings(p)
    msg = str(ei.value)
    assert f"models.{model}: unknown hyperparameter {typo!r}" in msg
    assert f"'{known}'" in msg  # the known keys are listed


def test_known_hyperparameters_are_accepted() -> None:
    s = load_settings(
        overrides={"models": {"xgboost": {"max_depth": 4}, "prophet": {"regressors": ["mkt_log_level"]}}}
    )
    assert s.models["xgboost"] == {"max_depth": 4}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_names_are_exactly_what_the_model_accepts(name: str) -> None:
    from ensemble.models import get_model_class

    cls = get_model_class(name)
    names = cls.param_names()
    assert names and all(isinstance(n, str) for n in names)
    defaults = {**getattr(cls, "defaults", {}), **getattr(cls, "model_defaults", {})}
    accepted = {n: defaults[n] for n in names if n in defaults}
    cls(**accepted)  # every declared name with its default value is accepted
    with pytest.raises(TypeError, match="no_such_param"):
        cls(no_such_param=1)


# ---------------------------------------------------------------------------- --set overrides
def test_parse_overrides_builds_a_nested_dict() -> None:
    from ensemble.config import parse_overrides

    got = parse_overrides(["training.tuning_trials=5", "training.models=[xgboost]", "ray.address=auto"])
    assert got == {"training": {"tuning_trials": 5, "models": ["xgboost"]}, "ray": {"address": "auto"}}


@pytest.mark.parametrize("value", ["no", "yes", "auto"])
def test_use_gpu_yes_and_no_survive_yaml_booleans(tmp_path, value: str) -> None:
    from ensemble.config import parse_overrides

    assert load_settings(overrides=parse_overrides([f"ray.use_gpu={value}"])).ray.use_gpu == value
    p = tmp_path / "c.yaml"
    p.write_text(f"ray:\n  use_gpu: {value}\n")
    assert load_settings(p).ray.use_gpu == value


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (["training=5", "training.x=1"], r"--set training\.x: 'training' was set to 5"),
        (["training.x.y=1", "training.x.y.z=2"], r"--set training\.x\.y\.z: 'training\.x\.y' was set to 1"),
        (["tuning_trials"], "KEY=VALUE"),
        (["=3"], "KEY=VALUE"),
        (["training..seed=3"], "KEY=VALUE"),
        (["training.models=[xgboost"], r"--set training\.models: '\[xgboost' is not a valid YAML value"),
    ],
)
def test_a_bad_override_is_a_clear_config_error(items: list[str], match: str) -> None:
    from ensemble.config import ConfigError, parse_overrides

    with pytest.raises(ConfigError, match=match):
        parse_overrides(items)


def test_parse_overrides_is_still_importable_from_the_train_job() -> None:
    from ensemble.config import parse_overrides
    from jobs.train import parse_overrides as from_jobs

    assert from_jobs is parse_overrides


# ---------------------------------------------------------------------------- config file errors
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("training: [1\n", r"c\.yaml is not valid YAML: .*\(line 2, column 1\)"),
        ("- 1\n- 2\n", r"c\.yaml must hold a mapping at top level, got list"),
        ("!!python/object:os.system x\n", r"c\.yaml is not valid YAML"),
    ],
)
def test_an_unreadable_config_file_is_a_config_error(tmp_path, text: str, match: str) -> None:
    from ensemble.config import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(p)


def test_validation_errors_are_described_one_line_each_with_the_dotted_field() -> None:
    from ensemble.config import SyntheticConfig, describe_validation_error

    with pytest.raises(ValidationError) as ei:
        load_settings(overrides={"training": {"tuning_trials": 0, "tuning_trails": 3}, "horizons": [5, 5]})
    lines = describe_validation_error(ei.value)
    assert "training.tuning_trials: Input should be greater than or equal to 1 (got 0)" in lines
    assert any(
        line.startswith("training.tuning_trails: unknown setting (did you mean 'tuning_trials'?); known: [")
        for line in lines
    )
    assert "horizons must be distinct positive integers, got [5, 5]" in lines
    assert len(lines) == 3 and all("\n" not in line for line in lines)

    with pytest.raises(ValidationError) as ei:
        SyntheticConfig(n_tickers=1)
    assert describe_validation_error(ei.value) == [
        "synthetic.n_tickers: Input should be greater than or equal to 2 (got 1)"
    ]


def test_readme_configuration_reference_is_generated_from_the_settings() -> None:
    """README's configuration table is ``python -m ensemble.config``'s output: every setting with its
    current default and the comment beside it; it cannot drift from the code."""
    from pathlib import Path

    from ensemble.config import Settings, config_reference

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert start in readme and end in readme
    block = readme.split(start, 1)[1].split(end, 1)[0]
    generated = config_reference()
    assert block == generated, "README's configuration reference is stale: paste `python -m ensemble.config`"
    # every leaf setting is a row, with its default
    rows = {line.split("`")[1]: line for line in generated.splitlines()[2:]}
    assert {"horizons", "training.tuning_trials", "ray.cpus_per_worker", "ensemble.weights"} <= set(rows)
    assert f"`{Settings().training.tuning_trials}`" in rows["training.tuning_trials"]
    assert len(rows) > 100


def test_members_are_built_with_the_configured_window_epochs_and_seed() -> None:
    """features.sequence_length, training.max_epochs and training.seed reach the sequence members
    (unless models.<name> pins them); the tree members' parameters are only their own."""
    from ensemble.models import create_model
    from ensemble.training import member_params, sequence_lead

    s = load_settings(
        None,
        {
            "features": {"sequence_length": 12},
            "training": {"max_epochs": 4, "seed": 9},
            "models": {"transformer": {"seq_len": 30}, "xgboost": {"n_estimators": 7}},
        },
    )
    lstm = create_model("lstm", horizons=s.horizons, **member_params(s, "lstm")).resolved_params()
    assert (lstm["seq_len"], lstm["max_epochs"], lstm["seed"]) == (12, 4, 9)
    assert member_params(s, "transformer")["seq_len"] == 30  # pinned
    assert member_params(s, "xgboost") == {"n_estimators": 7}
    assert sequence_lead(s) == 30 + 5
    assert sequence_lead(load_settings(None, {"features": {"sequence_length": 12}})) == 12 + 5
