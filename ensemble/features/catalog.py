"""The feature catalogue: one :class:`FeatureSpec` per feature, grouped in families.

Each family module (``technical``, ``returns``, ``fundamental``, ``sentiment``, ``calendar``,
``cross_section``) declares which input columns it needs and the specs it produces for a given set
of input columns. :func:`catalogue` asks every family; the pipeline computes exactly these columns,
in this order (it checks, and refuses to return a frame that disagrees with its catalogue).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

import pandas as pd

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("returns", "technical", "cross_section", "fundamental", "sentiment", "calendar")

# The contract's columns (DESIGN.md "Data contract"): what a synthetic market holds.
CONTRACT_COLUMNS: tuple[str, ...] = (
    "date",
    "ticker",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "pe",
    "pb",
    "market_cap",
    "dividend_yield",
    "sector",
    "sentiment",
)
OHLCV: tuple[str, ...] = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its column name, family, input columns, trailing lookback (rows) and meaning."""

    name: str
    family: str
    inputs: tuple[str, ...]
    lookback: int
    description: str


def family_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise ValueError(f"unknown feature family {family!r}; known: {list(FAMILIES)}")
    return importlib.import_module(f"ensemble.features.{family}")


def missing_inputs(family: str, columns: Iterable[str]) -> list[str]:
    """The input columns a family needs that ``columns`` lacks ([] when it can run)."""
    mod = family_module(family)
    cols = set(columns)
    required: tuple[str, ...] = mod.REQUIRED
    any_of: tuple[str, ...] = getattr(mod, "ANY_OF", ())
    missing = [c for c in required if c not in cols]
    if any_of and not any(c in cols for c in any_of):
        missing.append(" or ".join(any_of))
    return missing


def family_specs(family: str, columns: Iterable[str]) -> list[FeatureSpec]:
    cols = frozenset(columns)
    if missing_inputs(family, cols):
        return []
    specs: list[FeatureSpec] = family_module(family).specs(cols)
    return specs


def catalogue(
    columns: Iterable[str] | None = None, families: Sequence[str] | None = None
) -> list[FeatureSpec]:
    """Every feature the pipeline computes from a table with ``columns`` (default: the full contract).

    Families whose input columns are absent contribute nothing (the pipeline logs one line for each).
    """
    cols = frozenset(CONTRACT_COLUMNS if columns is None else columns)
    out: list[FeatureSpec] = []
    for fam in families or FAMILIES:
        out.extend(family_specs(fam, cols))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RuntimeError(f"feature catalogue has duplicate names: {dup}")
    return out


def catalogue_frame(columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The catalogue as a table: name, family, inputs, lookback, description."""
    rows = [
        {
            "name": s.name,
            "family": s.family,
            "inputs": ",".join(s.inputs),
            "lookback": s.lookback,
            "description": s.description,
        }
        for s in catalogue(columns)
    ]
    return pd.DataFrame(rows, columns=["name", "family", "inputs", "lookback", "description"])
