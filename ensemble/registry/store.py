"""The artifact store: versions as immutable directories of files, each listed with its sha256 and
size in a manifest, published atomically, verified before anything is deserialised.

Layout under the registry root (a local path or any ``pyarrow.fs`` URI)::

    versions/<version_id>/models/<model_name>/...   each model's save() directory
    versions/<version_id>/extras/<name>.json        JSON documents stored beside the models
    versions/<version_id>/manifest.json             ids, metrics, config, fingerprint, cost, sha256 per file
    versions/<version_id>/_COMMITTED                written last: {version_id, manifest_sha256, committed_at}
    .staging/<version_id>-<random>/                 a version being written (invisible to readers)

Publishing. Everything is written into a staging directory, the manifest after every artifact and the
``_COMMITTED`` marker after the manifest. On a local filesystem the staging directory is then renamed to
``versions/<id>`` (``os.rename``: atomic on POSIX); on any other filesystem the files are copied to
``versions/<id>`` and the marker is copied last. Readers only see versions holding the marker, so a
crash at any point leaves no half version visible (:meth:`ArtifactStore.clean_staging` removes the
leftovers).

Reading. The marker and the manifest are validated on every read (:func:`parse_marker`,
:func:`parse_manifest`): the manifest's sha256 must be the marker's, model and extra names must be plain
names, and every listed path must lie under ``models/<a listed model>/`` or be
``extras/<a listed extra>.json``; anything else raises :class:`CorruptFileError` naming the file.
:meth:`ArtifactStore.fetch` then compares the version's whole directory listing with the manifest
(no unexpected file anywhere in the version, no pickle by suffix, no symbolic link leaving the version
on a local filesystem), downloads the requested files into a private directory hashing the bytes as
they are written, and checks the downloaded files' content for pickles, so the bytes verified are
exactly the bytes later deserialised.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ensemble.models.base import _PICKLE_SUFFIXES, UnsafeArtifactError, refuse_pickles
from ensemble.registry.errors import CorruptFileError, IntegrityError, RegistryError, VersionNotFoundError
from ensemble.registry.fsio import (
    FsIO,
    dumps,
    load_json_object,
    safe_relpath,
    sha256_bytes,
    sha256_file,
    utcnow,
    validation_problem,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
COMMITTED_FILE = "_COMMITTED"
VERSIONS_DIR = "versions"
STAGING_DIR = ".staging"
MODELS_DIR = "models"
EXTRAS_DIR = "extras"
VERSION_RE = re.compile(r"^v\d{8}T\d{12}-[0-9a-f]{6}$")
# model, model-kind and extra names: one plain path part (cannot be '.', '..' or hold a '/')
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SHA256_RE = r"^[0-9a-f]{64}$"

_id_lock = threading.Lock()
_last_stamp = ""


def new_version_id(now: datetime | None = None) -> str:
    """``v{YYYYmmddTHHMMSSffffff}-{6 hex}``: sorts by creation time (strictly increasing in a process)."""
    global _last_stamp
    now = now or utcnow()
    with _id_lock:
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        if stamp <= _last_stamp:  # same microsecond or clock went back: keep ids increasing
            stamp = str(int(_last_stamp.replace("T", "")) + 1)
            stamp = f"{stamp[:8]}T{stamp[8:]}"
        _last_stamp = stamp
    return f"v{stamp}-{secrets.token_hex(3)}"


def is_plain_name(name: object) -> bool:
    return isinstance(name, str) and bool(NAME_RE.match(name))


# -- the marker and the manifest: schemas and checks -------------------------------------------------


class _Marker(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    version_id: str
    manifest_sha256: str = Field(pattern=_SHA256_RE)
    committed_at: str


class _FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sha256: str = Field(pattern=_SHA256_RE)
    size: int = Field(ge=0)


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    format_version: int
    version_id: str
    created_at: str
    models: list[str] = Field(min_length=1)
    model_kinds: dict[str, str] = {}
    extras: list[str] = []
    files: dict[str, _FileEntry]
    metrics: dict[str, Any] = {}
    config: Any = None
    data_fingerprint: str = ""
    cost: dict[str, Any] = {}
    notes: list[str] = []
    parent: str | None = None
    status: str


def parse_marker(raw: bytes, path: str, version_id: str) -> dict[str, Any]:
    """A ``_COMMITTED`` marker, validated: CorruptFileError naming ``path`` when it is not one."""
    data = load_json_object(raw, path, "the commit marker")
    try:
        _Marker.model_validate(data)
    except ValidationError as exc:
        raise CorruptFileError(
            f"{path}: the commit marker is malformed ({validation_problem(exc)})", path
        ) from None
    if data["version_id"] != version_id:
        raise IntegrityError(
            f"version {version_id}: {COMMITTED_FILE} names version {data['version_id']!r}",
            path=path,
            expected=version_id,
            actual=str(data["version_id"]),
        )
    return data


def layout_problem(man: Mapping[str, Any]) -> str | None:
    """What is wrong with a (schema-valid) manifest's names and paths, or None.

    Model, kind and extra names must be plain names (:data:`NAME_RE`), each listed once; every file must
    be ``models/<listed model>/<safe relative path>`` or ``extras/<listed extra>.json``; every model must
    have a file and every extra its file.
    """
    models, extras, kinds = list(man["models"]), list(man["extras"]), dict(man["model_kinds"])
    for what, names in (("model", models), ("extra", extras), ("model kind", list(kinds.values()))):
        bad = [n for n in names if not is_plain_name(n)]
        if bad:
            return f"{what} name {bad[0]!r} is not a plain name (letters, digits, _ . - ; no path)"
    for what, names in (("model", models), ("extra", extras)):
        if len(set(names)) != len(names):
            return f"{what} names are listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    if set(kinds) - set(models):
        return f"model_kinds names models that are not listed: {sorted(set(kinds) - set(models))}"
    extra_files = {f"{EXTRAS_DIR}/{e}.json" for e in extras}
    seen_models: set[str] = set()
    for rel in man["files"]:
        if not safe_relpath(rel):
            return f"file path {rel!r} is not a safe relative path"
        top, _, rest = rel.partition("/")
        if top == MODELS_DIR and rest.partition("/")[0] in models and "/" in rest:
            seen_models.add(rest.partition("/")[0])
        elif rel not in extra_files:
            return (
                f"file {rel!r} lies outside the version layout (models/<listed model>/... or "
                "extras/<listed extra>.json)"
            )
    if set(models) - seen_models:
        return f"model {sorted(set(models) - seen_models)[0]!r} has no files"
    missing_extras = sorted(extra_files - set(man["files"]))
    if missing_extras:
        return f"extra file {missing_extras[0]!r} is not listed"
    return None


def parse_manifest(raw: bytes, path: str, version_id: str) -> dict[str, Any]:
    """A ``manifest.json``, validated (schema, version id, format version, names and paths)."""
    man = load_json_object(raw, path, "the manifest")
    if man.get("format_version") != FORMAT_VERSION:
        raise RegistryError(f"version {version_id}: unsupported format_version {man.get('format_version')!r}")
    try:
        _Manifest.model_validate(man)
    except ValidationError as exc:
        raise CorruptFileError(
            f"{path}: the manifest is malformed ({validation_problem(exc)})", path
        ) from None
    if man["version_id"] != version_id:
        raise IntegrityError(
            f"version {version_id}: manifest/marker name version {man['version_id']!r}",
            path=path,
            expected=version_id,
            actual=str(man["version_id"]),
        )
    man.setdefault("model_kinds", {})
    man.setdefault("extras", [])
    problem = layout_problem(man)
    if problem:
        raise CorruptFileError(f"{path}: {problem}; nothing of version {version_id} is loaded", path)
    return man


def _is_pickle_name(rel: str) -> bool:
    return rel.lower().endswith(_PICKLE_SUFFIXES)  # the suffixes refuse_pickles refuses


# -- the store ---------------------------------------------------------------------------------------


class ArtifactStore:
    """Versions under ``<root>/versions`` on the filesystem of ``io``."""

    def __init__(self, io: FsIO) -> None:
        self.io = io

    def version_dir(self, version_id: str) -> str:
        return self.io.p(VERSIONS_DIR, version_id)

    # -- publishing --------------------------------------------------------------------------------
    def publish(
        self, version_id: str, local_root: Path, manifest_fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Publish every file under ``local_root`` (``models/<name>/...``, ``extras/<name>.json``) as
        committed version ``version_id``, atomically; return its manifest. ``manifest_fields``: every
        manifest key but ``files``, ``version_id``, ``format_version`` and ``status``."""
        files: dict[str, dict[str, Any]] = {}
        for f in sorted(p for p in local_root.rglob("*") if p.is_file()):
            digest, size = sha256_file(f)
            files[f.relative_to(local_root).as_posix()] = {"sha256": digest, "size": size}
        for name in manifest_fields["models"]:
            if not any(k.startswith(f"{MODELS_DIR}/{name}/") for k in files):
                raise RegistryError(f"create_version: model {name!r} saved no files")
        manifest = {
            **manifest_fields,
            "format_version": FORMAT_VERSION,
            "version_id": version_id,
            "files": files,
            "status": "committed",
        }
        manifest_bytes = dumps(manifest)
        try:  # publish only what readers will accept
            manifest = parse_manifest(manifest_bytes, MANIFEST_FILE, version_id)
        except CorruptFileError as exc:
            raise RegistryError(
                f"create_version: version {version_id} would not be readable: {exc}"
            ) from None
        staging = self.io.p(STAGING_DIR, f"{version_id}-{secrets.token_hex(4)}")
        final = self.version_dir(version_id)
        published_to_final = False
        try:
            # artifacts into staging, then the manifest, then the marker
            self.io.fs.create_dir(staging, recursive=True)
            made: set[str] = set()
            for rel in files:
                parent_dir = f"{staging}/{rel}".rsplit("/", 1)[0]
                if parent_dir not in made:
                    self.io.fs.create_dir(parent_dir, recursive=True)
                    made.add(parent_dir)
                self.io.upload_file(local_root / rel, f"{staging}/{rel}")
            self._write_manifest(f"{staging}/{MANIFEST_FILE}", manifest_bytes)
            marker = dumps(
                {
                    "version_id": version_id,
                    "manifest_sha256": sha256_bytes(manifest_bytes),
                    "committed_at": utcnow().isoformat(),
                }
            )
            if self.io.is_local:
                self.io.write_bytes(f"{staging}/{COMMITTED_FILE}", marker)
                self.io.fs.create_dir(self.io.p(VERSIONS_DIR), recursive=True)
                os.rename(staging, final)  # atomic on POSIX; fails if ``final`` exists
            else:
                if self.io.exists(final):
                    raise RegistryError(f"version {version_id} already exists")
                published_to_final = True
                for rel in sorted(self.io.list_files(staging)):
                    dst = f"{final}/{rel}"
                    self.io.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
                    self.io.fs.copy_file(f"{staging}/{rel}", dst)
                self._write_marker(f"{final}/{COMMITTED_FILE}", marker)
                self._discard(staging)
        except BaseException:
            logger.error("publishing version %s failed; discarding its partial files", version_id)
            self._discard(staging)
            if published_to_final:
                self._discard(final)
            raise
        return manifest

    # separate methods so that a crash can be simulated at each step
    def _write_manifest(self, path: str, data: bytes) -> None:
        self.io.write_bytes(path, data)

    def _write_marker(self, path: str, data: bytes) -> None:
        self.io.write_bytes(path, data)

    def _discard(self, directory: str) -> None:
        self.io.discard(directory)

    def clean_staging(self, older_than_s: float = 3600.0) -> list[str]:
        """Remove staging directories left by crashed writers (older than ``older_than_s``)."""
        sel = pafs.FileSelector(self.io.p(STAGING_DIR), recursive=False, allow_not_found=True)
        removed = []
        now = time.time()
        for info in self.io.fs.get_file_info(sel):
            if info.type != pafs.FileType.Directory:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            if now - mtime >= older_than_s:
                self._discard(info.path)
                removed.append(info.base_name)
        return sorted(removed)

    # -- reading -----------------------------------------------------------------------------------
    def list_versions(self) -> list[str]:
        """Committed version ids, oldest first."""
        sel = pafs.FileSelector(self.io.p(VERSIONS_DIR), recursive=False, allow_not_found=True)
        names = [
            i.base_name
            for i in self.io.fs.get_file_info(sel)
            if i.type == pafs.FileType.Directory and VERSION_RE.match(i.base_name)
        ]
        if not names:
            return []
        markers = self.io.fs.get_file_info([f"{self.version_dir(n)}/{COMMITTED_FILE}" for n in names])
        return sorted(n for n, m in zip(names, markers, strict=True) if m.type == pafs.FileType.File)

    def is_committed(self, version_id: str) -> bool:
        return bool(VERSION_RE.match(version_id)) and self.io.exists(
            f"{self.version_dir(version_id)}/{COMMITTED_FILE}"
        )

    def manifest(self, version_id: str) -> dict[str, Any]:
        """The committed version's manifest, checked against the sha256 in its ``_COMMITTED`` marker and
        validated (see :func:`parse_manifest`)."""
        if not self.is_committed(version_id):
            raise VersionNotFoundError(f"registry {self.io.uri}: no committed version {version_id!r}")
        vdir = self.version_dir(version_id)
        marker_path, manifest_path = f"{vdir}/{COMMITTED_FILE}", f"{vdir}/{MANIFEST_FILE}"
        for path in (marker_path, manifest_path):
            target = self.io.escapes(vdir, path.rsplit("/", 1)[1])
            if target is not None:
                raise CorruptFileError(f"{path} is a link leading outside its version, to {target}", path)
        marker = parse_marker(self.io.read_bytes(marker_path), marker_path, version_id)
        try:
            raw = self.io.read_bytes(manifest_path)
        except FileNotFoundError:
            raise CorruptFileError(
                f"{manifest_path} is missing although the version is committed", manifest_path
            ) from None
        actual = sha256_bytes(raw)
        if actual != marker["manifest_sha256"]:
            raise IntegrityError(
                f"version {version_id}: {MANIFEST_FILE} sha256 mismatch: expected "
                f"{marker['manifest_sha256']}, actual {actual}",
                path=manifest_path,
                expected=marker["manifest_sha256"],
                actual=actual,
            )
        return parse_manifest(raw, manifest_path, version_id)

    def check_listing(
        self, version_id: str, man: Mapping[str, Any], *, check_pickles: bool
    ) -> dict[str, int]:
        """Compare every file in the version's directory with the manifest: a pickle by name anywhere
        (when ``check_pickles``), an unlisted file, or a link leaving the version (local filesystems) is
        refused. Returns the listing (relative path -> size)."""
        vdir = self.version_dir(version_id)
        have = {
            rel: size
            for rel, size in self.io.list_files(vdir).items()
            if rel not in (MANIFEST_FILE, COMMITTED_FILE)
        }
        if check_pickles:
            pickles = sorted(rel for rel in set(have) | set(man["files"]) if _is_pickle_name(rel))
            if pickles:
                raise UnsafeArtifactError(
                    f"refusing to load version {version_id}: {pickles[0]} is a pickle file by its name; "
                    "pickle files are never loaded (unsafe format)"
                )
        extra = sorted(set(have) - set(man["files"]))
        if extra:
            rel = extra[0]
            raise IntegrityError(
                f"version {version_id}: unexpected file {rel} is not in the manifest "
                f"(expected no file, actual size {have[rel]})",
                path=rel,
                expected=None,
                actual=f"size={have[rel]}",
            )
        for rel in sorted(have):
            target = self.io.escapes(vdir, rel)
            if target is not None:
                raise IntegrityError(
                    f"version {version_id}: {rel} is a link leading outside the version, to {target}",
                    path=rel,
                    expected="a file inside the version",
                    actual=target,
                )
        return have

    def fetch(
        self,
        version_id: str,
        man: Mapping[str, Any],
        rel_dirs: Sequence[str],
        dest: Path,
        *,
        check_pickles: bool = True,
    ) -> None:
        """Download every listed file under ``rel_dirs`` (e.g. ``models/xgboost``, ``extras``) into
        ``dest`` after :meth:`check_listing`, checking sizes and sha256 against the manifest as the
        bytes are written; then (when ``check_pickles``) refuse pickles in ``dest`` by content.
        Raises IntegrityError on the first changed or missing file."""
        have = self.check_listing(version_id, man, check_pickles=check_pickles)
        vdir = self.version_dir(version_id)
        expected: Mapping[str, Mapping[str, Any]] = man["files"]
        want = sorted(rel for rel in expected if any(rel.startswith(d.rstrip("/") + "/") for d in rel_dirs))
        missing = [rel for rel in want if rel not in have]
        if missing:
            rel = missing[0]
            raise IntegrityError(
                f"version {version_id}: file {rel} is missing (expected sha256 {expected[rel]['sha256']})",
                path=rel,
                expected=expected[rel]["sha256"],
                actual=None,
            )
        for rel in want:
            local = dest / rel
            if not local.resolve().is_relative_to(dest.resolve()):  # cannot happen after parse_manifest
                raise CorruptFileError(f"version {version_id}: unsafe path {rel!r} in the manifest", rel)
            digest, size = self.io.download_file(f"{vdir}/{rel}", local)
            exp_digest, exp_size = expected[rel]["sha256"], int(expected[rel]["size"])
            if digest != exp_digest or size != exp_size:
                raise IntegrityError(
                    f"version {version_id}: file {rel} does not match the manifest: expected sha256 "
                    f"{exp_digest} ({exp_size} bytes), actual sha256 {digest} ({size} bytes)",
                    path=rel,
                    expected=exp_digest,
                    actual=digest,
                )
        if check_pickles and dest.is_dir():
            refuse_pickles(dest)
