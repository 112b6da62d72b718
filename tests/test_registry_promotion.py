"""The promotion rule as a pure function: no registry, no files; every branch and its reason."""

from __future__ import annotations

import math

import pytest

from ensemble.registry.promotion import decide_promotion, metric_path, metric_value

PATH = ("ensemble", "valid_rank_ic_h5")


def m(value: object) -> dict[str, object]:
    return {"ensemble": {"valid_rank_ic_h5": value, "valid_rmse": value}}


def test_metric_value_reads_finite_numbers_only() -> None:
    assert metric_value(m(0.05), PATH) == 0.05
    assert metric_value(m("0.05"), PATH) == 0.05  # numbers stored as text still count
    for bad in (None, float("nan"), math.inf, "n/a", True, [0.1]):
        assert metric_value(m(bad), PATH) is None, bad
    assert metric_value({}, PATH) is None and metric_value(None, PATH) is None
    assert metric_value({"ensemble": 3.0}, PATH) is None  # not a mapping on the way down
    assert metric_path("valid_ic") == ("ensemble", "valid_ic")
    assert metric_path("ignored", ["a", "b"]) == ("a", "b")


def test_no_production_promotes() -> None:
    d = decide_promotion("v2", m(0.01), None, None, PATH)
    assert d.promoted and d.candidate_score == 0.01 and d.production_score is None
    assert d.reason == "no production version yet; v2 (metrics.ensemble.valid_rank_ic_h5=0.01) promoted"


@pytest.mark.parametrize(
    ("cand", "prod", "kwargs", "promoted", "words"),
    [
        (0.08, 0.05, {}, True, "beats"),
        (0.03, 0.05, {}, False, "does not beat"),
        (0.05, 0.05, {}, False, "does not beat"),  # a tie is not an improvement
        (0.0505, 0.05, {"min_improvement": 0.001}, False, "required > 0.001"),
        (0.052, 0.05, {"min_improvement": 0.001}, True, "improvement 0.002"),
        (0.03, 0.05, {"higher_is_better": False}, True, "lower is better"),
        (0.08, 0.05, {"higher_is_better": False}, False, "lower is better"),
    ],
)
def test_candidate_must_beat_production(
    cand: float, prod: float, kwargs: dict, promoted: bool, words: str
) -> None:
    d = decide_promotion("v2", m(cand), "v1", m(prod), PATH, **kwargs)
    assert d.promoted is promoted and words in d.reason
    assert (d.candidate_score, d.production_score) == (cand, prod)
    assert "candidate v2" in d.reason and "production v1" in d.reason


def test_edge_cases_keep_or_promote_with_a_reason() -> None:
    same = decide_promotion("v1", m(0.1), "v1", m(0.1), PATH)
    assert not same.promoted and same.reason == "v1 is already production"
    no_score = decide_promotion("v2", m(float("nan")), "v1", m(0.1), PATH)
    assert (
        not no_score.promoted
        and "candidate v2 has no finite metrics.ensemble.valid_rank_ic_h5" in no_score.reason
    )
    gone = decide_promotion("v2", m(0.1), "v1", None, PATH)  # production is not a committed version
    assert gone.promoted and "production v1 is not a committed version" in gone.reason
    blind = decide_promotion("v2", m(0.1), "v1", {}, PATH)
    assert (
        not blind.promoted and "production v1 has no finite" in blind.reason and "set_alias" in blind.reason
    )


def test_the_decision_is_a_pure_function_of_its_inputs() -> None:
    cand, prod = m(0.08), m(0.05)
    first = decide_promotion("v2", cand, "v1", prod, PATH)
    assert decide_promotion("v2", cand, "v1", prod, PATH) == first
    assert cand == m(0.08) and prod == m(0.05)  # inputs untouched
