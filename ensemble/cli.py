"""How every command-line entry point fails: ``error: <message>`` on stderr and a meaningful exit code.

    if __name__ == "__main__":
        sys.exit(run_main(main))

Expected user errors are reported on one line each, without a traceback:

- exit 2, usage or configuration: a config file that is missing, unreadable or not YAML, a bad
  ``--set`` (:class:`ensemble.config.ConfigError`), a setting the schema refuses (pydantic's
  ``ValidationError``, one line per problem, e.g. ``training.tuning_trials: Input should be greater
  than or equal to 1 (got 0)``), an input file that does not exist;
- exit 3, data: the data break the contract (:class:`ensemble.data.schema.DataValidationError`) or a
  file's format is wrong (any ``ValueError`` subclass defined in ``ensemble.data``);
- exit 130: interrupted (Ctrl-C).

Anything else is a bug: its traceback is shown and the exit code is 1. argparse's own usage errors
keep their form (usage line, message, exit 2).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable

from pydantic import ValidationError

from ensemble.config import ConfigError, describe_validation_error

EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_INTERRUPTED = 130


def date_arg(value: str) -> str:
    """An argparse ``type`` for a date option (``--as-of``): an ISO date, returned as ``YYYY-MM-DD``;
    anything else is argparse's usage error (exit 2) naming the option and the value."""
    try:
        return datetime.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {value!r}") from None


def _is_data_error(exc: BaseException) -> bool:
    """A contract or file-format error: a ValueError subclass defined in the ``ensemble.data`` package."""
    return any(
        issubclass(cls, ValueError) and cls.__module__.startswith("ensemble.data.")
        for cls in type(exc).__mro__
    )


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or "(no message)"


def user_error(exc: BaseException) -> tuple[int, list[str]] | None:
    """(exit code, message lines) when ``exc`` is an expected user error, else None (a bug)."""
    if isinstance(exc, ValidationError):
        return EXIT_USAGE, describe_validation_error(exc)
    if isinstance(exc, ConfigError | FileNotFoundError):
        return EXIT_USAGE, [_one_line(str(exc))]
    if _is_data_error(exc):
        return EXIT_DATA, [_one_line(str(exc))]
    return None


def run_main(main: Callable[[], int | None]) -> int:
    """Run ``main`` and return its exit code; expected user errors become ``error: ...`` lines."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        found = user_error(exc)
        if found is None:
            raise
        code, lines = found
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return code
