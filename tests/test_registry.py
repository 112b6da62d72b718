"""The model registry: round trips, integrity checks, pickle refusal, crash safety, aliases, promotion,
rollback, data fingerprints, pyarrow.fs URIs and concurrent alias writers.

A tiny linear Forecaster defined here stands in for the six real models (its coefficients are JSON),
so these tests do not depend on torch, the tree libraries or prophet.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from ensemble.models.base import (
    Forecaster,
    UnsafeArtifactError,
    feature_columns,
    read_meta,
    target_col,
    write_meta,
)
from ensemble.registry import (
    IntegrityError,
    ModelRegistry,
    RegistryError,
    VersionNotFoundError,
    data_fingerprint,
)
from ensemble.registry.store import ArtifactStore

HORIZONS = (5, 20, 60)


class TinyLinear(Forecaster):
    """Least squares per horizon; coefficients saved as JSON text (coef.json) + meta.json."""

    name: ClassVar[str] = "tiny_linear"
    loads: ClassVar[int] = 0  # how many times load() ran (to prove nothing is loaded on failure)

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> Self:
        self.features_ = feature_columns(train)
        x = np.c_[train[self.features_].to_numpy(float), np.ones(len(train))]
        y = train[[target_col(h) for h in self.horizons]].to_numpy(float)
        self.coef_ = np.linalg.lstsq(x, y, rcond=None)[0] * float(self.params.get("scale", 1.0))
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted("coef_")
        x = np.c_[frame[self.features_].to_numpy(float), np.ones(len(frame))]
        return self._output(frame, x @ self.coef_)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        write_meta(d, {"model": self.name, "horizons": list(self.horizons), "params": self.params})
        (d / "coef.json").write_text(json.dumps({"features": self.features_, "coef": self.coef_.tolist()}))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        TinyLinear.loads += 1
        meta = read_meta(directory, cls.name)
        model = cls(horizons=meta["horizons"], **meta["params"])
        blob = json.loads((Path(directory) / "coef.json").read_text())
        model.features_ = blob["features"]
        model.coef_ = np.asarray(blob["coef"], dtype=float)
        return model


def resolve_class(name: str) -> type[Forecaster]:
    return {"tiny_linear": TinyLinear}[name]


def make_frame(seed: int = 0, n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "date": np.tile(pd.bdate_range("2024-01-02", periods=n // 3), 3),
            "ticker": np.repeat(["AAA", "BBB", "CCC"], n // 3),
            "f0": rng.standard_normal(n),
            "f1": rng.standard_normal(n),
        }
    )
    for h in HORIZONS:
        df[target_col(h)] = 0.01 * df["f0"] - 0.002 * h * df["f1"] + rng.normal(0, 0.01, n)
    return df


FRAME = make_frame()


def fitted(scale: float = 1.0) -> TinyLinear:
    return TinyLinear(horizons=HORIZONS, scale=scale).fit(FRAME)


def metrics(ic: float) -> dict[str, Any]:
    return {"tiny_linear": {"valid_rank_ic_h5": ic}, "ensemble": {"valid_rank_ic_h5": ic, "valid_rmse": -ic}}


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry", model_resolver=resolve_class)


def create(reg: ModelRegistry, scale: float = 1.0, ic: float = 0.05, **kw: Any) -> str:
    models = kw.pop("models", None) or {"tiny": fitted(scale)}
    return reg.create_version(
        models,
        metrics=metrics(ic),
        config={"seed": 0, "horizons": HORIZONS},
        data_fingerprint=data_fingerprint(FRAME),
        cost={"usd": 0.01, "cpu_s": np.float64(1.5)},
        **kw,
    )


def version_path(reg: ModelRegistry, vid: str) -> Path:
    return Path(reg.root) / "versions" / vid


def forge_manifest(reg: ModelRegistry, vid: str, edit) -> None:
    """Rewrite a version's manifest with ``edit`` and re-sign the _COMMITTED marker (an attacker with
    write access to the store can do both)."""
    vdir = version_path(reg, vid)
    man = json.loads((vdir / "manifest.json").read_text())
    edit(man)
    raw = json.dumps(man, indent=2, sort_keys=True).encode()
    (vdir / "manifest.json").write_bytes(raw)
    marker = json.loads((vdir / "_COMMITTED").read_text())
    marker["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
    (vdir / "_COMMITTED").write_text(json.dumps(marker))


# -- round trip and manifest -------------------------------------------------------------------------


def test_round_trip_identical_predictions_and_manifest(reg: ModelRegistry) -> None:
    a, b = fitted(1.0), fitted(2.0)
    vid = reg.create_version(
        {"tiny": a, "tiny_b": b},
        metrics=metrics(0.07),
        config={"seed": 7, "nested": {"lr": 0.1}},
        data_fingerprint=data_fingerprint(FRAME),
        cost={"usd": 0.5, "nan": float("nan")},
        notes=["hpo stopped after 12 of 30 trials: cost limit"],
    )
    assert reg.list_versions() == [vid]
    loaded = reg.load_version(vid)
    assert set(loaded) == {"tiny", "tiny_b"}
    pd.testing.assert_frame_equal(loaded["tiny"].predict(FRAME), a.predict(FRAME), check_exact=True)
    pd.testing.assert_frame_equal(loaded["tiny_b"].predict(FRAME), b.predict(FRAME), check_exact=True)
    only_b = reg.load_version(vid, models=["tiny_b"])
    assert list(only_b) == ["tiny_b"]

    man = reg.manifest(vid)
    assert man["version_id"] == vid and man["status"] == "committed" and man["parent"] is None
    assert datetime.fromisoformat(man["created_at"]).utcoffset().total_seconds() == 0
    assert man["models"] == ["tiny", "tiny_b"]
    assert man["metrics"]["ensemble"]["valid_rank_ic_h5"] == 0.07
    assert man["config"] == {"seed": 7, "nested": {"lr": 0.1}}
    assert man["cost"] == {"usd": 0.5, "nan": None}
    assert man["notes"] == ["hpo stopped after 12 of 30 trials: cost limit"]
    assert man["data_fingerprint"] == data_fingerprint(FRAME)
    on_disk = {
        p.relative_to(version_path(reg, vid)).as_posix(): p
        for p in version_path(reg, vid).rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "_COMMITTED")
    }
    assert set(man["files"]) == set(on_disk) and "models/tiny/coef.json" in on_disk
    for rel, p in on_disk.items():
        assert man["files"][rel] == {
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "size": p.stat().st_size,
        }
    with pytest.raises(KeyError, match="nope"):
        reg.load_version(vid, models=["nope"])


def test_version_ids_sort_by_creation_and_parent_is_production(reg: ModelRegistry) -> None:
    ids = [create(reg) for _ in range(3)]
    assert reg.list_versions() == ids == sorted(ids)
    assert reg.resolve("latest") == ids[-1]
    reg.set_alias("production", ids[0], "first")
    v4 = create(reg)
    assert reg.manifest(v4)["parent"] == ids[0]


def test_pydantic_config_is_stored_as_json(reg: ModelRegistry) -> None:
    from ensemble.config import Settings

    vid = reg.create_version({"tiny": fitted()}, config=Settings(), data_fingerprint="x")
    assert reg.manifest(vid)["config"] == json.loads(json.dumps(Settings().model_dump(mode="json")))


# -- integrity ---------------------------------------------------------------------------------------


def test_flipped_byte_raises_integrity_error_and_loads_nothing(reg: ModelRegistry) -> None:
    vid = create(reg, models={"a_good": fitted(1.0), "z_bad": fitted(2.0)})
    target = version_path(reg, vid) / "models" / "z_bad" / "coef.json"
    data = bytearray(target.read_bytes())
    expected = hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    actual = hashlib.sha256(data).hexdigest()

    TinyLinear.loads = 0
    with pytest.raises(IntegrityError) as exc:
        reg.load_version(vid)
    msg = str(exc.value)
    assert "models/z_bad/coef.json" in msg and expected in msg and actual in msg
    assert exc.value.path == "models/z_bad/coef.json"
    assert (exc.value.expected, exc.value.actual) == (expected, actual)
    assert TinyLinear.loads == 0  # the good model was not loaded either
    # the untouched model alone still verifies and loads
    assert set(reg.load_version(vid, models=["a_good"])) == {"a_good"}
    with pytest.raises(IntegrityError):
        reg.verify(vid)


def test_extras_round_trip_and_are_checksummed(reg: ModelRegistry) -> None:
    doc = {"selected": ["ret_5", "rsi_14"], "center": [0.0, 50.0]}
    vid = create(reg, extras={"preprocessor": doc})
    assert reg.manifest(vid)["extras"] == ["preprocessor"]
    assert reg.load_extra(vid, "preprocessor") == doc
    with pytest.raises(KeyError, match="no extra 'nope'"):
        reg.load_extra(vid, "nope")
    path = version_path(reg, vid) / "extras" / "preprocessor.json"
    path.write_bytes(path.read_bytes().replace(b"rsi_14", b"rsi_15"))
    with pytest.raises(IntegrityError, match="extras/preprocessor.json"):
        reg.load_extra(vid, "preprocessor")


def test_missing_and_extra_files_raise(reg: ModelRegistry) -> None:
    vid = create(reg)
    mdir = version_path(reg, vid) / "models" / "tiny"
    (mdir / "notes.txt").write_text("planted")
    with pytest.raises(IntegrityError, match="unexpected file models/tiny/notes.txt"):
        reg.load_version(vid)
    (mdir / "notes.txt").unlink()
    (mdir / "coef.json").unlink()
    with pytest.raises(IntegrityError, match="models/tiny/coef.json is missing"):
        reg.load_version(vid)


def test_tampered_manifest_without_marker_is_detected(reg: ModelRegistry) -> None:
    vid = create(reg)
    path = version_path(reg, vid) / "manifest.json"
    path.write_text(path.read_text().replace('"status": "committed"', '"status": "hacked"'))
    with pytest.raises(IntegrityError, match="manifest.json sha256 mismatch"):
        reg.load_version(vid)


@pytest.mark.parametrize("planted", ["evil.pkl", "innocent.json"])
def test_planted_pickle_with_forged_manifest_is_refused(reg: ModelRegistry, planted: str) -> None:
    vid = create(reg)
    payload = pickle.dumps({"harmless": "but a pickle"}, protocol=4)  # written, never loaded
    (version_path(reg, vid) / "models" / "tiny" / planted).write_bytes(payload)

    def add_entry(man: dict[str, Any]) -> None:
        man["files"][f"models/tiny/{planted}"] = {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
        }

    forge_manifest(reg, vid, add_entry)
    reg.verify(vid)  # the forgery passes the checksum layer ...
    TinyLinear.loads = 0
    with pytest.raises(UnsafeArtifactError, match=planted):
        reg.load_version(vid)  # ... and is still refused before any load
    assert TinyLinear.loads == 0


def test_model_that_saves_a_pickle_is_never_published(reg: ModelRegistry) -> None:
    class Pickler(TinyLinear):
        def save(self, directory: str | Path) -> Path:
            d = super().save(directory)
            (d / "state.bin").write_bytes(pickle.dumps([1, 2, 3]))
            return d

    bad = Pickler(horizons=HORIZONS).fit(FRAME)
    with pytest.raises(UnsafeArtifactError):
        reg.create_version({"tiny": bad}, data_fingerprint="x")
    assert reg.list_versions() == []


# -- crash safety ------------------------------------------------------------------------------------


def staged(reg: ModelRegistry) -> list[str]:
    d = Path(reg.root) / ".staging"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_crash_in_model_save_leaves_nothing(reg: ModelRegistry) -> None:
    class Boom(TinyLinear):
        def save(self, directory: str | Path) -> Path:
            super().save(directory)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        reg.create_version({"ok": fitted(), "boom": Boom(horizons=HORIZONS).fit(FRAME)}, data_fingerprint="x")
    assert reg.list_versions() == [] and staged(reg) == []
    vid = create(reg)
    assert reg.list_versions() == [vid]


def test_crash_while_writing_manifest_leaves_nothing(reg: ModelRegistry, monkeypatch) -> None:
    def boom(self, path: str, data: bytes) -> None:
        raise OSError("connection reset")

    monkeypatch.setattr(ArtifactStore, "_write_manifest", boom)
    with pytest.raises(OSError, match="connection reset"):
        create(reg)
    assert reg.list_versions() == [] and staged(reg) == []
    monkeypatch.undo()
    vid = create(reg)
    assert reg.list_versions() == [vid]
    assert set(reg.load_version(vid)) == {"tiny"}


def test_hard_kill_leftovers_stay_invisible(reg: ModelRegistry, monkeypatch) -> None:
    """A killed writer cannot clean up: its staging dir remains but is never listed or resolvable."""
    monkeypatch.setattr(ArtifactStore, "_discard", lambda self, d: None)
    monkeypatch.setattr(
        ArtifactStore, "_write_marker", lambda self, p, d: (_ for _ in ()).throw(OSError("kill"))
    )
    calls = []
    real_rename = os.rename

    def rename_then_die(src, dst):
        calls.append((src, dst))
        raise OSError("killed before rename")

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(OSError):
        create(reg)
    assert calls and staged(reg) != []
    leftover = staged(reg)[0].rsplit("-", 1)[0]
    assert reg.list_versions() == []
    with pytest.raises(VersionNotFoundError):
        reg.resolve(leftover)
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.undo()
    assert reg.clean_staging(older_than_s=0) != [] and staged(reg) == []
    vid = create(reg)
    assert reg.list_versions() == [vid]


def subtree_registry(tmp_path: Path) -> ModelRegistry:
    """A non-local pyarrow filesystem (SubTreeFileSystem is not a LocalFileSystem): exercises the
    copy-then-marker publishing and the write-then-verify alias path used for object stores."""
    base = tmp_path / "remote"
    base.mkdir()
    fs = pafs.SubTreeFileSystem(str(base), pafs.LocalFileSystem())
    return ModelRegistry("store", filesystem=fs, model_resolver=resolve_class)


def test_non_local_filesystem_round_trip_and_crash_before_marker(tmp_path: Path, monkeypatch) -> None:
    reg = subtree_registry(tmp_path)
    assert not reg.is_local
    model = fitted(3.0)
    vid = reg.create_version({"tiny": model}, metrics=metrics(0.1), data_fingerprint="x")
    assert reg.list_versions() == [vid]
    assert not (tmp_path / "remote" / "store" / ".staging").exists() or staged_remote(tmp_path) == []
    pd.testing.assert_frame_equal(reg.load_version(vid)["tiny"].predict(FRAME), model.predict(FRAME))
    assert reg.promote(vid).promoted and reg.resolve("production") == vid

    # crash after every artifact and the manifest were copied, before the marker: invisible
    monkeypatch.setattr(ArtifactStore, "_discard", lambda self, d: None)
    monkeypatch.setattr(
        ArtifactStore, "_write_marker", lambda self, p, d: (_ for _ in ()).throw(OSError("kill"))
    )
    with pytest.raises(OSError, match="kill"):
        reg.create_version({"tiny": fitted(4.0)}, data_fingerprint="x")
    partial = [p.name for p in (tmp_path / "remote" / "store" / "versions").iterdir() if p.name != vid]
    assert len(partial) == 1
    assert (tmp_path / "remote" / "store" / "versions" / partial[0] / "manifest.json").exists()
    assert reg.list_versions() == [vid]
    with pytest.raises(VersionNotFoundError):
        reg.load_version(partial[0])


def staged_remote(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "remote" / "store" / ".staging").iterdir())


def test_file_uri_root(tmp_path: Path) -> None:
    root = tmp_path / "uri_reg"
    reg = ModelRegistry(root.as_uri(), model_resolver=resolve_class)
    assert reg.uri.startswith("file://") and reg.is_local
    model = fitted(1.5)
    vid = reg.create_version({"tiny": model}, metrics=metrics(0.2), data_fingerprint="x")
    assert (root / "versions" / vid / "_COMMITTED").is_file()
    assert reg.promote(vid).promoted
    again = ModelRegistry(root.as_uri(), model_resolver=resolve_class)
    got = again.load_version("production")["tiny"]
    pd.testing.assert_frame_equal(got.predict(FRAME), model.predict(FRAME), check_exact=True)
    # the same store read through a plain path
    assert ModelRegistry(root, model_resolver=resolve_class).resolve("production") == vid


# -- aliases, promotion, rollback ----------------------------------------------------------------------


def test_promotion_only_when_better(reg: ModelRegistry) -> None:
    v1 = create(reg, ic=0.05)
    first = reg.promote(v1)
    assert first.promoted and "no production" in first.reason
    assert reg.aliases() == {"candidate": v1, "production": v1}

    worse = create(reg, ic=0.03)
    res = reg.promote(worse)
    assert not res.promoted
    assert "does not beat" in res.reason and "0.03" in res.reason and "0.05" in res.reason
    assert (res.candidate_score, res.production_score, res.production) == (0.03, 0.05, v1)
    assert reg.aliases() == {"candidate": worse, "production": v1}

    tiny_gain = create(reg, ic=0.0505)
    assert not reg.promote(tiny_gain, min_improvement=0.001).promoted
    assert reg.resolve("production") == v1

    better = create(reg, ic=0.08)
    res = reg.promote(better)
    assert res.promoted and "beats" in res.reason and res.previous_production == v1
    assert reg.aliases() == {"candidate": better, "production": better}
    assert not reg.promote(better).promoted  # already production

    # lower is better, through an explicit key path: better's valid_rmse (-0.08) < worse's (-0.03)
    res = reg.promote(worse, metric_path=("ensemble", "valid_rmse"), higher_is_better=False)
    assert not res.promoted and reg.resolve("production") == better
    no_metric = reg.create_version({"tiny": fitted()}, metrics={}, data_fingerprint="x")
    res = reg.promote(no_metric)
    assert not res.promoted and "has no finite" in res.reason


def test_rollback_restores_earlier_predictions_exactly(reg: ModelRegistry) -> None:
    m1, m2, m3 = fitted(1.0), fitted(-2.0), fitted(5.0)
    v1 = create(reg, ic=0.01, models={"tiny": m1})
    v2 = create(reg, ic=0.02, models={"tiny": m2})
    v3 = create(reg, ic=0.03, models={"tiny": m3})
    for v in (v1, v2, v3):
        assert reg.promote(v).promoted
    assert reg.rollback(reason="v3 misbehaves in prod") == v2
    assert reg.rollback() == v1  # repeated rollbacks walk further back
    got = reg.load_version("production")["tiny"].predict(FRAME)
    pd.testing.assert_frame_equal(got, m1.predict(FRAME), check_exact=True)
    assert not got.equals(m3.predict(FRAME))
    with pytest.raises(RegistryError, match="no earlier production"):
        reg.rollback()
    assert reg.rollback(to=v3) == v3  # a named version
    assert reg.rollback() == v1
    last = reg.alias_history("production")[-1]
    assert (last["action"], last["from"], last["to"]) == ("rollback", v3, v1)
    with pytest.raises(VersionNotFoundError):
        reg.rollback(to="v20000101T000000000000-abcdef")


def test_alias_history_is_append_only_and_complete(reg: ModelRegistry) -> None:
    v1, v2 = create(reg), create(reg)
    reg.set_alias("production", v1, "initial deploy", actor="alice")
    reg.set_alias("staging", v2, "try it", actor="bob")
    reg.set_alias("production", "staging", "ship the staging version", actor="carol")
    reg.set_alias("production", v2, "no-op: unchanged")  # same target: no entry
    hist = reg.alias_history()
    assert [(e["alias"], e["from"], e["to"], e["by"], e["reason"]) for e in hist] == [
        ("production", None, v1, "alice", "initial deploy"),
        ("staging", None, v2, "bob", "try it"),
        ("production", v1, v2, "carol", "ship the staging version"),
    ]
    assert all(datetime.fromisoformat(e["at"]).utcoffset().total_seconds() == 0 for e in hist)
    assert reg.alias_history("staging") == [hist[1]]
    assert reg.resolve("production") == v2
    with pytest.raises(ValueError):
        reg.set_alias("latest", v1)
    with pytest.raises(VersionNotFoundError):
        reg.set_alias("production", "v20000101T000000000000-abcdef")
    with pytest.raises(VersionNotFoundError, match="no committed version or alias 'nope'"):
        reg.load_version("nope")


def test_lock_is_exclusive_and_stale_locks_are_broken(tmp_path: Path) -> None:
    a = ModelRegistry(tmp_path / "r", model_resolver=resolve_class)
    b = ModelRegistry(tmp_path / "r", model_resolver=resolve_class, lock_timeout_s=0.2)
    vid = create(a)
    with a.alias_book.lock():
        with pytest.raises(RegistryError, match="timed out"):
            b.set_alias("production", vid)
    b.set_alias("production", vid)
    lock = tmp_path / "r" / "aliases.json.lock"
    lock.write_text("crashed writer")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    b.set_alias("candidate", vid)  # the stale lock is broken, not waited on forever
    assert a.aliases() == {"production": vid, "candidate": vid} and not lock.exists()


def test_concurrent_alias_updates_from_threads_lose_nothing(reg: ModelRegistry) -> None:
    vid = create(reg)
    n = 15
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            r = ModelRegistry(reg.root, model_resolver=resolve_class)
            for i in range(n):
                r.set_alias(f"{prefix}{i}", vid, f"thread {prefix}")
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = json.loads((Path(reg.root) / "aliases.json").read_text())
    assert set(data["aliases"]) == {f"{p}{i}" for p in "ab" for i in range(n)}
    assert len(data["history"]) == 2 * n


def test_concurrent_alias_updates_from_processes_lose_nothing(reg: ModelRegistry) -> None:
    vid = create(reg)
    n = 10
    code = textwrap.dedent(
        f"""
        import sys, time
        from ensemble.registry import ModelRegistry
        r = ModelRegistry(sys.argv[1])
        while time.time() < float(sys.argv[3]):
            time.sleep(0.001)
        for i in range({n}):
            r.set_alias(sys.argv[2] + str(i), {vid!r}, "process " + sys.argv[2])
        """
    )
    start_at = str(time.time() + 2.0)  # both start writing at the same moment, after imports
    procs = [
        subprocess.Popen([sys.executable, "-c", code, reg.root, p, start_at], stderr=subprocess.PIPE)
        for p in ("p", "q")
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    data = json.loads((Path(reg.root) / "aliases.json").read_text())
    assert set(data["aliases"]) == {f"{p}{i}" for p in "pq" for i in range(n)}
    assert len(data["history"]) == 2 * n


# -- data fingerprint --------------------------------------------------------------------------------


def test_fingerprint_stable_and_sensitive() -> None:
    fp = data_fingerprint(FRAME)
    assert len(fp) == 64 and fp == data_fingerprint(make_frame())
    shuffled = FRAME.sample(frac=1.0, random_state=3)[list(reversed(FRAME.columns))]
    assert data_fingerprint(shuffled) == fp  # row and column order do not matter
    changed = FRAME.copy()
    changed.loc[17, "f1"] = np.nextafter(changed.loc[17, "f1"], np.inf)  # one cell, one ulp
    assert data_fingerprint(changed) != fp
    retyped = FRAME.copy()
    retyped["ticker"] = retyped["ticker"].astype("category")
    assert data_fingerprint(retyped) != fp
    renamed = FRAME.rename(columns={"f0": "g0"})
    assert data_fingerprint(renamed) != fp
    assert data_fingerprint(pd.concat([FRAME, FRAME.iloc[:1]], ignore_index=True)) != fp
    assert data_fingerprint(FRAME.set_index(["date", "ticker"])) == fp  # index treated as columns


def test_fingerprint_stable_across_interpreter_runs() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_registry import FRAME; "
        "from ensemble.registry import data_fingerprint; print(data_fingerprint(FRAME))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert out.stdout.strip() == data_fingerprint(FRAME)
