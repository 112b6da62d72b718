"""Versioned model store: safe artifact formats, a sha256 manifest, atomic publishing, aliases, rollback.

Layout under ``root`` (a local path or any ``pyarrow.fs`` URI: ``file:///...``, ``s3://bucket/prefix``):

```
<root>/versions/<version_id>/models/<model_name>/...   each model's save() directory
<root>/versions/<version_id>/manifest.json             ids, metrics, config, fingerprint, cost, sha256 per file
<root>/versions/<version_id>/_COMMITTED                written last: {version_id, manifest_sha256, committed_at}
<root>/.staging/<version_id>-<random>/                 a version being written (invisible to readers)
<root>/aliases.json                                    {"aliases": {alias: version_id}, "history": [...]}
<root>/aliases.json.lock                               held while aliases.json is read-modified-written
```

Publishing. Everything is written into a staging directory, the manifest after every artifact and the
``_COMMITTED`` marker after the manifest. On a local filesystem the staging directory is then renamed to
``versions/<id>`` (``os.rename``: atomic on POSIX); on any other filesystem the files are copied to
``versions/<id>`` and the marker is copied last. Readers only see versions holding the marker, so a
crash at any point leaves no half version visible (``clean_staging`` removes the leftovers).

Loading. Every file of a model is downloaded into a private temporary directory and hashed as it is
written; sizes, sha256 and the set of files are checked against the manifest (whose own sha256 is
checked against the marker) *before* anything is deserialised, so the bytes verified are exactly the
bytes loaded. Then :func:`refuse_pickles` runs, then the model class's ``load``. Nothing is ever
unpickled and all metadata is JSON.

Aliases (``production``, ``candidate``, ...) live in one JSON file with an append-only history of every
change (who, when, from, to, reason). Updates hold a lock file (``O_CREAT | O_EXCL`` on a local
filesystem; write-then-verify, best effort, on object stores) and are written atomically (temporary
file + ``os.replace`` locally; write-then-read-back elsewhere).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from ensemble.models import get_model_class
from ensemble.models.base import Forecaster, refuse_pickles

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
COMMITTED_FILE = "_COMMITTED"
ALIASES_FILE = "aliases.json"
VERSIONS_DIR = "versions"
STAGING_DIR = ".staging"
MODELS_DIR = "models"
EXTRAS_DIR = "extras"
PRODUCTION = "production"
CANDIDATE = "candidate"
LATEST = "latest"  # pseudo alias: the newest committed version (cannot be set)

_CHUNK = 1 << 20
_VERSION_RE = re.compile(r"^v\d{8}T\d{12}-[0-9a-f]{6}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")

_id_lock = threading.Lock()
_last_stamp = ""


class RegistryError(RuntimeError):
    """A registry operation could not be done (unknown version or alias, lock timeout, ...)."""


class VersionNotFoundError(RegistryError, KeyError):
    """No committed version (or alias) by that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class IntegrityError(RegistryError):
    """A stored file does not match the manifest: changed, missing or unexpected."""

    def __init__(self, message: str, path: str, expected: str | None, actual: str | None) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class PromotionResult:
    promoted: bool
    reason: str
    candidate: str
    production: str | None  # the production version after the call
    previous_production: str | None
    candidate_score: float | None = None
    production_score: float | None = None


# -- helpers ---------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def new_version_id(now: datetime | None = None) -> str:
    """``v{YYYYmmddTHHMMSSffffff}-{6 hex}``: sorts by creation time (strictly increasing in a process)."""
    global _last_stamp
    now = now or _utcnow()
    with _id_lock:
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        if stamp <= _last_stamp:  # same microsecond or clock went back: keep ids increasing
            stamp = str(int(_last_stamp.replace("T", "")) + 1)
            stamp = f"{stamp[:8]}T{stamp[8:]}"
        _last_stamp = stamp
    return f"v{stamp}-{secrets.token_hex(3)}"


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _jsonable(obj: Any, where: str = "") -> Any:
    """Plain JSON values only: numpy scalars become Python numbers, non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic models (e.g. Settings)
        return _jsonable(obj.model_dump(mode="json"), where)
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=str) if isinstance(obj, set | frozenset) else obj
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, datetime | pd.Timestamp):
        return obj.isoformat()
    if isinstance(obj, Path | PurePosixPath):
        return str(obj)
    raise TypeError(
        f"registry metadata field {where or '<root>'!r}: {type(obj).__name__} is not JSON serialisable"
    )


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def data_fingerprint(df: pd.DataFrame) -> str:
    """sha256 over a canonical form of ``df``: independent of row and column order, sensitive to any cell,
    column name or dtype change; stable across runs (pandas' row hashing uses a fixed key).

    Rows are hashed with :func:`pandas.util.hash_pandas_object` over the columns in sorted name order and
    the row hashes are sorted (a multiset: duplicate rows count). A named index (e.g. date/ticker) is
    treated as columns; an unnamed one is row position only (a shuffled frame keeps its old labels) and
    is ignored.
    """
    if any(n is not None for n in df.index.names):
        df = df.reset_index()
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"data_fingerprint: duplicate column names {dup}")
    order = sorted(range(len(names)), key=lambda i: names[i])
    canon = df.iloc[:, order]
    canon.columns = [names[i] for i in order]
    header = {"columns": [[c, str(canon[c].dtype)] for c in canon.columns], "rows": len(canon)}
    h = hashlib.sha256(_dumps(header))
    if len(canon) and len(canon.columns):
        row_hashes = pd.util.hash_pandas_object(canon, index=False).to_numpy(dtype=np.uint64)
        h.update(np.sort(row_hashes).astype("<u8").tobytes())
    return h.hexdigest()


# -- the registry ----------------------------------------------------------------------------------


class ModelRegistry:
    """A versioned store of fitted Forecasters on any pyarrow filesystem.

    ``root``: a local directory or a URI understood by ``pyarrow.fs.FileSystem.from_uri``. Pass
    ``filesystem`` to use an already configured pyarrow filesystem (``root`` is then a path in it).
    ``model_resolver`` maps a model's ``name`` to its class (default: ``ensemble.models.get_model_class``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        model_resolver: Callable[[str], type[Forecaster]] = get_model_class,
        lock_timeout_s: float = 30.0,
        lock_stale_s: float = 120.0,
    ) -> None:
        root = os.fspath(root)
        if filesystem is not None:
            self.fs, path = filesystem, root
        elif "://" in root:
            self.fs, path = pafs.FileSystem.from_uri(root)
        else:
            self.fs, path = pafs.LocalFileSystem(), os.path.abspath(root)
        self.root = path.rstrip("/") or "/"
        self.uri = root if (filesystem is not None or "://" in root) else self.root  # plain paths: absolute
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.model_resolver = model_resolver
        self.lock_timeout_s = lock_timeout_s
        self.lock_stale_s = lock_stale_s

    def __repr__(self) -> str:
        return f"ModelRegistry({self.uri!r})"

    # -- paths -----------------------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root != "/" else "/" + "/".join(parts)

    def _version_dir(self, version_id: str) -> str:
        return self._p(VERSIONS_DIR, version_id)

    # -- low-level IO (all through pyarrow.fs) ---------------------------------------------------------
    def _exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def _read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path, compression=None) as f:
            return bytes(f.read())

    def _write_bytes(self, path: str, data: bytes) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path, compression=None) as f:
            f.write(data)

    def _list_files(self, directory: str) -> dict[str, int]:
        """Relative posix path -> size of every file below ``directory`` (empty when it does not exist)."""
        sel = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
        prefix = directory.rstrip("/") + "/"
        out: dict[str, int] = {}
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File:
                rel = info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
                out[rel] = int(info.size)
        return out

    def _discard(self, directory: str) -> None:
        """Best-effort removal (cleanup after a failed write)."""
        try:
            if self._exists(directory):
                self.fs.delete_dir(directory)
        except Exception:
            logger.warning("could not remove %s; it stays invisible to readers", directory, exc_info=True)

    def _upload_file(self, local: Path, remote: str) -> None:
        with local.open("rb") as src, self.fs.open_output_stream(remote, compression=None) as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)

    def _download_file(self, remote: str, local: Path) -> tuple[str, int]:
        """Copy ``remote`` to ``local``, returning the sha256 and size of the bytes written."""
        h = hashlib.sha256()
        size = 0
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(remote, compression=None) as src, local.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                b = bytes(chunk)
                h.update(b)
                size += len(b)
                dst.write(b)
        return h.hexdigest(), size

    # -- writing versions ------------------------------------------------------------------------------
    def create_version(
        self,
        models: Mapping[str, Forecaster],
        metrics: Mapping[str, Any] | None = None,
        config: Any = None,
        data_fingerprint: str = "",
        cost: Mapping[str, Any] | None = None,
        notes: Sequence[str] = (),
        parent: str | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> str:
        """Save ``models`` as a new committed version and return its id.

        ``parent`` defaults to the current production version (if any). No alias is changed: call
        :meth:`promote` (or :meth:`set_alias`) afterwards. ``extras`` are JSON documents stored beside the
        models (e.g. the fitted feature preprocessor), checksummed like them; read with :meth:`load_extra`.
        """
        if not models:
            raise ValueError("create_version: no models given")
        for name in models:
            if not _NAME_RE.match(name):
                raise ValueError(f"create_version: invalid model name {name!r} (letters, digits, _ . - only)")
        if parent is None:
            parent = self._read_aliases()["aliases"].get(PRODUCTION)
        created = _utcnow()
        version_id = new_version_id(created)
        meta = {
            "metrics": _jsonable(metrics or {}, "metrics"),
            "config": _jsonable(config if config is not None else {}, "config"),
            "cost": _jsonable(cost or {}, "cost"),
            "notes": [str(n) for n in notes],
        }
        staging = self._p(STAGING_DIR, f"{version_id}-{secrets.token_hex(4)}")
        final = self._version_dir(version_id)
        published_to_final = False
        try:
            with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
                tmp_root = Path(tmp)
                kinds: dict[str, str] = {}
                for name, model in models.items():
                    target = tmp_root / MODELS_DIR / name
                    target.mkdir(parents=True)
                    model.save(target)
                    refuse_pickles(target)  # never publish something that would be unpickled
                    kinds[name] = str(getattr(model, "name", name))
                for name, doc in (extras or {}).items():
                    if not _NAME_RE.match(name):
                        raise ValueError(f"create_version: invalid extra name {name!r}")
                    (tmp_root / EXTRAS_DIR).mkdir(exist_ok=True)
                    (tmp_root / EXTRAS_DIR / f"{name}.json").write_bytes(_dumps(_jsonable(doc, name)))
                files: dict[str, dict[str, Any]] = {}
                for f in sorted(p for p in tmp_root.rglob("*") if p.is_file()):
                    digest, size = _sha256_file(f)
                    files[f.relative_to(tmp_root).as_posix()] = {"sha256": digest, "size": size}
                for name in models:
                    if not any(k.startswith(f"{MODELS_DIR}/{name}/") for k in files):
                        raise RegistryError(f"create_version: model {name!r} saved no files")

                # upload artifacts into staging, then the manifest, then the marker
                self.fs.create_dir(staging, recursive=True)
                made: set[str] = set()
                for rel in files:
                    parent_dir = f"{staging}/{rel}".rsplit("/", 1)[0]
                    if parent_dir not in made:
                        self.fs.create_dir(parent_dir, recursive=True)
                        made.add(parent_dir)
                    self._upload_file(tmp_root / rel, f"{staging}/{rel}")
            manifest = {
                "format_version": FORMAT_VERSION,
                "version_id": version_id,
                "created_at": created.isoformat(),
                "models": list(models),
                "model_kinds": kinds,
                "extras": list(extras or {}),
                "files": files,
                "metrics": meta["metrics"],
                "config": meta["config"],
                "data_fingerprint": str(data_fingerprint),
                "cost": meta["cost"],
                "notes": meta["notes"],
                "parent": parent,
                "status": "committed",
            }
            manifest_bytes = _dumps(manifest)
            self._write_manifest(f"{staging}/{MANIFEST_FILE}", manifest_bytes)
            marker = _dumps(
                {
                    "version_id": version_id,
                    "manifest_sha256": _sha256_bytes(manifest_bytes),
                    "committed_at": _utcnow().isoformat(),
                }
            )
            if self.is_local:
                self._write_bytes(f"{staging}/{COMMITTED_FILE}", marker)
                self.fs.create_dir(self._p(VERSIONS_DIR), recursive=True)
                os.rename(staging, final)  # atomic on POSIX; fails if ``final`` exists
            else:
                if self._exists(final):
                    raise RegistryError(f"version {version_id} already exists")
                published_to_final = True
                for rel in sorted(self._list_files(staging)):
                    dst = f"{final}/{rel}"
                    self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
                    self.fs.copy_file(f"{staging}/{rel}", dst)
                self._write_marker(f"{final}/{COMMITTED_FILE}", marker)
                self._discard(staging)
        except BaseException:
            logger.error("create_version %s failed; discarding its partial files", version_id)
            self._discard(staging)
            if published_to_final:
                self._discard(final)
            raise
        logger.info(
            "registry %s: committed version %s (%s; %d files)",
            self.uri,
            version_id,
            ", ".join(models),
            len(files),
        )
        return version_id

    # separate methods so that a crash can be simulated at each step
    def _write_manifest(self, path: str, data: bytes) -> None:
        self._write_bytes(path, data)

    def _write_marker(self, path: str, data: bytes) -> None:
        self._write_bytes(path, data)

    def clean_staging(self, older_than_s: float = 3600.0) -> list[str]:
        """Remove staging directories left by crashed writers (older than ``older_than_s``)."""
        sel = pafs.FileSelector(self._p(STAGING_DIR), recursive=False, allow_not_found=True)
        removed = []
        now = time.time()
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.Directory:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            if now - mtime >= older_than_s:
                self._discard(info.path)
                removed.append(info.base_name)
        return sorted(removed)

    # -- reading versions ------------------------------------------------------------------------------
    def list_versions(self) -> list[str]:
        """Committed version ids, oldest first."""
        sel = pafs.FileSelector(self._p(VERSIONS_DIR), recursive=False, allow_not_found=True)
        names = [
            i.base_name
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.Directory and _VERSION_RE.match(i.base_name)
        ]
        if not names:
            return []
        markers = self.fs.get_file_info([f"{self._version_dir(n)}/{COMMITTED_FILE}" for n in names])
        return sorted(n for n, m in zip(names, markers, strict=True) if m.type == pafs.FileType.File)

    def _is_committed(self, version_id: str) -> bool:
        return bool(_VERSION_RE.match(version_id)) and self._exists(
            f"{self._version_dir(version_id)}/{COMMITTED_FILE}"
        )

    def aliases(self) -> dict[str, str]:
        return dict(self._read_aliases()["aliases"])

    def alias_history(self, alias: str | None = None) -> list[dict[str, Any]]:
        hist = self._read_aliases()["history"]
        return [dict(e) for e in hist if alias is None or e.get("alias") == alias]

    def resolve(self, alias_or_version: str) -> str:
        """The committed version id an alias (or ``latest``, or a version id) stands for."""
        if alias_or_version == LATEST:
            versions = self.list_versions()
            if not versions:
                raise VersionNotFoundError(f"registry {self.uri}: no committed versions")
            return versions[-1]
        table = self._read_aliases()["aliases"]
        version = table.get(alias_or_version, alias_or_version)
        if not self._is_committed(version):
            if alias_or_version in table:
                raise VersionNotFoundError(
                    f"alias {alias_or_version!r} points at {version!r}, which is not a committed version"
                )
            raise VersionNotFoundError(
                f"registry {self.uri}: no committed version or alias {alias_or_version!r} (aliases: {sorted(table)})"
            )
        return str(version)

    def manifest(self, version_or_alias: str) -> dict[str, Any]:
        """The version's manifest, checked against the sha256 recorded in its ``_COMMITTED`` marker."""
        version_id = self.resolve(version_or_alias)
        vdir = self._version_dir(version_id)
        marker = json.loads(self._read_bytes(f"{vdir}/{COMMITTED_FILE}"))
        raw = self._read_bytes(f"{vdir}/{MANIFEST_FILE}")
        actual = _sha256_bytes(raw)
        if actual != marker.get("manifest_sha256"):
            raise IntegrityError(
                f"version {version_id}: {MANIFEST_FILE} sha256 mismatch: expected "
                f"{marker.get('manifest_sha256')}, actual {actual}",
                path=f"{vdir}/{MANIFEST_FILE}",
                expected=marker.get("manifest_sha256"),
                actual=actual,
            )
        man: dict[str, Any] = json.loads(raw)
        if man.get("version_id") != version_id or marker.get("version_id") != version_id:
            raise IntegrityError(
                f"version {version_id}: manifest/marker name version {man.get('version_id')!r}",
                path=f"{vdir}/{MANIFEST_FILE}",
                expected=version_id,
                actual=man.get("version_id"),
            )
        if man.get("format_version") != FORMAT_VERSION:
            raise RegistryError(
                f"version {version_id}: unsupported format_version {man.get('format_version')!r}"
            )
        return man

    def verify(self, version_or_alias: str, models: Sequence[str] | None = None) -> str:
        """Download and check every file of ``models`` (default all) in a scratch directory; return the id."""
        version_id = self.resolve(version_or_alias)
        man = self.manifest(version_id)
        with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
            self._fetch_verified(version_id, man, self._select(man, models), Path(tmp))
        return version_id

    def _select(self, man: Mapping[str, Any], models: Sequence[str] | None) -> list[str]:
        available = list(man["models"])
        if models is None:
            return available
        if isinstance(models, str):
            models = [models]
        unknown = [m for m in models if m not in available]
        if unknown:
            raise KeyError(f"version {man['version_id']} has no model(s) {unknown}; it holds {available}")
        return list(models)

    def _fetch_verified(
        self, version_id: str, man: Mapping[str, Any], names: Sequence[str], dest: Path
    ) -> None:
        """Download every file of ``names`` into ``dest`` and check it against the manifest; raises
        IntegrityError on the first changed, missing or unexpected file."""
        for name in names:
            self._fetch_dir_verified(version_id, man, f"{MODELS_DIR}/{name}", dest)

    def _fetch_dir_verified(self, version_id: str, man: Mapping[str, Any], rel_dir: str, dest: Path) -> None:
        vdir = self._version_dir(version_id)
        expected: dict[str, dict[str, Any]] = man["files"]
        prefix = f"{rel_dir}/"
        want = {k: v for k, v in expected.items() if k.startswith(prefix)}
        have = {prefix + k: size for k, size in self._list_files(f"{vdir}/{rel_dir}").items()}
        extra = sorted(set(have) - set(want))
        if extra:
            rel = extra[0]
            raise IntegrityError(
                f"version {version_id}: unexpected file {rel} is not in the manifest "
                f"(expected no file, actual size {have[rel]})",
                path=rel,
                expected=None,
                actual=f"size={have[rel]}",
            )
        missing = sorted(set(want) - set(have))
        if missing:
            rel = missing[0]
            raise IntegrityError(
                f"version {version_id}: file {rel} is missing (expected sha256 {want[rel]['sha256']})",
                path=rel,
                expected=want[rel]["sha256"],
                actual=None,
            )
        for rel in sorted(want):
            if not _safe_relpath(rel):
                raise IntegrityError(
                    f"version {version_id}: unsafe path {rel!r} in manifest",
                    path=rel,
                    expected=None,
                    actual=None,
                )
            digest, size = self._download_file(f"{vdir}/{rel}", dest / rel)
            exp_digest, exp_size = want[rel]["sha256"], int(want[rel]["size"])
            if digest != exp_digest or size != exp_size:
                raise IntegrityError(
                    f"version {version_id}: file {rel} does not match the manifest: expected sha256 "
                    f"{exp_digest} ({exp_size} bytes), actual sha256 {digest} ({size} bytes)",
                    path=rel,
                    expected=exp_digest,
                    actual=digest,
                )

    def load_version(
        self, version_or_alias: str, models: Sequence[str] | None = None
    ) -> dict[str, Forecaster]:
        """Load ``models`` (default: all) of a version: verify every file's sha256 and size against the
        manifest, refuse pickles, then ``load`` each with its class. Nothing is loaded unless all the
        requested models verify."""
        version_id = self.resolve(version_or_alias)
        man = self.manifest(version_id)
        names = self._select(man, models)
        kinds: Mapping[str, str] = man.get("model_kinds", {})
        with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
            dest = Path(tmp)
            self._fetch_verified(version_id, man, names, dest)
            for name in names:
                refuse_pickles(dest / MODELS_DIR / name)
            classes = {name: self.model_resolver(kinds.get(name, name)) for name in names}
            loaded = {name: classes[name].load(dest / MODELS_DIR / name) for name in names}
        logger.info("registry %s: loaded %s from version %s", self.uri, ", ".join(names), version_id)
        return loaded

    def load_extra(self, version_or_alias: str, name: str) -> Any:
        """A JSON document stored with ``create_version(extras=...)``, verified against the manifest."""
        version_id = self.resolve(version_or_alias)
        man = self.manifest(version_id)
        if name not in man.get("extras", []):
            raise KeyError(f"version {version_id} has no extra {name!r}; it holds {man.get('extras', [])}")
        with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
            self._fetch_dir_verified(version_id, man, EXTRAS_DIR, Path(tmp))
            return json.loads((Path(tmp) / EXTRAS_DIR / f"{name}.json").read_text())

    # -- aliases ---------------------------------------------------------------------------------------
    def _read_aliases(self) -> dict[str, Any]:
        path = self._p(ALIASES_FILE)
        try:
            raw = self._read_bytes(path)
        except FileNotFoundError:
            return {"aliases": {}, "history": []}
        data: dict[str, Any] = json.loads(raw)
        data.setdefault("aliases", {})
        data.setdefault("history", [])
        return data

    def _write_aliases(self, data: Mapping[str, Any]) -> None:
        path = self._p(ALIASES_FILE)
        raw = _dumps(data)
        self.fs.create_dir(self.root, recursive=True)
        if self.is_local:
            tmp = f"{path}.tmp-{secrets.token_hex(6)}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(raw)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)  # atomic
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            self._write_bytes(path, raw)
            if self._read_bytes(path) != raw:
                raise RegistryError(f"{path}: changed by a concurrent writer while being written; retry")

    @contextmanager
    def _alias_lock(self) -> Iterator[None]:
        lock = self._p(ALIASES_FILE + ".lock")
        token = f"{_actor()} pid={os.getpid()} tid={threading.get_ident()} {secrets.token_hex(8)}"
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.002
        self.fs.create_dir(self.root, recursive=True)
        while True:
            if self._try_lock(lock, token):
                break
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"timed out after {self.lock_timeout_s}s waiting for the alias lock {lock}"
                )
            time.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            try:
                if self._read_bytes(lock).decode("utf-8", "replace") == token:
                    self.fs.delete_file(lock)
                else:
                    logger.warning("alias lock %s was taken over while held (treated as stale)", lock)
            except FileNotFoundError:
                logger.warning("alias lock %s vanished while held", lock)

    def _try_lock(self, lock: str, token: str) -> bool:
        info = self.fs.get_file_info(lock)
        if info.type == pafs.FileType.File and info.mtime is not None:
            age = time.time() - info.mtime.timestamp()
            if age > self.lock_stale_s:
                logger.warning("breaking stale alias lock %s (%.0fs old)", lock, age)
                try:
                    self.fs.delete_file(lock)
                except FileNotFoundError:
                    pass
                return False
        if self.is_local:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(token.encode("utf-8"))
            return True
        # object stores: no exclusive create in pyarrow.fs; write, wait, read back (best effort)
        if info.type != pafs.FileType.NotFound:
            return False
        self._write_bytes(lock, token.encode("utf-8"))
        time.sleep(0.05)
        try:
            return self._read_bytes(lock).decode("utf-8", "replace") == token
        except FileNotFoundError:
            return False

    def _record(
        self, data: dict[str, Any], alias: str, version: str, reason: str, action: str, actor: str | None
    ) -> bool:
        """Point ``alias`` at ``version`` in ``data`` and append the history entry; False if a no-op."""
        old = data["aliases"].get(alias)
        if old == version:
            return False
        data["aliases"][alias] = version
        data["history"].append(
            {
                "alias": alias,
                "from": old,
                "to": version,
                "reason": reason,
                "action": action,
                "by": actor or _actor(),
                "at": _utcnow().isoformat(),
            }
        )
        logger.info("registry %s: %s %s -> %s (%s)", self.uri, alias, old, version, reason)
        return True

    @staticmethod
    def _check_alias(alias: str) -> None:
        if not _ALIAS_RE.match(alias) or _VERSION_RE.match(alias) or alias == LATEST:
            raise ValueError(f"invalid alias name {alias!r}")

    def set_alias(self, alias: str, version: str, reason: str = "", *, actor: str | None = None) -> str:
        """Point ``alias`` at ``version`` (an id or another alias); returns the version id."""
        self._check_alias(alias)
        with self._alias_lock():
            data = self._read_aliases()
            target = self._resolve_in(data, version)
            if self._record(data, alias, target, reason or "set", "set", actor):
                self._write_aliases(data)
        return target

    def _resolve_in(self, data: Mapping[str, Any], alias_or_version: str) -> str:
        if alias_or_version == LATEST:
            return self.resolve(LATEST)
        version = str(data["aliases"].get(alias_or_version, alias_or_version))
        if not self._is_committed(version):
            raise VersionNotFoundError(
                f"registry {self.uri}: no committed version or alias {alias_or_version!r}"
            )
        return version

    def _score(self, man: Mapping[str, Any], path: Sequence[str]) -> float | None:
        node: Any = man.get("metrics", {})
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        try:
            value = float(node)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def promote(
        self,
        candidate_version: str,
        metric: str = "valid_rank_ic_h5",
        higher_is_better: bool = True,
        min_improvement: float = 0.0,
        *,
        metric_path: Sequence[str] | None = None,
        actor: str | None = None,
    ) -> PromotionResult:
        """Make ``candidate_version`` the ``candidate``; make it ``production`` too only if it beats the
        current production on ``metrics['ensemble'][metric]`` (or ``metrics`` at ``metric_path``) by more
        than ``min_improvement``. With no production yet, the candidate is promoted."""
        path = tuple(metric_path) if metric_path is not None else ("ensemble", metric)
        label = "metrics." + ".".join(path)
        with self._alias_lock():
            data = self._read_aliases()
            cand = self._resolve_in(data, candidate_version)
            prod = data["aliases"].get(PRODUCTION)
            cand_score = self._score(self.manifest(cand), path)
            prod_score: float | None = None
            if prod is None:
                promoted, reason = True, f"no production version yet; {cand} ({label}={cand_score}) promoted"
            elif prod == cand:
                promoted, reason = False, f"{cand} is already production"
            elif cand_score is None:
                promoted, reason = False, f"candidate {cand} has no finite {label}; production {prod} kept"
            elif not self._is_committed(prod):
                promoted, reason = True, f"production {prod} is not a committed version; {cand} promoted"
            else:
                prod_score = self._score(self.manifest(prod), path)
                if prod_score is None:
                    promoted = False
                    reason = (
                        f"production {prod} has no finite {label} to compare with; kept "
                        f"(use set_alias to promote {cand} by hand)"
                    )
                else:
                    gain = cand_score - prod_score if higher_is_better else prod_score - cand_score
                    better = "higher" if higher_is_better else "lower"
                    promoted = gain > min_improvement
                    verdict = "beats" if promoted else "does not beat"
                    reason = (
                        f"candidate {cand} {label}={cand_score:.6g} {verdict} production {prod} "
                        f"{label}={prod_score:.6g} ({better} is better; improvement {gain:.6g}, "
                        f"required > {min_improvement:.6g})"
                    )
            changed = self._record(data, CANDIDATE, cand, reason, "promote", actor)
            if promoted:
                changed |= self._record(data, PRODUCTION, cand, reason, "promote", actor)
            if changed:
                self._write_aliases(data)
        logger.info("promote %s: %s", "accepted" if promoted else "rejected", reason)
        return PromotionResult(
            promoted=promoted,
            reason=reason,
            candidate=cand,
            production=cand if promoted else prod,
            previous_production=prod,
            candidate_score=cand_score,
            production_score=prod_score,
        )

    @staticmethod
    def _production_stack(history: Sequence[Mapping[str, Any]]) -> list[str]:
        """Replay the production history: promotions push, rollbacks pop back to their target."""
        stack: list[str] = []
        for e in history:
            if e.get("alias") != PRODUCTION:
                continue
            to = str(e["to"])
            if e.get("action") == "rollback":
                if to in stack:  # back to an earlier production: drop what came after it
                    del stack[len(stack) - stack[::-1].index(to) :]
                else:  # to a version never in production (or popped earlier): like a promotion
                    stack.append(to)
            elif not stack or stack[-1] != to:
                stack.append(to)
        return stack

    def rollback(self, to: str | None = None, reason: str = "", *, actor: str | None = None) -> str:
        """Point ``production`` back at the previous production version (undoing the last promotion;
        repeated calls walk further back), or at ``to``. Returns the new production id."""
        with self._alias_lock():
            data = self._read_aliases()
            current = data["aliases"].get(PRODUCTION)
            if to is not None:
                target = self._resolve_in(data, to)
            else:
                stack = self._production_stack(data["history"])
                earlier = [v for v in stack if v != current]
                if not earlier:
                    raise RegistryError(f"registry {self.uri}: no earlier production version to roll back to")
                target = earlier[-1]
                if not self._is_committed(target):
                    raise VersionNotFoundError(f"previous production {target!r} is not a committed version")
            if target == current:
                raise RegistryError(f"{target} is already production")
            why = reason or f"rollback from {current}"
            self._record(data, PRODUCTION, target, why, "rollback", actor)
            self._write_aliases(data)
        return target


def _safe_relpath(rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in rel


__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "IntegrityError",
    "ModelRegistry",
    "PromotionResult",
    "RegistryError",
    "VersionNotFoundError",
    "data_fingerprint",
    "new_version_id",
]
