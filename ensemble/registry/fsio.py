"""File operations on any ``pyarrow.fs`` filesystem, and the JSON helpers every registry part shares.

All registry IO goes through :class:`FsIO`, so the store and the aliases work the same on a local
directory, ``file://`` URIs and object stores (``s3://...``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import secrets
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
from pydantic import ValidationError

from ensemble.registry.errors import CorruptFileError, RegistryError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


def utcnow() -> datetime:
    return datetime.now(UTC)


def actor() -> str:
    """``user@host`` of this process (recorded in the alias history)."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def jsonable(obj: Any, where: str = "") -> Any:
    """Plain JSON values only: numpy scalars become Python numbers, non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic models (e.g. Settings)
        return jsonable(obj.model_dump(mode="json"), where)
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=str) if isinstance(obj, set | frozenset) else obj
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), where)
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


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")


def load_json_object(raw: bytes, path: str, what: str) -> dict[str, Any]:
    """``raw`` parsed as a JSON object, or CorruptFileError naming ``path`` and what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: {what} is not UTF-8 text ({exc})", path) from None
    except json.JSONDecodeError as exc:
        detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise CorruptFileError(
            f"{path}: {what} is not valid JSON ({detail}; {len(raw)} bytes); it was left as it is",
            path,
        ) from None
    if not isinstance(data, dict):
        raise CorruptFileError(
            f"{path}: {what} must be a JSON object, found {type(data).__name__}; it was left as it is", path
        )
    return data


def validation_problem(exc: ValidationError) -> str:
    """The first few problems of a pydantic ValidationError, as ``field.path: message``."""
    parts = [f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:3]]
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts) + more


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def safe_relpath(rel: str) -> bool:
    """A relative posix path whose every part is a plain file or directory name: no absolute path, no
    ``..`` or ``.``, no empty part, no backslash or control character (it cannot leave its base)."""
    if not rel or rel.startswith("/") or "\\" in rel or any(ord(c) < 32 for c in rel):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


class FsIO:
    """``root`` (a local path or a ``pyarrow.fs`` URI) on its filesystem, with the few operations the
    registry needs. ``filesystem``: an already configured pyarrow filesystem (``root`` is a path in it)."""

    def __init__(self, root: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None) -> None:
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

    def p(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root != "/" else "/" + "/".join(parts)

    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path, compression=None) as f:
            return bytes(f.read())

    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path, compression=None) as f:
            f.write(data)

    def replace_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` so that a reader sees the old or the new bytes, never a mix:
        temporary file + ``os.replace`` locally; write-then-read-back elsewhere."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if self.is_local:
            tmp = f"{path}.tmp-{secrets.token_hex(6)}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)  # atomic
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            self.write_bytes(path, data)
            if self.read_bytes(path) != data:
                raise RegistryError(f"{path}: changed by a concurrent writer while being written; retry")

    def list_files(self, directory: str) -> dict[str, int]:
        """Relative posix path -> size of every file below ``directory`` (empty when it does not exist)."""
        sel = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
        prefix = directory.rstrip("/") + "/"
        out: dict[str, int] = {}
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.Directory:
                rel = info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
                out[rel] = int(info.size or 0)
        return out

    def escapes(self, base: str, rel: str) -> str | None:
        """On a local filesystem: where ``base/rel`` really leads when a symbolic link takes it outside
        ``base`` (None when it stays inside, and always None on other filesystems: no links there)."""
        if not self.is_local:
            return None
        real_base = os.path.realpath(base)
        target = os.path.realpath(os.path.join(base, rel))
        return None if target.startswith(real_base.rstrip(os.sep) + os.sep) else target

    def discard(self, directory: str) -> None:
        """Best-effort removal (cleanup after a failed write)."""
        try:
            if self.exists(directory):
                self.fs.delete_dir(directory)
        except Exception:
            logger.warning("could not remove %s; it stays invisible to readers", directory, exc_info=True)

    def upload_file(self, local: Path, remote: str) -> None:
        with local.open("rb") as src, self.fs.open_output_stream(remote, compression=None) as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)

    def download_file(self, remote: str, local: Path) -> tuple[str, int]:
        """Copy ``remote`` to ``local``, returning the sha256 and size of the bytes written."""
        h = hashlib.sha256()
        size = 0
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(remote, compression=None) as src, local.open("wb") as dst:
            while chunk := src.read(CHUNK):
                b = bytes(chunk)
                h.update(b)
                size += len(b)
                dst.write(b)
        return h.hexdigest(), size
