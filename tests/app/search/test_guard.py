"""The damage guard's paired test: the standard error of the per-document differences on the
same documents, from the harness's logged samples (and the reference's own where those are
not known)."""

from __future__ import annotations

import math

import pytest

from app.search.guard import (
    HarnessScore,
    guard_excludes,
    guard_stderr,
    harness_score,
    paired_stderr,
)


def _scored(values: list[float], *, stderr: float | None = None, task: str = "t") -> HarnessScore:
    mean = sum(values) / len(values)
    if stderr is None:  # the harness's: the sample standard deviation over sqrt(n)
        stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return HarnessScore(mean, stderr, True, {task: {"value": mean}},
                        samples={task: dict(enumerate(values))})  # fmt: skip


def test_paired_standard_error_by_hand():
    reference = _scored([1, 0, 1, 0])
    candidate = _scored([0, 0, 1, 0])  # one document lost: differences -1, 0, 0, 0
    # mean -0.25; sample variance ((0.75)² + 3 (0.25)²) / 3 = 0.25; SE sqrt(0.25 / 4) = 0.25
    assert paired_stderr(reference, candidate) == pytest.approx(0.25)
    assert guard_stderr(reference, candidate) == (pytest.approx(0.25), True)
    assert paired_stderr(reference, reference) == 0.0
    assert not guard_excludes(reference, reference)  # no drop, even with a zero SE


def test_the_paired_rule_catches_a_consistent_loss_the_unpaired_one_misses():
    reference = _scored([1.0] * 10 + [0.0] * 10)  # acc 0.5, SE 0.115
    candidate = _scored([1.0] * 6 + [0.0] * 14)  # 4 right answers lost, none gained: drop 0.2
    assert reference.stderr is not None
    assert 2 * reference.stderr > 0.2  # the reference's SE would keep it ...
    stderr, paired = guard_stderr(reference, candidate)
    assert paired
    assert stderr == pytest.approx(math.sqrt((4 * 0.8**2 + 16 * 0.2**2) / 19 / 20))
    assert guard_excludes(reference, candidate)  # ... the paired test excludes it
    churn = _scored([1.0] * 2 + [0.0] * 8 + [1.0] * 4 + [0.0] * 6)  # 8 lost, 4 gained: same 0.3
    assert churn.score == candidate.score
    assert not guard_excludes(reference, churn)  # churn, not a consistent loss


def test_without_the_same_documents_the_reference_standard_error_is_used():
    reference = _scored([1.0] * 10 + [0.0] * 10)
    fewer = HarnessScore(0.3, 0.1, True, {"t": {}}, samples={"t": dict(enumerate([1.0, 0.0]))})
    unlogged = HarnessScore(0.3, 0.1, True, {"t": {}})
    for candidate in (fewer, unlogged):
        assert paired_stderr(reference, candidate) is None
        assert guard_stderr(reference, candidate) == (reference.stderr, False)


def test_harness_score_keeps_each_documents_value_when_the_score_is_their_mean():
    results = {
        "results": {"a": {"acc,none": 0.5, "acc_stderr,none": 0.29},
                    "b": {"exact_match,strict": 1 / 3, "exact_match_stderr,strict": 0.33}},
        "higher_is_better": {"a": {"acc": True}, "b": {"exact_match": True}},
        "samples": {
            "a": [{"doc_id": i, "filter": "none", "acc": v} for i, v in enumerate([1, 0, 1, 0])],
            "b": [{"doc_id": i, "filter": f, "exact_match": v}
                  for i, (f, v) in enumerate([("strict", 1), ("strict", 0), ("strict", 0),
                                              ("loose", 1)])] + [
                  {"doc_id": 0, "filter": "loose", "exact_match": 1}],
        },
    }  # fmt: skip
    score = harness_score(results, ["a", "b"])
    assert score.samples == {"a": {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0},
                             "b": {0: 1.0, 1: 0.0, 2: 0.0}}  # the reported filter only  # fmt: skip
    results["results"]["a"]["acc,none"] = 0.75  # not the documents' mean (another aggregation)
    assert harness_score(results, ["a", "b"]).samples is None
    del results["samples"]
    assert harness_score(results, ["a", "b"]).samples is None
