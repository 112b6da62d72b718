"""ModelRegistry: fitted Forecasters in versions of the artifact store, with aliases and promotion.

The registry composes the three parts of this package: :mod:`~ensemble.registry.store` (files,
manifest, checksums, atomic publishing, verification before anything is deserialised),
:mod:`~ensemble.registry.aliases` (aliases with history under a lock) and
:mod:`~ensemble.registry.promotion` (the promotion decision, a pure function). What it adds: turning
Forecasters into files (``save``) and back (``load`` with the class the manifest names, after the
store verified every byte and refused pickles). Nothing is ever unpickled and all metadata is JSON.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ensemble.models import get_model_class
from ensemble.models.base import Forecaster, refuse_pickles
from ensemble.registry.aliases import (
    CANDIDATE,
    LATEST,
    PRODUCTION,
    AliasBook,
    check_alias,
    production_stack,
    record,
)
from ensemble.registry.errors import CorruptFileError, RegistryError, VersionNotFoundError
from ensemble.registry.fsio import FsIO, dumps, jsonable, utcnow
from ensemble.registry.promotion import DEFAULT_METRIC, PromotionResult, decide_promotion
from ensemble.registry.promotion import metric_path as promotion_metric_path
from ensemble.registry.store import (
    EXTRAS_DIR,
    MANIFEST_FILE,
    MODELS_DIR,
    VERSION_RE,
    ArtifactStore,
    is_plain_name,
    new_version_id,
)

logger = logging.getLogger(__name__)


class ModelRegistry:
    """A versioned store of fitted Forecasters on any pyarrow filesystem.

    ``root``: a local directory or a URI understood by ``pyarrow.fs.FileSystem.from_uri``. Pass
    ``filesystem`` to use an already configured pyarrow filesystem (``root`` is then a path in it).
    ``model_resolver`` maps a model's kind (its class's ``name``) to its class (default:
    ``ensemble.models.get_model_class``, which knows the six models); a manifest naming a kind the
    resolver does not know is refused.
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
        self.io = FsIO(root, filesystem)
        self.store = ArtifactStore(self.io)
        self.alias_book = AliasBook(self.io, lock_timeout_s=lock_timeout_s, lock_stale_s=lock_stale_s)
        self.model_resolver = model_resolver

    @property
    def fs(self) -> pafs.FileSystem:
        return self.io.fs

    @property
    def root(self) -> str:
        return self.io.root

    @property
    def uri(self) -> str:
        return self.io.uri

    @property
    def is_local(self) -> bool:
        return self.io.is_local

    def __repr__(self) -> str:
        return f"ModelRegistry({self.uri!r})"

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
        for what, names in (("model", list(models)), ("extra", list(extras or {}))):
            for name in names:
                if not is_plain_name(name):
                    raise ValueError(
                        f"create_version: invalid {what} name {name!r} (letters, digits, _ . - only)"
                    )
        if parent is None:
            parent = self.alias_book.read()["aliases"].get(PRODUCTION)
        created = utcnow()
        version_id = new_version_id(created)
        with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
            tmp_root = Path(tmp)
            kinds: dict[str, str] = {}
            for name, model in models.items():
                kind = str(getattr(model, "name", name))
                if not is_plain_name(kind):
                    raise ValueError(f"create_version: model {name!r} has an invalid kind {kind!r}")
                target = tmp_root / MODELS_DIR / name
                target.mkdir(parents=True)
                model.save(target)
                refuse_pickles(target)  # never publish something that would be unpickled
                kinds[name] = kind
            for name, doc in (extras or {}).items():
                (tmp_root / EXTRAS_DIR).mkdir(exist_ok=True)
                (tmp_root / EXTRAS_DIR / f"{name}.json").write_bytes(dumps(jsonable(doc, name)))
            man = self.store.publish(
                version_id,
                tmp_root,
                {
                    "created_at": created.isoformat(),
                    "models": list(models),
                    "model_kinds": kinds,
                    "extras": list(extras or {}),
                    "metrics": jsonable(metrics or {}, "metrics"),
                    "config": jsonable(config if config is not None else {}, "config"),
                    "data_fingerprint": str(data_fingerprint),
                    "cost": jsonable(cost or {}, "cost"),
                    "notes": [str(n) for n in notes],
                    "parent": parent,
                },
            )
        logger.info(
            "registry %s: committed version %s (%s; %d files)",
            self.uri,
            version_id,
            ", ".join(models),
            len(man["files"]),
        )
        return version_id

    def clean_staging(self, older_than_s: float = 3600.0) -> list[str]:
        """Remove staging directories left by crashed writers (older than ``older_than_s``)."""
        return self.store.clean_staging(older_than_s)

    # -- reading versions ------------------------------------------------------------------------------
    def list_versions(self) -> list[str]:
        """Committed version ids, oldest first."""
        return self.store.list_versions()

    def aliases(self) -> dict[str, str]:
        return dict(self.alias_book.read()["aliases"])

    def alias_history(self, alias: str | None = None) -> list[dict[str, Any]]:
        hist = self.alias_book.read()["history"]
        return [dict(e) for e in hist if alias is None or e.get("alias") == alias]

    def resolve(self, alias_or_version: str) -> str:
        """The committed version id an alias (or ``latest``, or a version id) stands for. A version id
        is resolved without reading the alias file."""
        if alias_or_version == LATEST or VERSION_RE.match(alias_or_version):
            return self._resolve_in(None, alias_or_version)
        return self._resolve_in(self.alias_book.read(), alias_or_version)

    def _resolve_in(self, data: Mapping[str, Any] | None, alias_or_version: str) -> str:
        if alias_or_version == LATEST:
            versions = self.list_versions()
            if not versions:
                raise VersionNotFoundError(f"registry {self.uri}: no committed versions")
            return versions[-1]
        if VERSION_RE.match(alias_or_version):
            if not self.store.is_committed(alias_or_version):
                raise VersionNotFoundError(f"registry {self.uri}: no committed version {alias_or_version!r}")
            return alias_or_version
        table: Mapping[str, str] = (data or {}).get("aliases", {})
        if alias_or_version not in table:
            raise VersionNotFoundError(
                f"registry {self.uri}: no committed version or alias {alias_or_version!r} "
                f"(aliases: {sorted(table)})"
            )
        version = table[alias_or_version]
        if not self.store.is_committed(version):
            raise VersionNotFoundError(
                f"alias {alias_or_version!r} points at {version!r}, which is not a committed version"
            )
        return version

    def manifest(self, version_or_alias: str) -> dict[str, Any]:
        """The version's manifest, checked against the sha256 recorded in its ``_COMMITTED`` marker and
        validated (names and paths)."""
        return self.store.manifest(self.resolve(version_or_alias))

    def verify(self, version_or_alias: str, models: Sequence[str] | None = None) -> str:
        """Download and check every file of ``models`` (default all) and the extras against the manifest
        in a scratch directory; return the id. This is the checksum layer only: :meth:`load_version`
        adds the pickle refusal and the model-kind check."""
        version_id = self.resolve(version_or_alias)
        man = self.store.manifest(version_id)
        dirs = [f"{MODELS_DIR}/{n}" for n in self._select(man, models)] + [EXTRAS_DIR]
        with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
            self.store.fetch(version_id, man, dirs, Path(tmp), check_pickles=False)
        return version_id

    @staticmethod
    def _select(man: Mapping[str, Any], models: Sequence[str] | None) -> list[str]:
        available = list(man["models"])
        if models is None:
            return available
        if isinstance(models, str):
            models = [models]
        unknown = [m for m in models if m not in available]
        if unknown:
            raise KeyError(f"version {man['version_id']} has no model(s) {unknown}; it holds {available}")
        return list(models)

    def _model_class(self, version_id: str, man: Mapping[str, Any], name: str) -> type[Forecaster]:
        kind = man["model_kinds"].get(name, name)
        try:
            return self.model_resolver(kind)
        except KeyError as exc:
            path = f"{self.store.version_dir(version_id)}/{MANIFEST_FILE}"
            raise CorruptFileError(
                f"{path}: model {name!r} is of kind {kind!r}, which is not a known model "
                f"({exc.args[0] if exc.args else exc}); nothing of version {version_id} is loaded",
                path,
            ) from None

    def load_version(
        self, version_or_alias: str, models: Sequence[str] | None = None
    ) -> dict[str, Forecaster]:
        """Load ``models`` (default: all) of a version. Before any ``load``: the manifest is validated
        (names, kinds, paths), the whole version's listing is compared with it (no unlisted file, no
        pickle by name anywhere), every requested model's files and the extras are downloaded and
        checked (size, sha256), and the downloaded files are checked for pickles by content. Nothing is
        loaded unless all of that passes."""
        version_id = self.resolve(version_or_alias)
        man = self.store.manifest(version_id)
        names = self._select(man, models)
        classes = {name: self._model_class(version_id, man, name) for name in names}
        with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
            dest = Path(tmp)
            self.store.fetch(version_id, man, [f"{MODELS_DIR}/{n}" for n in names] + [EXTRAS_DIR], dest)
            loaded = {name: classes[name].load(dest / MODELS_DIR / name) for name in names}
        logger.info("registry %s: loaded %s from version %s", self.uri, ", ".join(names), version_id)
        return loaded

    def load_extra(self, version_or_alias: str, name: str) -> Any:
        """A JSON document stored with ``create_version(extras=...)``, verified against the manifest."""
        version_id = self.resolve(version_or_alias)
        man = self.store.manifest(version_id)
        if name not in man["extras"]:
            raise KeyError(f"version {version_id} has no extra {name!r}; it holds {man['extras']}")
        with tempfile.TemporaryDirectory(prefix="ensemble-registry-") as tmp:
            self.store.fetch(version_id, man, [EXTRAS_DIR], Path(tmp))
            rel = f"{EXTRAS_DIR}/{name}.json"
            raw = (Path(tmp) / rel).read_bytes()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            path = f"{self.store.version_dir(version_id)}/{rel}"
            raise CorruptFileError(f"{path}: extra {name!r} is not valid JSON ({exc})", path) from None

    # -- aliases ---------------------------------------------------------------------------------------
    def set_alias(self, alias: str, version: str, reason: str = "", *, actor: str | None = None) -> str:
        """Point ``alias`` at ``version`` (an id or another alias); returns the version id."""
        check_alias(alias)
        with self.alias_book.lock():
            data = self.alias_book.read()
            target = self._resolve_in(data, version)
            self.store.manifest(target)  # an alias never points at a version whose manifest is unreadable
            if record(data, alias, target, reason or "set", "set", actor):
                self.alias_book.write(data)
        return target

    def promote(
        self,
        candidate_version: str,
        metric: str = DEFAULT_METRIC,
        higher_is_better: bool = True,
        min_improvement: float = 0.0,
        *,
        metric_path: Sequence[str] | None = None,
        actor: str | None = None,
    ) -> PromotionResult:
        """Make ``candidate_version`` the ``candidate``; make it ``production`` too only if it beats the
        current production on ``metrics['ensemble'][metric]`` (or ``metrics`` at ``metric_path``) by more
        than ``min_improvement`` (the rule: :func:`ensemble.registry.promotion.decide_promotion`). With no
        production yet, the candidate is promoted."""
        path = promotion_metric_path(metric, metric_path)
        with self.alias_book.lock():
            data = self.alias_book.read()
            cand = self._resolve_in(data, candidate_version)
            prod: str | None = data["aliases"].get(PRODUCTION)
            prod_metrics = None
            if prod is not None and prod != cand and self.store.is_committed(prod):
                prod_metrics = self.store.manifest(prod)["metrics"]
            decision = decide_promotion(
                cand,
                self.store.manifest(cand)["metrics"],
                prod,
                prod_metrics,
                path,
                higher_is_better=higher_is_better,
                min_improvement=min_improvement,
            )
            changed = record(data, CANDIDATE, cand, decision.reason, "promote", actor)
            if decision.promoted:
                changed |= record(data, PRODUCTION, cand, decision.reason, "promote", actor)
            if changed:
                self.alias_book.write(data)
        logger.info("promote %s: %s", "accepted" if decision.promoted else "rejected", decision.reason)
        return PromotionResult(
            promoted=decision.promoted,
            reason=decision.reason,
            candidate=cand,
            production=cand if decision.promoted else prod,
            previous_production=prod,
            candidate_score=decision.candidate_score,
            production_score=decision.production_score,
        )

    def rollback(self, to: str | None = None, reason: str = "", *, actor: str | None = None) -> str:
        """Point ``production`` back at the previous production version (undoing the last promotion;
        repeated calls walk further back), or at ``to``. Returns the new production id."""
        with self.alias_book.lock():
            data = self.alias_book.read()
            current = data["aliases"].get(PRODUCTION)
            if to is not None:
                target = self._resolve_in(data, to)
            else:
                earlier = [v for v in production_stack(data["history"]) if v != current]
                if not earlier:
                    raise RegistryError(f"registry {self.uri}: no earlier production version to roll back to")
                target = earlier[-1]
                if not self.store.is_committed(target):
                    raise VersionNotFoundError(f"previous production {target!r} is not a committed version")
            if target == current:
                raise RegistryError(f"{target} is already production")
            self.store.manifest(target)  # production never points at a version whose manifest is unreadable
            record(data, PRODUCTION, target, reason or f"rollback from {current}", "rollback", actor)
            self.alias_book.write(data)
        return target
