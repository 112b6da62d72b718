"""The registry refuses damaged or forged metadata with a clear error, keeps what is stored, and never loads
anything from outside a version or any pickle inside one.

- garbage in ``aliases.json``, a ``_COMMITTED`` marker or a manifest: one RegistryError naming the file;
  the file is left as it was and the rest of the registry keeps working;
- model, kind and extra names and every path are validated on every load, not only when a version is
  created: a forged manifest cannot point a load outside its version;
- a pickle anywhere in a version (its root, the extras folder, under a JSON name) is refused on load.

Uses the tiny JSON forecaster and helpers of ``test_registry`` (no tree library, torch or prophet here).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_registry import (  # noqa: E402
    FRAME,
    TinyLinear,
    create,
    fitted,
    forge_manifest,
    resolve_class,
    version_path,
)

from ensemble.models.base import UnsafeArtifactError  # noqa: E402
from ensemble.registry import IntegrityError, ModelRegistry, RegistryError  # noqa: E402

PICKLE = pickle.dumps({"harmless": "but a pickle"}, protocol=4)  # written, never loaded


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry", model_resolver=resolve_class)


def snapshot(root: str | Path) -> dict[str, bytes]:
    """Every file under the registry root with its bytes (to prove a failed call changed nothing)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def sha(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


# -- 1. garbage in aliases.json, _COMMITTED and manifest.json ------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "problem"),
    [
        (b'{"aliases": {"production": "v2024', "not valid JSON"),  # a torn write
        (b"\x00\x01\x02 binary junk", "not"),
        (b'["production"]', "must be a JSON object"),
        (b'{"aliases": ["production"], "history": []}', "aliases: Input should be a valid dictionary"),
        (b'{"aliases": {"production": "../../etc"}, "history": []}', "'production' -> '../../etc' is not"),
        (b'{"aliases": {}, "history": [{"alias": "production"}]}', "history.0.to: Field required"),
    ],
)
def test_garbage_alias_file_raises_naming_it_and_is_kept(
    reg: ModelRegistry, garbage: bytes, problem: str
) -> None:
    v1, v2 = create(reg, ic=0.01), create(reg, ic=0.02)
    assert reg.promote(v1).promoted
    path = Path(reg.root) / "aliases.json"
    good = path.read_bytes()
    path.write_bytes(garbage)
    before = snapshot(reg.root)

    calls = {
        "aliases": reg.aliases,
        "alias_history": reg.alias_history,
        "resolve": lambda: reg.resolve("production"),
        "load_version": lambda: reg.load_version("production"),
        "set_alias": lambda: reg.set_alias("staging", v2, "try"),
        "promote": lambda: reg.promote(v2),
        "rollback": lambda: reg.rollback(to=v2),
        "create_version": lambda: create(reg),  # its parent is read from the aliases
    }
    for what, call in calls.items():
        with pytest.raises(RegistryError) as exc:
            call()
        msg = str(exc.value)
        assert str(path) in msg and problem in msg, (what, msg)
    assert snapshot(reg.root) == before  # nothing overwritten, no lock or staging left behind
    assert not (Path(reg.root) / "aliases.json.lock").exists()

    # versions stay reachable by id while the alias file is broken ...
    assert set(reg.load_version(v1)) == {"tiny"} and reg.list_versions() == [v1, v2]
    # ... and once the file is repaired, every alias and the whole history are still there
    path.write_bytes(good)
    assert reg.aliases() == {"candidate": v1, "production": v1}
    assert [e["to"] for e in reg.alias_history()] == [v1, v1]
    assert reg.promote(v2).promoted


@pytest.mark.parametrize(
    ("garbage", "problem"),
    [
        (b'{"version_id": "v2', "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'{"version_id": 5}', "malformed"),
        (b'{"version_id": "x", "manifest_sha256": "not-a-digest", "committed_at": ""}', "manifest_sha256"),
    ],
)
def test_garbage_commit_marker_raises_naming_it(reg: ModelRegistry, garbage: bytes, problem: str) -> None:
    v1, v2 = create(reg, ic=0.01), create(reg, ic=0.02)
    assert reg.promote(v2).promoted
    marker = version_path(reg, v1) / "_COMMITTED"
    marker.write_bytes(garbage)
    before = snapshot(reg.root)
    TinyLinear.loads = 0
    for call in (
        lambda: reg.manifest(v1),
        lambda: reg.verify(v1),
        lambda: reg.load_version(v1),
        lambda: reg.load_extra(v1, "x"),
        lambda: reg.promote(v1),
        lambda: reg.set_alias("staging", v1),  # an alias is never pointed at an unreadable version
    ):
        with pytest.raises(RegistryError) as exc:
            call()
        assert str(marker) in str(exc.value) and problem in str(exc.value), str(exc.value)
    assert TinyLinear.loads == 0
    assert snapshot(reg.root) == before
    # the other version is untouched and still works
    assert set(reg.load_version("production")) == {"tiny"}
    assert reg.aliases() == {"candidate": v2, "production": v2}


def test_garbage_manifest_with_matching_marker_raises_naming_it(reg: ModelRegistry) -> None:
    vid = create(reg)
    vdir = version_path(reg, vid)
    good_manifest, good_marker = (vdir / "manifest.json").read_bytes(), (vdir / "_COMMITTED").read_bytes()
    raw = b'{"format_version": 1, "version_id": "' + vid.encode() + b'", "models": '  # cut short
    (vdir / "manifest.json").write_bytes(raw)
    marker = json.loads(good_marker)
    marker["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
    (vdir / "_COMMITTED").write_text(json.dumps(marker))  # re-signed: only the content is wrong
    with pytest.raises(RegistryError, match="manifest.json: the manifest is not valid JSON") as exc:
        reg.load_version(vid)
    assert str(vdir / "manifest.json") in str(exc.value)

    (vdir / "manifest.json").write_bytes(good_manifest)
    (vdir / "_COMMITTED").write_bytes(good_marker)
    forge_manifest(reg, vid, lambda m: m["files"]["models/tiny/coef.json"].__setitem__("size", "12"))
    with pytest.raises(RegistryError, match=r"manifest.json: the manifest is malformed \(files"):
        reg.load_version(vid)


# -- 2. names and paths validated on every load ---------------------------------------------------------


def test_traversal_model_name_in_forged_manifest_loads_nothing_from_outside(
    reg: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged manifest names a model ``../../../outside/evil``: the registry's private download
    directory joined with it leads to a model planted outside the registry. It must never be loaded."""
    vid = create(reg)
    outside = tmp_path / "outside" / "evil"
    TinyLinear(horizons=(5, 20, 60), scale=99.0).fit(FRAME).save(outside)
    scratch = tmp_path / "t"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # <scratch>/ensemble-registry-*/models/<name>
    name = "../../../outside/evil"

    def add_model(man: dict[str, Any]) -> None:
        man["models"].append(name)
        man["model_kinds"][name] = "tiny_linear"

    forge_manifest(reg, vid, add_model)
    TinyLinear.loads = 0
    for models in (None, [name], ["tiny"]):  # validated on every load, even of the honest model alone
        with pytest.raises(
            RegistryError, match=r"model name '\.\./\.\./\.\./outside/evil' is not a plain name"
        ):
            reg.load_version(vid, models=models)
    assert TinyLinear.loads == 0
    with pytest.raises(RegistryError, match="not a plain name"):
        reg.manifest(vid)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m["models"].__setitem__(0, "a/b"), "model name 'a/b' is not a plain name"),
        (
            lambda m: m["model_kinds"].__setitem__("tiny", "../x"),
            "model kind name '../x' is not a plain name",
        ),
        (lambda m: m["extras"].append("../x"), "extra name '../x' is not a plain name"),
        (
            lambda m: m["files"].__setitem__("/etc/passwd", sha(b"")),
            "'/etc/passwd' is not a safe relative path",
        ),
        (
            lambda m: m["files"].__setitem__("models/tiny/../../../../x", sha(b"")),
            "is not a safe relative path",
        ),
        (
            lambda m: m["files"].__setitem__("notes.txt", sha(b"")),
            "'notes.txt' lies outside the version layout",
        ),
        (lambda m: m["files"].__setitem__("extras/x.json", sha(b"")), "'extras/x.json' lies outside"),
        (lambda m: m["models"].append("ghost"), "model 'ghost' has no files"),
    ],
    ids=["slash-name", "kind", "extra", "absolute", "dotdot", "root-file", "unlisted-extra", "no-files"],
)
def test_forged_names_and_paths_are_refused_on_every_load(
    reg: ModelRegistry, edit: Any, problem: str
) -> None:
    vid = create(reg, extras={"pre": {"a": 1}})
    forge_manifest(reg, vid, edit)
    TinyLinear.loads = 0
    for call in (
        lambda: reg.load_version(vid),
        lambda: reg.load_extra(vid, "pre"),
        lambda: reg.manifest(vid),
    ):
        with pytest.raises(RegistryError) as exc:
            call()
        assert problem in str(exc.value) and "manifest.json" in str(exc.value), str(exc.value)
    assert TinyLinear.loads == 0


def test_unknown_model_kind_is_refused_before_any_load(reg: ModelRegistry) -> None:
    vid = create(reg)
    forge_manifest(reg, vid, lambda m: m["model_kinds"].__setitem__("tiny", "not_a_model"))
    TinyLinear.loads = 0
    with pytest.raises(RegistryError, match="kind 'not_a_model', which is not a known model"):
        reg.load_version(vid)
    assert TinyLinear.loads == 0


def test_link_leading_outside_the_version_is_refused(reg: ModelRegistry, tmp_path: Path) -> None:
    """A model file replaced by a symbolic link to a file outside the version (even one with the very
    bytes the manifest expects) is refused: every path must resolve inside the version directory."""
    vid = create(reg)
    coef = version_path(reg, vid) / "models" / "tiny" / "coef.json"
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(coef.read_bytes())
    coef.unlink()
    os.symlink(outside, coef)
    TinyLinear.loads = 0
    with pytest.raises(IntegrityError, match="models/tiny/coef.json is a link leading outside the version"):
        reg.load_version(vid)
    assert TinyLinear.loads == 0


# -- 3. a pickle anywhere in a version --------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel", ["evil.pkl", "extras/evil.pkl", "models/evil.joblib", "models/tiny/sub/x.pickle"]
)
@pytest.mark.parametrize("listed", [False, True], ids=["planted", "forged-manifest"])
def test_pickle_anywhere_in_a_version_is_refused(reg: ModelRegistry, rel: str, listed: bool) -> None:
    vid = create(reg, extras={"pre": {"a": 1}})
    target = version_path(reg, vid) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(PICKLE)
    if listed:
        forge_manifest(reg, vid, lambda m: m["files"].__setitem__(rel, sha(PICKLE)))
    TinyLinear.loads = 0
    for call in (lambda: reg.load_version(vid), lambda: reg.load_extra(vid, "pre")):
        with pytest.raises((UnsafeArtifactError, RegistryError)) as exc:
            call()
        assert rel in str(exc.value), str(exc.value)
    assert TinyLinear.loads == 0
    if not listed:  # planted beside an honest manifest: refused as a pickle, by its name
        with pytest.raises(UnsafeArtifactError, match="pickle"):
            reg.load_version(vid)


def test_pickle_under_an_extra_json_name_is_refused_by_content(reg: ModelRegistry) -> None:
    vid = create(reg, extras={"pre": {"a": 1}})
    path = version_path(reg, vid) / "extras" / "pre.json"
    path.write_bytes(PICKLE)
    forge_manifest(reg, vid, lambda m: m["files"].__setitem__("extras/pre.json", sha(PICKLE)))
    reg.verify(vid)  # the forgery passes the checksum layer ...
    TinyLinear.loads = 0
    for call in (lambda: reg.load_version(vid), lambda: reg.load_extra(vid, "pre")):
        with pytest.raises(UnsafeArtifactError, match="pre.json"):  # ... and is refused before any load
            call()
    assert TinyLinear.loads == 0


def test_honest_versions_still_round_trip(reg: ModelRegistry) -> None:
    model = fitted(3.0)
    vid = create(reg, models={"tiny": model, "tiny.v2-b": fitted(1.0)}, extras={"pre": {"a": [1, 2]}})
    loaded = reg.load_version(vid)
    pd.testing.assert_frame_equal(loaded["tiny"].predict(FRAME), model.predict(FRAME), check_exact=True)
    assert reg.load_extra(vid, "pre") == {"a": [1, 2]}
    assert reg.verify(vid) == vid


# -- the model directory checks every load runs (refuse_pickles, read_meta) ------------------------------


def test_damaged_meta_json_names_the_file(tmp_path: Path) -> None:
    d = fitted().save(tmp_path / "m")
    for garbage, problem in (
        (b'{"model": "tiny_lin', "not valid JSON"),
        (b'["tiny_linear"]', "expected a JSON object"),
    ):
        (d / "meta.json").write_bytes(garbage)
        with pytest.raises(ValueError, match=problem) as exc:
            TinyLinear.load(d)
        assert str(d / "meta.json") in str(exc.value)


def test_symbolic_link_leaving_a_model_directory_is_refused(tmp_path: Path) -> None:
    d = fitted().save(tmp_path / "m")
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes((d / "coef.json").read_bytes())
    (d / "coef.json").unlink()
    os.symlink(outside, d / "coef.json")
    with pytest.raises(UnsafeArtifactError, match="a symbolic link leading outside"):
        TinyLinear.load(d)
    (d / "coef.json").unlink()
    (d / "coef.json").write_bytes(outside.read_bytes())
    os.symlink("coef.json", d / "alias.json")  # a link that stays inside is fine
    assert TinyLinear.load(d).coef_.shape == (3, 3)
