"""jobs.train end to end: submitted with `ray job submit` to a local head node (token auth), and
run in-process; each run leaves a committed registry version with every model, metrics and cost."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ensemble.config import MODEL_NAMES
from ensemble.data.pgserver import free_port
from ensemble.registry import ModelRegistry
from jobs import local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "synthetic": {"n_tickers": 24, "n_days": 420, "seed": 3},
    "features": {"selection_k": 20, "sequence_length": 10},
    "training": {"training_stocks": 24, "training_days": 300, "max_epochs": 2, "tuning_trials": 2},
    "ray": {"trial_cpus": 0.5, "cpus_per_worker": 0.5, "prophet_task_cpus": 0.5, "max_failures": 1},
    "models": {
        "xgboost": {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1},
        "lightgbm": {"n_estimators": 20, "early_stopping_rounds": 5, "n_jobs": 1},
        "random_forest": {"n_estimators": 10, "max_depth": 4, "n_jobs": 1},
        "lstm": {"hidden": 8, "batch_size": 128, "max_samples_per_epoch": 1000},
        "transformer": {"d_model": 16, "batch_size": 128, "max_samples_per_epoch": 1000},
        "prophet": {"min_history": 100, "regressors": ["mkt_log_level"]},  # the market as a regressor
    },
}


def write_config(path: Path, **extra: object) -> Path:
    cfg = {**TINY, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):
    sdir = tmp_path_factory.mktemp("ray-state")
    st = local_cluster.start(
        num_cpus=2, port=free_port(), dashboard_port=free_port(), auth="token", sdir=sdir
    )
    try:
        yield st
    finally:
        local_cluster.stop(sdir)


def test_ray_job_submit_trains_and_registers_a_version(head, tmp_path: Path) -> None:
    # a validation window over 2 x 60 dates: every horizon has labels in the first half, from which
    # the ensemble's out-of-fold forecasts of the second half learn (with TINY's 63 dates, only 3
    # carry an h60 label)
    # Prophet's validation refits at 15 (not scoring's 21): the training setting is the one read
    tr_cfg = {**TINY["training"], "valid_fraction": 0.35, "prophet_valid_refit_every_days": 15}
    cfg = write_config(tmp_path / "tiny.yaml", training=tr_cfg)
    registry = tmp_path / "registry"
    env = {**os.environ, **head.env()}
    env.pop("RAY_ADDRESS", None)  # the job client talks to the dashboard given by --address
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin, "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO), "--",
        "python", "-m", "jobs.train", "--config", str(cfg), "--registry", str(registry), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "succeeded" in out

    reg = ModelRegistry(registry)
    (version,) = reg.list_versions()
    assert f"version {version}" in out
    man = reg.manifest(version)
    assert sorted(man["models"]) == sorted(MODEL_NAMES), man["notes"]
    assert reg.resolve("production") == version  # the first version is promoted
    assert man["cost"]["total_usd"] > 0 and man["cost"]["limit_usd"] == 5.0
    # every model, the ensemble and the synthetic market's oracle scored on the validation window: a
    # finite Rank IC and ICIR per horizon, over every validation date whose h-day label is known; the
    # ensemble's, out of fold on two blocks of dates (n1, n2) with the labels that overlap the other
    # block purged, over the dates of a block whose fold keeps >= 2 labelled dates: the first block
    # from the second's dates at least h after it (n2 - 2h), the second from the first's labels
    # realised before it (n1 - h), whose last h dates have no label
    valid_days = reg.load_extra(version, "training")["split"]["valid_days"]
    assert set(man["metrics"]) == {*MODEL_NAMES, "ensemble", "oracle"}
    assert valid_days > 2 * 60 + 4
    n1, n2 = -(-valid_days // 2), valid_days // 2
    for name, m in man["metrics"].items():
        for h in (5, 20, 60):
            dates = valid_days - h
            if name == "ensemble":
                dates = (n1 if n2 - 2 * h >= 2 else 0) + (n2 - h if n1 - h >= 2 else 0)
            assert m[f"valid_ic_dates_h{h}"] == dates, (name, h, m)
            for key in (f"valid_rank_ic_h{h}", f"valid_icir_h{h}"):  # NaN is stored as null
                assert isinstance(m[key], float) and math.isfinite(m[key]), (name, key, m)
    assert man["metrics"]["oracle"]["valid_rank_ic_h5"] > 0, man["metrics"]["oracle"]
    # the forecast drift reference: the served ensemble's forecasts of every validation row
    fref = reg.load_extra(version, "drift_reference")["forecasts"]
    assert sorted(fref, key=int) == ["5", "20", "60"], sorted(fref)
    assert {r["n"] for r in fref.values()} == {fref["5"]["n"]} and fref["5"]["nan_share"] == 0.0, fref
    pre = reg.load_extra(version, "preprocessor")
    assert len(pre["selected"]) == 20
    # training.tuned_models (the forest) tuned on Ray Tune; the boosters fitted with their DEFAULTS
    details, stages = reg.load_extra(version, "training")["models"], man["cost"]["stages"]
    assert details["random_forest"]["trials_run"] == 2 and "random_forest.tune" in stages, stages
    for name in ("xgboost", "lightgbm"):
        assert "best_params" not in details[name] and f"{name}.tune" not in stages, (name, details[name])
        assert name in stages, stages  # the plain fit, metered
    loaded = reg.load_version("production", models=["xgboost", "prophet", "lstm", "transformer"])
    assert loaded["xgboost"].horizons == (5, 20, 60)
    for name in ("lstm", "transformer"):  # the configured window (features.sequence_length) reached them
        assert loaded[name].resolved_params()["seq_len"] == TINY["features"]["sequence_length"], name
    assert loaded["prophet"].regressors == ["mkt_log_level"] and len(loaded["prophet"].tickers_) == 24
    # Prophet was validated as scoring serves it (fitted through the training end, each model refitted
    # on the 16th date after its last fit: more than training.prophet_valid_refit_every_days = 15
    # stale) and is stored refitted through the validation end (the latest it can be without looking
    # past the cutoff)
    from ensemble.scoring import prophet_fitted_through

    training = reg.load_extra(version, "training")
    split, stored = training["split"], training["models"]["prophet"]["stored_fit"]
    refits = training["models"]["prophet"]["valid_refits"]
    assert len(refits) == valid_days // 16 and len(refits) >= 7, refits
    assert all(r["tickers"] == 24 and r["failed"] == [] for r in refits), refits
    when = [r["as_of"] for r in refits]
    assert (
        when == sorted(set(when))
        and split["valid_start"][:10] < when[0] <= when[-1] <= split["valid_end"][:10]
    )
    assert stored["through"] == split["valid_end"][:10] and stored["tickers"] == 24, stored
    through = prophet_fitted_through(loaded["prophet"])
    assert {str(d.date()) for d in through.values()} == {split["valid_end"][:10]}, through


def test_without_a_token_the_submission_is_refused(head, tmp_path: Path) -> None:
    """The head's job API refuses a submission without its token (missing: 401, wrong: 403, and what
    ``ray job submit`` says then) and accepts the same submission with it (the control)."""
    import json
    import urllib.error
    import urllib.request

    def post(token: str | None) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps({"entrypoint": "python -c 0"}).encode()
        req = urllib.request.Request(f"{head.dashboard_url}/api/jobs/", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    wrong = "0" * 64
    assert post(None) == (401, "Unauthorized: Missing authentication token")
    assert post(wrong) == (403, "Forbidden: Invalid authentication token")
    token = Path(head.token_path).read_text().strip()
    deadline = time.monotonic() + 90
    while (
        True
    ):  # control: the same submission with the head's own token (its job agent may still be starting)
        status, body = post(token)
        if status != 500 or "No available agent" not in body or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert status == 200 and json.loads(body)["submission_id"], body
    # the CLI with a wrong token: refused, and it says why
    (tmp_path / "wrong_token").write_text(wrong)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "wrong_token"))
    ray_bin = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.run(
        [ray_bin, "job", "submit", "--address", head.dashboard_url, "--no-wait", "--", "python", "-c", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Authentication failed: Forbidden: Invalid authentication token" in out, (
        out
    )
    assert "submitted successfully" not in out


def test_prophet_regressors_are_added_from_the_market_or_the_features() -> None:
    import numpy as np
    import pandas as pd

    from ensemble.config import load_settings
    from ensemble.training import add_prophet_regressors

    dates = pd.bdate_range("2021-01-04", periods=3)
    prices = pd.DataFrame(
        {"date": np.r_[dates, dates], "ticker": ["A"] * 3 + ["B"] * 3, "close": [1.0, 1.1, 1.2] * 2}
    )
    feats = prices[["date", "ticker"]].assign(rsi_14=np.arange(6.0), kept=0.0)
    frame = feats[["date", "ticker", "kept"]].assign(close=prices["close"])
    s = load_settings(overrides={"models": {"prophet": {"regressors": ["mkt_log_level", "rsi_14", "kept"]}}})
    out = add_prophet_regressors(frame, s, prices, feats)
    assert list(out.columns) == ["date", "ticker", "kept", "close", "mkt_log_level", "rsi_14"]
    assert np.allclose(out["mkt_log_level"], np.r_[0.0, np.log(1.1), np.log(1.2)].tolist() * 2)
    assert out["rsi_14"].tolist() == list(range(6))
    bad = load_settings(overrides={"models": {"prophet": {"regressors": ["no_such_feature"]}}})
    with pytest.raises(ValueError, match="models.prophet.regressors: 'no_such_feature'"):
        add_prophet_regressors(frame, bad, prices, feats)
