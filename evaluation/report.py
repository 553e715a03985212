"""Evaluation results: per model, per task and metric; side-by-side tables and model-index rows.

A `Report` is plain data (pydantic), so it round-trips through JSON unchanged:

>>> report = Report(harness_version="0.4.13", models=[])
>>> Report.model_validate_json(report.model_dump_json()) == report
True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluation.errors import UnknownNameError


class TaskResult(BaseModel):
    """One metric of one task for one model.

    Args:
        task (`str`): harness task (or group) name.
        metric (`str`): metric name, e.g. `"acc"`.
        value (`float`): the metric's value.
        stderr (`float`, *optional*): its standard error (`None` where the harness gives none).
        filter (`str`): harness filter the metric was computed after (`"none"` for most tasks).
        higher_is_better (`bool`, *optional*): direction, used to mark deltas.
        limit (`int`, *optional*): items requested per task (`None`: all).
        num_samples (`int`, *optional*): items actually scored.
        num_fewshot (`int`): in-context examples per item.
        seed (`int`): seed given to the harness.
        dataset_type (`str`, *optional*): Hub dataset id behind the task (for model cards).
        dataset_config (`str`, *optional*): that dataset's config (subset) name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    metric: str
    value: float
    stderr: float | None = None
    filter: str = "none"
    higher_is_better: bool | None = True
    limit: int | None = None
    num_samples: int | None = None
    num_fewshot: int = 0
    seed: int
    dataset_type: str | None = None
    dataset_config: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.metric, self.filter)


class ModelResult(BaseModel):
    """All results of one evaluated model (`label` names it in tables, `path` says where it was)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str
    path: str
    results: tuple[TaskResult, ...] = ()

    def get(self, task: str, metric: str, filter: str = "none") -> TaskResult | None:
        return next((r for r in self.results if r.key == (task, metric, filter)), None)


class Report(BaseModel):
    """Results of one or more models on the same tasks and items.

    Args:
        harness_version (`str`): lm-evaluation-harness version that produced the numbers.
        models (`list[ModelResult]`): one entry per model, in display order.
        base (`str`, *optional*): label of the model deltas are taken against
            (default: the first model).
    """

    model_config = ConfigDict(extra="forbid")

    harness_version: str
    models: list[ModelResult] = Field(default_factory=list)
    base: str | None = None

    def model(self, label: str) -> ModelResult:
        for model in self.models:
            if model.label == label:
                return model
        raise UnknownNameError("model label", label, [m.label for m in self.models])

    def base_model(self) -> ModelResult | None:
        if self.base is not None:
            return self.model(self.base)
        return self.models[0] if self.models else None

    def merged_with(self, other: Report) -> Report:
        """This report plus `other`'s models (labels must not repeat)."""
        labels = [m.label for m in self.models] + [m.label for m in other.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate model labels in merged report: {labels}")
        return self.model_copy(update={"models": [*self.models, *other.models]})


def save_report(report: Report, path: str | Path) -> Path:
    """Write `report` as indented JSON and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def load_report(path: str | Path) -> Report:
    """Read a report written by `save_report`."""
    return Report.model_validate_json(Path(path).read_text(encoding="utf-8"))


def _row_keys(report: Report) -> list[tuple[str, str, str]]:
    keys: list[tuple[str, str, str]] = []
    for model in report.models:
        for result in model.results:
            if result.key not in keys:
                keys.append(result.key)
    return keys


def _format_value(result: TaskResult | None) -> str:
    if result is None:
        return "–"
    if result.stderr is None or not math.isfinite(result.stderr):
        return f"{result.value:.4f}"
    return f"{result.value:.4f} ± {result.stderr:.4f}"


def _format_delta(result: TaskResult | None, base: TaskResult | None) -> str:
    if result is None or base is None:
        return ""
    delta = result.value - base.value
    if delta == 0:
        return " (±0)"
    better = (delta > 0) == (result.higher_is_better is not False)
    mark = " ▲" if better else " ▼"
    return f" ({delta:+.4f}{mark})"


def comparison_table(report: Report) -> str:
    """A markdown table: one row per task and metric, one column per model, deltas vs the base.

    Cells read `value ± stderr (delta)`; ▲ marks a change in the metric's good direction.

    >>> r = Report(harness_version="x", models=[
    ...     ModelResult(label="base", path="b", results=(TaskResult(task="t", metric="acc",
    ...                                                              value=0.5, seed=0),)),
    ...     ModelResult(label="merge", path="m", results=(TaskResult(task="t", metric="acc",
    ...                                                               value=0.75, seed=0),))])
    >>> print(comparison_table(r))
    | task | metric | base | merge |
    |---|---|---|---|
    | t | acc | 0.5000 | 0.7500 (+0.2500 ▲) |
    """
    base = report.base_model()
    header = ["task", "metric", *(m.label for m in report.models)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metric, filter_ in _row_keys(report):
        metric_name = metric if filter_ == "none" else f"{metric} ({filter_})"
        base_result = base.get(task, metric, filter_) if base is not None else None
        cells = [task, metric_name]
        for model in report.models:
            result = model.get(task, metric, filter_)
            delta = "" if model is base else _format_delta(result, base_result)
            cells.append(_format_value(result) + delta)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_to_model_index(report: Report, *, label: str | None = None) -> list[dict[str, Any]]:
    """Rows for a model card's `model-index`, for one model of the report.

    Each row has the keys of `huggingface_hub.EvalResult`'s required fields: `task_type`,
    `task_name`, `dataset_type`, `dataset_name`, `metric_type`, `metric_value`, plus
    `metric_name`, `dataset_config` and `dataset_split`.

    Args:
        report (`Report`): evaluated results.
        label (`str`, *optional*): which model; default the last one (the merge, in a
            comparison).
    """
    if not report.models:
        return []
    model = report.model(label) if label is not None else report.models[-1]
    rows = []
    for result in model.results:
        dataset_type = result.dataset_type or result.task
        suffix = f" ({result.dataset_config})" if result.dataset_config else ""
        shots = f", {result.num_fewshot}-shot" if result.num_fewshot else ""
        limit = f", first {result.num_samples or result.limit} items" if result.limit else ""
        rows.append(
            {
                "task_type": "text-generation",
                "task_name": "Text Generation",
                "dataset_type": dataset_type,
                "dataset_name": f"{result.task}{suffix}",
                "dataset_config": result.dataset_config,
                "dataset_split": "test",
                "metric_type": result.metric,
                "metric_name": f"{result.metric} (lm-eval {report.harness_version}{shots}{limit})",
                "metric_value": result.value,
            }
        )
    return rows
