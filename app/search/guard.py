"""Harness scores and the damage guard's rule.

A `HarnessScore` is one model's score on a set of lm-evaluation-harness tasks: the first
metric the harness reports for each task (``acc`` for MMLU, ``exact_match`` for the demo
skills), averaged over the tasks, with the harness's standard error pooled as
``sqrt(Σ se²) / n``, and, when the harness logged its samples, every document's value.

The guard excludes a candidate whose score is more than `GUARD_SES` standard errors below
the reference's. Both are scored on the same documents, so the standard error that matters
is that of the *difference*: per task, the sample standard deviation of the per-document
differences over √n (a paired test; pooled over tasks as above). It is used whenever both
scores carry their documents' values, the same documents, and each task's score is the mean
of those values (checked); otherwise the reference's own standard error is used (the
unpaired rule, more lenient where the two models agree on most documents).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.search.errors import SearchError

GUARD_SES = 2.0  # a drop of more than this many standard errors excludes a candidate
_MEAN_TOLERANCE = 1e-6  # a task's score must be the mean of its documents' values


@dataclass(frozen=True)
class HarnessScore:
    """One model's score on a set of harness tasks (and each task's own).

    `samples` holds, per task, each document's value of the task's metric (by document id),
    when the harness logged them and the task's score is their mean; else `None`.
    """

    score: float
    stderr: float | None
    higher_is_better: bool
    tasks: dict[str, dict[str, Any]]  # task -> {"metric", "value", "stderr"}
    seconds: float = 0.0
    samples: dict[str, dict[int, float]] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "stderr": self.stderr,
                "higher_is_better": self.higher_is_better, "tasks": self.tasks,
                "seconds": round(self.seconds, 3),
                "documents": {t: len(v) for t, v in self.samples.items()}
                if self.samples is not None else None}  # fmt: skip


def harness_score(results: Mapping[str, Any], tasks: Sequence[str], *,
                  seconds: float = 0.0) -> HarnessScore:  # fmt: skip
    """The score of `simple_evaluate`'s `results` on the named `tasks` (or groups)."""
    rows: dict[str, dict[str, Any]] = {}
    directions = set()
    for task in tasks:
        metrics = results.get("results", {}).get(task)
        if not metrics:
            raise SearchError(f"the harness reported nothing for {task!r} (a tag? name its "
                              "tasks or a group with an aggregate)")  # fmt: skip
        key = next((k for k, v in metrics.items() if "," in k and "_stderr," not in k
                    and _finite(v) is not None), None)  # fmt: skip
        if key is None:
            raise SearchError(f"the harness reported no metric for {task!r}")
        metric, filter_ = key.split(",", 1)
        higher = _higher_is_better(results, task, metric)
        directions.add(higher)
        rows[task] = {"metric": metric, "filter": filter_, "value": float(metrics[key]),
                      "stderr": _finite(metrics.get(f"{metric}_stderr,{filter_}"))}  # fmt: skip
    if len(directions) > 1:
        raise SearchError("the tasks' metrics disagree on whether higher is better; "
                          "re-score on tasks of one kind")  # fmt: skip
    values = [row["value"] for row in rows.values()]
    errors = [row["stderr"] for row in rows.values()]
    stderr = None if None in errors else math.sqrt(sum(e * e for e in errors)) / len(errors)
    return HarnessScore(sum(values) / len(values), stderr, directions.pop(), rows, seconds,
                        _documents(results, rows))  # fmt: skip


def _documents(
    results: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[int, float]] | None:
    """Each task's per-document metric values, or `None` when any task lacks them (no
    logged samples, a group, or a score that is not the mean of its documents' values)."""
    logged = results.get("samples")
    if not logged:
        return None
    out: dict[str, dict[int, float]] = {}
    for task, row in rows.items():
        values: dict[int, float] = {}
        for sample in logged.get(task) or ():
            if sample.get("filter", "none") != row["filter"]:
                continue
            value = _finite(sample.get(row["metric"]))
            if value is None:
                return None
            values[int(sample["doc_id"])] = value
        if not values or abs(sum(values.values()) / len(values) - row["value"]) > _MEAN_TOLERANCE:
            return None
        out[task] = values
    return out


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _higher_is_better(results: Mapping[str, Any], task: str, metric: str) -> bool:
    value = results.get("higher_is_better", {}).get(task, {}).get(metric)
    if value is None:  # groups: the first subtask that says
        for flags in results.get("higher_is_better", {}).values():
            if metric in flags:
                return bool(flags[metric])
        return True
    return bool(value)


def guard_drop(reference: HarnessScore, candidate: HarnessScore) -> float:
    """How much worse `candidate` is than `reference` (positive: worse)."""
    difference = reference.score - candidate.score
    return difference if reference.higher_is_better else -difference


def paired_stderr(reference: HarnessScore, candidate: HarnessScore) -> float | None:
    """The standard error of the score difference from the per-document differences on the
    same documents, pooled over tasks; `None` when it cannot be computed (no per-document
    values, other documents, or a task with fewer than two documents)."""
    if reference.samples is None or candidate.samples is None:
        return None
    if set(reference.samples) != set(candidate.samples):
        return None
    variances = []
    for task, ours in reference.samples.items():
        theirs = candidate.samples[task]
        if set(ours) != set(theirs) or len(ours) < 2:
            return None
        differences = [theirs[doc] - ours[doc] for doc in ours]
        mean = sum(differences) / len(differences)
        spread = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
        variances.append(spread / len(differences))
    return math.sqrt(sum(variances)) / len(variances)


def guard_stderr(reference: HarnessScore, candidate: HarnessScore) -> tuple[float, bool]:
    """The standard error the guard uses, and whether it is the paired one.

    Raises:
        `SearchError`: neither the paired nor the reference's standard error is known.
    """
    paired = paired_stderr(reference, candidate)
    if paired is not None:
        return paired, True
    if reference.stderr is None:
        raise SearchError("the guard's harness run reports no standard error; raise "
                          "--guard-limit (or guard on a task with several items)")  # fmt: skip
    return reference.stderr, False


def guard_excludes(reference: HarnessScore, candidate: HarnessScore, *,
                   ses: float = GUARD_SES) -> bool:  # fmt: skip
    """Whether `candidate` drops the guard by more than `ses` standard errors (`guard_stderr`:
    paired on the same documents when their values are known, else the reference's).

    >>> ref = HarnessScore(0.40, 0.02, True, {})
    >>> guard_excludes(ref, HarnessScore(0.37, 0.02, True, {}))
    False
    >>> guard_excludes(ref, HarnessScore(0.35, 0.02, True, {}))
    True
    """
    stderr, _ = guard_stderr(reference, candidate)
    return guard_drop(reference, candidate) > ses * stderr
