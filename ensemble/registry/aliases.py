"""Aliases (``production``, ``candidate``, ...): one JSON file with an append-only history, updated
under a lock.

``<root>/aliases.json`` holds ``{"aliases": {alias: version_id}, "history": [entry, ...]}``; every
change appends an entry (alias, from, to, reason, action, by, at). Updates hold
``<root>/aliases.json.lock`` (``O_CREAT | O_EXCL`` on a local filesystem; write-then-verify, best
effort, on object stores; a lock older than ``stale_s`` is broken) and replace the file atomically.

Every read validates the file; one that is not JSON or not of that shape raises
:class:`CorruptFileError` naming the file, and nothing is written after a failed read, so the stored
aliases and history stay as they were for a person to repair.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ensemble.registry.errors import CorruptFileError, RegistryError
from ensemble.registry.fsio import FsIO, actor, dumps, load_json_object, utcnow, validation_problem
from ensemble.registry.store import VERSION_RE

logger = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
PRODUCTION = "production"
CANDIDATE = "candidate"
LATEST = "latest"  # pseudo alias: the newest committed version (cannot be set)
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    alias: str = Field(pattern=ALIAS_RE.pattern)
    from_: str | None = Field(alias="from", pattern=VERSION_RE.pattern)
    to: str = Field(pattern=VERSION_RE.pattern)
    action: str
    reason: str = ""
    by: str = ""
    at: str = ""


class _AliasFile(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    aliases: dict[str, str] = {}
    history: list[_Entry] = []


def check_alias(alias: str) -> None:
    """Raise ValueError unless ``alias`` can be set (a name, not a version id, not ``latest``)."""
    if not ALIAS_RE.match(alias) or VERSION_RE.match(alias) or alias == LATEST:
        raise ValueError(f"invalid alias name {alias!r}")


def parse_aliases(raw: bytes, path: str) -> dict[str, Any]:
    """The alias file's content, validated; CorruptFileError naming ``path`` and the first problems."""
    data = load_json_object(raw, path, "the alias file")
    try:
        _AliasFile.model_validate(data)
    except ValidationError as exc:
        raise CorruptFileError(
            f"{path}: the alias file is malformed ({validation_problem(exc)}); it was left as it is", path
        ) from None
    bad = sorted(
        a for a, v in data.get("aliases", {}).items() if not ALIAS_RE.match(a) or not VERSION_RE.match(v)
    )
    if bad:
        raise CorruptFileError(
            f"{path}: the alias file is malformed (alias {bad[0]!r} -> {data['aliases'][bad[0]]!r} is not "
            "an alias name pointing at a version id); it was left as it is",
            path,
        )
    data.setdefault("aliases", {})
    data.setdefault("history", [])
    return data


def record(data: dict[str, Any], alias: str, version: str, reason: str, action: str, by: str | None) -> bool:
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
            "by": by or actor(),
            "at": utcnow().isoformat(),
        }
    )
    logger.info("alias %s: %s -> %s (%s)", alias, old, version, reason)
    return True


def production_stack(history: Sequence[Mapping[str, Any]]) -> list[str]:
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


class AliasBook:
    """The alias file of one registry root: validated reads, atomic writes, the lock."""

    def __init__(self, io: FsIO, lock_timeout_s: float = 30.0, lock_stale_s: float = 120.0) -> None:
        self.io = io
        self.lock_timeout_s = lock_timeout_s
        self.lock_stale_s = lock_stale_s
        self.path = io.p(ALIASES_FILE)
        self.lock_path = io.p(ALIASES_FILE + ".lock")

    def read(self) -> dict[str, Any]:
        try:
            raw = self.io.read_bytes(self.path)
        except FileNotFoundError:
            return {"aliases": {}, "history": []}
        return parse_aliases(raw, self.path)

    def write(self, data: Mapping[str, Any]) -> None:
        raw = dumps(data)
        parse_aliases(raw, self.path)  # never write what the next read would refuse
        self.io.replace_bytes(self.path, raw)

    @contextmanager
    def lock(self) -> Iterator[None]:
        token = f"{actor()} pid={os.getpid()} tid={threading.get_ident()} {secrets.token_hex(8)}"
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.002
        self.io.fs.create_dir(self.io.root, recursive=True)
        while True:
            if self._try_lock(token):
                break
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"timed out after {self.lock_timeout_s}s waiting for the alias lock {self.lock_path}"
                )
            time.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            try:
                if self.io.read_bytes(self.lock_path).decode("utf-8", "replace") == token:
                    self.io.fs.delete_file(self.lock_path)
                else:
                    logger.warning(
                        "alias lock %s was taken over while held (treated as stale)", self.lock_path
                    )
            except FileNotFoundError:
                logger.warning("alias lock %s vanished while held", self.lock_path)

    def _try_lock(self, token: str) -> bool:
        lock = self.lock_path
        info = self.io.fs.get_file_info(lock)
        if info.type == pafs.FileType.File and info.mtime is not None:
            age = time.time() - info.mtime.timestamp()
            if age > self.lock_stale_s:
                logger.warning("breaking stale alias lock %s (%.0fs old)", lock, age)
                try:
                    self.io.fs.delete_file(lock)
                except FileNotFoundError:
                    pass
                return False
        if self.io.is_local:
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
        self.io.write_bytes(lock, token.encode("utf-8"))
        time.sleep(0.05)
        try:
            return self.io.read_bytes(lock).decode("utf-8", "replace") == token
        except FileNotFoundError:
            return False
