"""Every command in README.md's ``bash`` blocks is checked, so the README cannot rot (issue 16).

Each command (comments stripped, ``\\`` continuations joined) must be a key of :data:`CHECKS`, which
says how it is checked:

* ``run``: run here exactly as written, from the repository root (cheap, self-contained); exit 0.
* ``flags``: too long for CI (full-scale training, the quality benches) or written with a value of
  the reader's own (``<id>``, a DSN, a cluster): its entry point must exist and every ``--flag`` it
  uses must be in that entry point's ``--help`` (for ``ray job submit ... -- cmd``, the part after
  ``--``), and a config file it names must exist and load.
* ``serve-config``: ``cluster/serve.yaml`` validates against Ray Serve's schema and the application's
  own arguments (``serving.app.AppArgs``) and names only the application's deployments.
* ``ray-up``: ``cluster/cloud.yaml`` validates against Ray's cluster-launcher schema.
* ``tests/...::test_...``: a test that runs it (or the job it starts) for real; the test must exist.

A README command missing from CHECKS, or a CHECKS entry no longer in the README, fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PY = ".venv/bin/python"

CHECKS: dict[str, str] = {
    "make run": "tests/test_main_job.py::test_make_run_serves_backtests_and_stops_on_ctrl_c",
    "make test": "ci",  # .ci/run runs it: this file is part of it
    ".venv/bin/python -m jobs.pipeline --config cluster/quick.yaml --data ../shared/data/sp500_daily.parquet --sectors ../shared/data/sp500_sectors.csv --clean repair": "flags",
    ".venv/bin/python -m ensemble.data.synthetic --tickers 500 --days 1260 --seed 7 --out market.parquet --stats": "run",
    ".venv/bin/python -m ensemble.data.sp500_report": "run",
    '.venv/bin/python -m jobs.ingest market.parquet --dsn "host=127.0.0.1 port=5432 dbname=market user=me"': "flags",
    ".venv/bin/python -m ensemble.features --list": "run",
    ".venv/bin/python -m ensemble.features --list --source ../shared/data/sp500_daily.parquet": "run",
    ".venv/bin/python bench/features.py": "flags",
    ".venv/bin/python bench/quality.py": "flags",
    ".venv/bin/python bench/quality.py --source sp500": "flags",
    ".venv/bin/python bench/quality.py --data prices.parquet --sectors sectors.csv": "flags",
    ".venv/bin/python bench/interval_coverage.py --source synthetic": "run",
    ".venv/bin/python -m jobs.train --config cluster/train.yaml": "flags",
    'ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train --config cluster/train.yaml --registry "$PWD/artifacts/registry"': "flags",
    ".venv/bin/python -m jobs.backtest --config cluster/backtest_quick.yaml": "flags",
    ".venv/bin/python -m jobs.backtest --config cluster/backtest_sp500.yaml --out artifacts/backtest/sp500": "flags",
    ".venv/bin/python -m jobs.score": "flags",
    ".venv/bin/python -m jobs.score --as-of 2020-02-25 --version <id> --top 10 --out artifacts/scores/today": "flags",
    ".venv/bin/python -m jobs.score --ticker TEC001": "flags",
    ".venv/bin/python -m jobs.monitor": "flags",
    ".venv/bin/python -m jobs.monitor --log artifacts/predlog --as-of 2020-02-25 --version <id> --out report.json": "flags",
    ".venv/bin/python -m jobs.retrain --config cluster/train.yaml": "flags",
    ".venv/bin/python -m jobs.retrain --config cluster/train.yaml --url http://127.0.0.1:8000": "flags",
    "30 6 * * 1-5 cd /srv/ensemble && .venv/bin/python -m jobs.retrain --config cluster/train.yaml --url http://127.0.0.1:8000 >> artifacts/retrain.log 2>&1": "flags",
    'ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.retrain --config cluster/train.yaml --registry "$PWD/artifacts/registry"': "flags",
    "cluster/local.sh start --num-cpus 2": "tests/test_local_cluster.py::test_stop_leaves_no_process_of_the_cluster_behind",
    "cluster/local.sh add-worker --num-cpus 1": "tests/test_local_cluster.py::test_stop_leaves_no_process_of_the_cluster_behind",
    'eval "$(cluster/local.sh env)"': "tests/test_local_cluster.py::test_stopping_forgets_rays_record_of_our_head_only",
    "cluster/local.sh stop": "tests/test_local_cluster.py::test_stop_leaves_no_process_of_the_cluster_behind",
    "ray up cluster/cloud.yaml": "ray-up",
    "export ENSEMBLE_API_KEY=...": "tests/test_serving.py::test_admin_routes_need_the_key",
    "serve run cluster/serve.yaml": "serve-config",
    "curl -s localhost:8000/api/health": "tests/test_serving.py::test_health_reports_every_member_and_the_seed_shape",
    "curl -s -XPOST localhost:8000/api/predict -H 'Content-Type: application/json' -d '{\"ticker\": \"TEC001\"}'": "tests/test_serving.py::test_predict_equals_scoring_score",
    "python -m jobs.deploy --version v2026...": "flags",
    "serve deploy cluster/serve.yaml --address http://127.0.0.1:8265": "serve-config",
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks: comments (a ``#`` outside quotes) stripped, ``\\``
    continuations joined, runs of spaces made one."""
    out: list[str] = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            cmd = _strip_comment(line).strip()
            if cmd:
                out.append(re.sub(r"\s+", " ", cmd))
    return out


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


COMMANDS = readme_commands((REPO / "README.md").read_text())


def test_every_readme_command_is_checked_and_every_check_is_in_the_readme() -> None:
    assert len(COMMANDS) >= 30
    unchecked = [c for c in COMMANDS if c not in CHECKS]
    assert not unchecked, f"README commands with no entry in CHECKS: {unchecked}"
    stale = [c for c in CHECKS if c not in COMMANDS]
    assert not stale, f"CHECKS entries no longer in the README: {stale}"


@pytest.mark.parametrize("cmd", [c for c, how in CHECKS.items() if how.startswith("tests/")])
def test_the_test_that_covers_it_exists(cmd: str) -> None:
    path, _, name = CHECKS[cmd].partition("::")
    assert re.search(rf"^def {re.escape(name)}\(", (REPO / path).read_text(), flags=re.M), CHECKS[cmd]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("cmd", [c for c, how in CHECKS.items() if how == "run"])
def test_runs_as_written(cmd: str, tmp_path: Path) -> None:
    if ("../shared/data" in cmd or "sp500" in cmd) and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("the real S&P 500 sample is not at ../shared/data")
    writes = [REPO / p for p in ("market.parquet", "market.oracle.parquet")]
    if "--out market.parquet" in cmd and any(p.exists() for p in writes):
        pytest.skip("a market.parquet of your own is in the checkout: not overwritten")
    made = [p for p in writes if not p.exists()]
    try:
        proc = subprocess.run(
            cmd, shell=True, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
        )
    finally:
        for p in made:  # what the command wrote into the checkout
            p.unlink(missing_ok=True)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.stdout.strip(), cmd


def _entry(cmd: str) -> tuple[list[str], list[str]]:
    """The entry point's ``--help`` command line and the flags ``cmd`` passes to it."""
    if " -- " in cmd:  # ray job submit ... -- the entrypoint
        cmd = cmd.split(" -- ", 1)[1]
    if "&&" in cmd:  # a cron line: cd ... && the command
        cmd = cmd.split("&&", 1)[1]
    words = shlex.split(cmd.split(">>", 1)[0])
    flags = [w.split("=", 1)[0] for w in words if w.startswith("--")]
    if "-m" in words:
        module = words[words.index("-m") + 1]
        return [sys.executable, "-m", module, "--help"], flags
    script = next(w for w in words if w.endswith(".py"))
    return [sys.executable, script, "--help"], flags


@pytest.mark.parametrize("cmd", [c for c, how in CHECKS.items() if how == "flags"])
def test_entry_point_and_flags_exist(cmd: str) -> None:
    help_cmd, flags = _entry(cmd)
    proc = subprocess.run(help_cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (help_cmd, proc.stderr[-2000:])
    # an option of the parser: argparse lists it at the start of a line of its options, not in prose
    missing = [
        f
        for f in flags
        if not re.search(rf"^\s+(?:-\w \S+, |-\w, )?{re.escape(f)}(?![\w-])", proc.stdout, re.M)
    ]
    assert not missing, f"{cmd}: {missing} not in {' '.join(help_cmd[1:])}"
    for path in re.findall(r"(cluster/[\w.]+\.yaml)", cmd):
        from ensemble.config import load_settings

        load_settings(str(REPO / path))  # exists and validates


def test_serve_config_validates() -> None:
    from ray.serve.schema import ServeDeploySchema

    from serving.app import AppArgs

    doc = yaml.safe_load((REPO / "cluster/serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc)
    assert schema.http_options.host == "127.0.0.1"
    from ensemble.config import MODEL_NAMES

    for app in doc["applications"]:
        assert app["import_path"] == "serving.app:build_app"
        AppArgs.model_validate(app["args"])
        names = {d["name"] for d in app["deployments"]}
        assert names <= {*MODEL_NAMES, "Ensemble", "Api"}, names
        cpus = sum(d["ray_actor_options"]["num_cpus"]
                   * d.get("autoscaling_config", {}).get("max_replicas", d.get("num_replicas", 1))
                   for d in app["deployments"])  # fmt: skip
        assert cpus <= 2.0, cpus  # the whole application at its maximum fits 2 cores


def test_cloud_cluster_config_validates() -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    doc = yaml.safe_load((REPO / "cluster/cloud.yaml").read_text())
    jsonschema.validate(doc, schema)
