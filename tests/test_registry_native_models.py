"""Damaged LightGBM and XGBoost model files raise a Python exception; they never crash or hang the process.

LightGBM's and XGBoost's own parsers kill the process on a truncated or edited file (SIGSEGV, or SIGABRT
from LightGBM's OpenMP tree loop) or load it silently wrong. Inside the registry the sha256 manifest
refuses such a file before any parser sees it; ``Forecaster.load(directory)`` outside the registry
checks the file itself (``ensemble.models.native_check``).

Every load of a damaged file runs in a child interpreter (:func:`run_isolated`): if a guard failed, the
child would die, not pytest, and the test would fail on its exit status.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _frames import make_feature_frame  # noqa: E402

from ensemble.models import get_model_class  # noqa: E402
from ensemble.registry import ModelRegistry  # noqa: E402

SMALL = {
    "lightgbm": {
        "n_estimators": 20,
        "learning_rate": 0.2,
        "num_leaves": 7,
        "min_child_samples": 20,
        "n_jobs": 1,
    },
    "xgboost": {"n_estimators": 20, "learning_rate": 0.2, "max_depth": 3, "n_jobs": 1},
}
ARTIFACT = {"lightgbm": "lightgbm_h5.txt", "xgboost": "xgboost_h5.ubj"}

LOAD = """
import sys
from ensemble.models import get_model_class
try:
    model = get_model_class(sys.argv[1]).load(sys.argv[2])
except Exception as exc:
    print(f"RAISED {type(exc).__name__}: {exc}")
else:
    print("LOADED")
"""

REGISTRY_LOAD = """
import sys
from ensemble.registry import ModelRegistry
try:
    ModelRegistry(sys.argv[1]).load_version(sys.argv[2])
except Exception as exc:
    print(f"RAISED {type(exc).__name__}: {exc}")
else:
    print("LOADED")
"""


def run_isolated(code: str, *args: str, timeout: float = 180) -> str:
    """Run ``code`` in a fresh interpreter; its stdout, after asserting that it exited normally (a
    native crash shows as a negative exit status, a hang as a timeout)."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"the child process died (exit status {done.returncode}): {done.stderr[-2000:]}"
    )
    return done.stdout.strip()


FRAME = make_feature_frame(n_tickers=8, n_days=140, n_features=5, seed=3)


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    return {name: get_model_class(name)(**params).fit(FRAME) for name, params in SMALL.items()}


@pytest.fixture(scope="module")
def saved(fitted: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each fitted model saved to its own directory (never modified)."""
    return {name: model.save(tmp_path_factory.mktemp(name)) for name, model in fitted.items()}


def damaged_copy(src: Path, dst: Path, name: str, damage: Callable[[bytes], bytes]) -> Path:
    """A copy of the saved model directory ``src`` whose horizon-5 artifact went through ``damage``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        data = f.read_bytes()
        (dst / f.name).write_bytes(damage(data) if f.name == ARTIFACT[name] else data)
    return dst


def truncate(fraction: float) -> Callable[[bytes], bytes]:
    return lambda data: data[: int(len(data) * fraction)]


def edit_tree(index: int, key: str, change: Callable[[list[str]], list[str]]) -> Callable[[bytes], bytes]:
    """Edit field ``key`` of tree ``index`` in a LightGBM text model and rewrite ``tree_sizes`` to match,
    so that the edit gets past the byte-length checks (what a careful forger would do)."""

    def damage(data: bytes) -> bytes:
        text = data.decode()
        starts = [m.start() for m in re.finditer(r"^Tree=\d+\n", text, re.M)]
        end = text.index("end of trees\n")
        blocks = [text[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
        line = re.search(rf"^{key}=(.*)$", blocks[index], re.M)
        assert line is not None, f"tree {index} has no {key}"
        values = change(line.group(1).split(" "))
        blocks[index] = blocks[index].replace(line.group(0), f"{key}={' '.join(values)}", 1)
        sizes = " ".join(str(len(b.encode())) for b in blocks)
        head = re.sub(
            r"^tree_sizes=.*$", lambda _: f"tree_sizes={sizes}", text[: starts[0]], count=1, flags=re.M
        )
        return (head + "".join(blocks) + text[end:]).encode()

    return damage


def cut_after_trees(data: bytes) -> bytes:
    return data[: data.index(b"feature_importances:")]


LIGHTGBM_DAMAGE = {
    "truncated-10%": truncate(0.10),
    "truncated-50%": truncate(0.50),
    "truncated-75%": truncate(0.75),
    "truncated-99%": truncate(0.99),
    "cut-after-trees": cut_after_trees,
    "tree-sizes-edited": lambda d: re.sub(
        rb"tree_sizes=(\d+)", lambda m: b"tree_sizes=" + str(int(m[1]) + 37).encode(), d, count=1
    ),
    "num-leaves-edited": edit_tree(0, "num_leaves", lambda v: [str(int(v[0]) + 2)]),
    "leaf-values-dropped": edit_tree(1, "leaf_value", lambda v: v[:-1]),
    "split-feature-out-of-range": edit_tree(0, "split_feature", lambda v: ["4000", *v[1:]]),
    "child-out-of-range": edit_tree(0, "right_child", lambda v: ["999", *v[1:]]),
    "cycle": edit_tree(0, "left_child", lambda v: [v[0], "0", *v[2:]]),
    "threshold-not-a-number": edit_tree(0, "threshold", lambda v: ["1.5x", *v[1:]]),
}


@pytest.mark.parametrize("damage", list(LIGHTGBM_DAMAGE), ids=list(LIGHTGBM_DAMAGE))
def test_damaged_lightgbm_file_raises_never_crashes(
    saved: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    d = damaged_copy(saved["lightgbm"], tmp_path / "m", "lightgbm", LIGHTGBM_DAMAGE[damage])
    out = run_isolated(LOAD, "lightgbm", str(d))
    assert out.startswith("RAISED CorruptArtifactError: refusing to load"), out
    assert str(d / ARTIFACT["lightgbm"]) in out


# XGBoost 3.2 raises cleanly on most cuts of this model but dies (SIGSEGV) on some, e.g. 21%, 32.5%, 44.5%,
# 58% and 86.5% of its bytes
@pytest.mark.parametrize("fraction", [0.05, 0.21, 0.325, 0.445, 0.58, 0.865, 0.999])
def test_truncated_xgboost_file_raises_never_crashes(
    saved: dict[str, Path], tmp_path: Path, fraction: float
) -> None:
    d = damaged_copy(saved["xgboost"], tmp_path / "m", "xgboost", truncate(fraction))
    out = run_isolated(LOAD, "xgboost", str(d))
    assert out.startswith("RAISED CorruptArtifactError: refusing to load"), out
    assert str(d / ARTIFACT["xgboost"]) in out and "xgboost" in out


@pytest.mark.parametrize("name", list(SMALL))
def test_intact_files_load_to_the_same_predictions(
    fitted: dict[str, Any], saved: dict[str, Path], name: str
) -> None:
    loaded = get_model_class(name).load(saved[name])
    pd.testing.assert_frame_equal(loaded.predict(FRAME), fitted[name].predict(FRAME), check_exact=True)


def test_parser_crash_in_the_child_is_reported_not_fatal(saved: dict[str, Path]) -> None:
    """The child-process layer alone (the structural check skipped): bytes that kill LightGBM's parser
    end the child, and the caller gets a CorruptArtifactError."""
    data = (saved["lightgbm"] / ARTIFACT["lightgbm"]).read_bytes()
    bad = re.sub(rb"tree_sizes=(\d+)", lambda m: b"tree_sizes=" + str(int(m[1]) * 50).encode(), data, count=1)
    code = (
        "import sys\n"
        "from ensemble.models.native_check import probe_native_load\n"
        "try:\n"
        "    probe_native_load('lightgbm', bytes.fromhex(sys.argv[1]), 'm.txt')\n"
        "except Exception as exc:\n"
        "    print(f'RAISED {type(exc).__name__}: {exc}')\n"
        "else:\n"
        "    print('PARSED')\n"
    )
    out = run_isolated(code, bad.hex())
    assert re.match(
        r"RAISED CorruptArtifactError: refusing to load m\.txt: lightgbm (crashed parsing it|cannot)", out
    ), out


def test_parse_that_does_not_finish_in_time_is_refused(saved: dict[str, Path]) -> None:
    from ensemble.models.native_check import CorruptArtifactError, probe_native_load

    data = (saved["xgboost"] / ARTIFACT["xgboost"]).read_bytes()
    with pytest.raises(CorruptArtifactError, match="did not finish parsing it within"):
        probe_native_load("xgboost", data, "m.ubj", timeout_s=0.001)


# -- inside the registry -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_version(saved: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("registry")
    models = {name: get_model_class(name).load(saved[name]) for name in SMALL}
    return root, ModelRegistry(root).create_version(models, metrics={}, data_fingerprint="x")


def test_registry_sha256_refuses_a_truncated_lightgbm_file_before_parsing(
    registry_version: tuple[Path, str],
) -> None:
    root, vid = registry_version
    reg = ModelRegistry(root)
    assert set(reg.load_version(vid)) == set(SMALL)
    path = root / "versions" / vid / "models" / "lightgbm" / ARTIFACT["lightgbm"]
    good = path.read_bytes()
    try:
        path.write_bytes(good[: len(good) // 2])
        out = run_isolated(REGISTRY_LOAD, str(root), vid)
        assert out.startswith("RAISED IntegrityError"), out
        assert f"file models/lightgbm/{ARTIFACT['lightgbm']} does not match the manifest" in out
    finally:
        path.write_bytes(good)


def test_registry_with_forged_checksum_still_never_crashes(
    registry_version: tuple[Path, str], tmp_path: Path
) -> None:
    """Someone who can rewrite the manifest (and re-sign the marker) gets past the sha256 layer; the
    truncated file is then refused by the model's own check, in a Python exception."""
    import hashlib
    import json
    import shutil

    src_root, vid = registry_version
    root = tmp_path / "registry"
    shutil.copytree(src_root, root)
    vdir = root / "versions" / vid
    rel = f"models/lightgbm/{ARTIFACT['lightgbm']}"
    data = (vdir / rel).read_bytes()[:-4000]
    (vdir / rel).write_bytes(data)
    man = json.loads((vdir / "manifest.json").read_text())
    man["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    raw = json.dumps(man).encode()
    (vdir / "manifest.json").write_bytes(raw)
    marker = json.loads((vdir / "_COMMITTED").read_text())
    marker["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
    (vdir / "_COMMITTED").write_text(json.dumps(marker))
    out = run_isolated(REGISTRY_LOAD, str(root), vid)
    assert out.startswith("RAISED CorruptArtifactError: refusing to load"), out
    assert ARTIFACT["lightgbm"] in out


# -- the structural check on its own (pure Python: LightGBM never parses these bytes) --------------------


def test_structural_check_names_the_problem(saved: dict[str, Path]) -> None:
    from ensemble.models.native_check import CorruptArtifactError, check_lightgbm_text

    data = (saved["lightgbm"] / ARTIFACT["lightgbm"]).read_bytes()
    assert check_lightgbm_text(data, "m.txt") == data.decode()
    expected = {
        "truncated-50%": "does not end with a newline",
        "cut-after-trees": "'pandas_categorical:' line is missing",
        "tree-sizes-edited": "tree 0: the block does not end with its blank lines",
        "num-leaves-edited": "tree 0: leaf_value holds",
        "leaf-values-dropped": "tree 1: leaf_value holds",
        "split-feature-out-of-range": "tree 0: split_feature 4000 is outside the model's 5 features",
        "child-out-of-range": "tree 0: node 0 has child 999",
        "cycle": "tree 0: node 1 has child 0: not a tree",
        "threshold-not-a-number": "tree 0: threshold is not a list of decimal numbers",
    }
    for damage, message in expected.items():
        with pytest.raises(CorruptArtifactError, match=re.escape(message)) as exc:
            check_lightgbm_text(LIGHTGBM_DAMAGE[damage](data), "m.txt")
        assert str(exc.value).startswith("refusing to load m.txt: "), damage
    with pytest.raises(CorruptArtifactError, match="not a LightGBM text model"):
        check_lightgbm_text(b"\x80\x04junk", "m.txt")
