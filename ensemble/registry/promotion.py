"""The promotion policy, as a pure function: a candidate version becomes production only when its
validation metric beats production's by more than ``min_improvement``.

:func:`decide_promotion` reads nothing and writes nothing; :meth:`ModelRegistry.promote` gathers the
two versions' metrics under the alias lock, calls it, and records the decision in the alias history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_METRIC = "valid_rank_ic_h5"


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    candidate_score: float | None = None
    production_score: float | None = None


@dataclass(frozen=True)
class PromotionResult:
    """What :meth:`ModelRegistry.promote` did."""

    promoted: bool
    reason: str
    candidate: str
    production: str | None  # the production version after the call
    previous_production: str | None
    candidate_score: float | None = None
    production_score: float | None = None


def metric_path(metric: str = DEFAULT_METRIC, path: Sequence[str] | None = None) -> tuple[str, ...]:
    """The key path of the compared metric: ``path`` when given, else ``("ensemble", metric)``."""
    return tuple(path) if path is not None else ("ensemble", metric)


def metric_value(metrics: Mapping[str, Any] | None, path: Sequence[str]) -> float | None:
    """The finite number at ``path`` in ``metrics`` (nested mappings), or None."""
    node: Any = metrics if metrics is not None else {}
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool):
        return None
    try:
        value = float(node)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def decide_promotion(
    candidate: str,
    candidate_metrics: Mapping[str, Any] | None,
    production: str | None,
    production_metrics: Mapping[str, Any] | None,
    path: Sequence[str] = ("ensemble", DEFAULT_METRIC),
    *,
    higher_is_better: bool = True,
    min_improvement: float = 0.0,
) -> PromotionDecision:
    """Should ``candidate`` replace ``production``? Returns the decision, the reason in words and both
    scores (the finite numbers at ``path`` in each version's metrics).

    - no production yet: promoted;
    - the candidate already is production: not promoted;
    - the candidate has no finite score: not promoted;
    - ``production_metrics`` is None (production is not a committed version): promoted;
    - production has no finite score: not promoted (nothing to compare with; promote by hand);
    - otherwise promoted only when the improvement (in the better direction) exceeds ``min_improvement``.
    """
    label = "metrics." + ".".join(path)
    cand_score = metric_value(candidate_metrics, path)
    if production is None:
        return PromotionDecision(
            True, f"no production version yet; {candidate} ({label}={cand_score}) promoted", cand_score
        )
    if production == candidate:
        return PromotionDecision(False, f"{candidate} is already production", cand_score)
    if cand_score is None:
        return PromotionDecision(
            False, f"candidate {candidate} has no finite {label}; production {production} kept"
        )
    if production_metrics is None:
        return PromotionDecision(
            True, f"production {production} is not a committed version; {candidate} promoted", cand_score
        )
    prod_score = metric_value(production_metrics, path)
    if prod_score is None:
        reason = (
            f"production {production} has no finite {label} to compare with; kept "
            f"(use set_alias to promote {candidate} by hand)"
        )
        return PromotionDecision(False, reason, cand_score)
    gain = cand_score - prod_score if higher_is_better else prod_score - cand_score
    promoted = gain > min_improvement
    reason = (
        f"candidate {candidate} {label}={cand_score:.6g} {'beats' if promoted else 'does not beat'} "
        f"production {production} {label}={prod_score:.6g} ({'higher' if higher_is_better else 'lower'} "
        f"is better; improvement {gain:.6g}, required > {min_improvement:.6g})"
    )
    return PromotionDecision(promoted, reason, cand_score, prod_score)
