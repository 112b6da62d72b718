"""Versioned model store: safe artifact formats, a sha256 manifest, atomic publishing, aliases with
history, a pure promotion policy, rollback.

The package, by concern:

- :mod:`~ensemble.registry.store`: the artifact store (layout, manifest and ``_COMMITTED`` marker,
  sha256 checksums, atomic publishing, verification before deserialising, validation of every name and
  path on every read);
- :mod:`~ensemble.registry.aliases`: aliases (``production``, ``candidate``, ...) with an append-only
  history, under a lock;
- :mod:`~ensemble.registry.promotion`: the promotion decision as a pure function;
- :mod:`~ensemble.registry.model_registry`: :class:`ModelRegistry`, which composes them and turns
  Forecasters into files and back;
- :mod:`~ensemble.registry.fingerprint`: :func:`data_fingerprint` of a training table;
- :mod:`~ensemble.registry.fsio`, :mod:`~ensemble.registry.errors`: shared file operations and errors.

Layout under ``root`` (a local path or any ``pyarrow.fs`` URI: ``file:///...``, ``s3://bucket/prefix``)::

    <root>/versions/<version_id>/models/<model_name>/...   each model's save() directory
    <root>/versions/<version_id>/extras/<name>.json        JSON documents beside the models
    <root>/versions/<version_id>/manifest.json             ids, metrics, config, fingerprint, cost, sha256s
    <root>/versions/<version_id>/_COMMITTED                written last: {version_id, manifest_sha256, ...}
    <root>/.staging/<version_id>-<random>/                 a version being written (invisible to readers)
    <root>/aliases.json                                    {"aliases": {alias: version_id}, "history": [...]}
    <root>/aliases.json.lock                               held while aliases.json is read-modified-written
"""

from __future__ import annotations

from ensemble.registry.aliases import ALIASES_FILE, CANDIDATE, LATEST, PRODUCTION
from ensemble.registry.errors import CorruptFileError, IntegrityError, RegistryError, VersionNotFoundError
from ensemble.registry.fingerprint import data_fingerprint
from ensemble.registry.model_registry import ModelRegistry
from ensemble.registry.promotion import PromotionDecision, PromotionResult, decide_promotion
from ensemble.registry.store import (
    COMMITTED_FILE,
    EXTRAS_DIR,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODELS_DIR,
    STAGING_DIR,
    VERSIONS_DIR,
    new_version_id,
)

__all__ = [
    "ALIASES_FILE",
    "CANDIDATE",
    "COMMITTED_FILE",
    "EXTRAS_DIR",
    "FORMAT_VERSION",
    "LATEST",
    "MANIFEST_FILE",
    "MODELS_DIR",
    "PRODUCTION",
    "STAGING_DIR",
    "VERSIONS_DIR",
    "CorruptFileError",
    "IntegrityError",
    "ModelRegistry",
    "PromotionDecision",
    "PromotionResult",
    "RegistryError",
    "VersionNotFoundError",
    "data_fingerprint",
    "decide_promotion",
    "new_version_id",
]
