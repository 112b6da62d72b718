"""The registry's exceptions: every one names the registry file or version concerned."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation could not be done (unknown version or alias, lock timeout, ...)."""


class VersionNotFoundError(RegistryError, KeyError):
    """No committed version (or alias) by that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class IntegrityError(RegistryError):
    """A stored file does not match the manifest: changed, missing, unexpected or outside its version."""

    def __init__(self, message: str, path: str, expected: str | None, actual: str | None) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


class CorruptFileError(RegistryError):
    """A registry file (``aliases.json``, a ``_COMMITTED`` marker, a ``manifest.json``) is not what the
    registry writes: unreadable, not JSON, the wrong shape, or naming something unsafe (a model name or
    path that would leave its version). Raised before anything is changed or loaded."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path
