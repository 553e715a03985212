"""Figures of evaluation results: a grouped bar chart of a `Report`.

One group per task (and metric), one bar per model in the report's order (base, inputs…,
merge), error bars from the harness's standard errors. The merge's bars stand out; the base's
are grey. Drawn with matplotlib's object API (no global pyplot state), saved as PNG.

>>> plot_report(report, "scores.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from evaluation.errors import EvaluationError
from evaluation.report import Report

MERGE_COLOR = "#e8590c"
BASE_COLOR = "#adb5bd"
INPUT_COLORS = ["#4c6ef5", "#15aabf", "#82c91e", "#be4bdb", "#fab005", "#868e96"]


def _colors(labels: list[str], base: str | None, merge: str | None) -> list[str]:
    colors, inputs = [], iter(INPUT_COLORS * 4)
    for label in labels:
        if label == merge:
            colors.append(MERGE_COLOR)
        elif label == base:
            colors.append(BASE_COLOR)
        else:
            colors.append(next(inputs))
    return colors


def plot_report(
    report: Report,
    path: str | Path,
    *,
    merge: str | None = "merge",
    title: str | None = None,
) -> Path:
    """Draw `report` as a grouped bar chart (± stderr) and save it as a PNG at `path`.

    Args:
        report (`Report`): results of one or more models on the same tasks.
        path (`str` or `Path`): where to write the PNG.
        merge (`str`, *optional*): label drawn in the merge's colour (default ``"merge"``;
            the last model when no model has that label).
        title (`str`, *optional*): figure title (default: the metrics shown).

    Raises:
        [`EvaluationError`]: the report has no results to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    keys: list[tuple[str, str, str]] = []
    for model in report.models:
        keys += [r.key for r in model.results if r.key not in keys]
    if not keys:
        raise EvaluationError("the report has no results to plot")
    labels = [m.label for m in report.models]
    base = report.base_model()
    merge = merge if merge in labels else labels[-1]
    colors = _colors(labels, base.label if base is not None and len(labels) > 1 else None, merge)
    width = 0.8 / len(labels)
    figure = Figure(figsize=(max(5.0, 1.2 + 0.5 * len(keys) * len(labels)), 3.8), dpi=100)
    axes = figure.add_subplot()
    top = 0.0
    for index, (model, color) in enumerate(zip(report.models, colors, strict=True)):
        values, errors = [], []
        for task, metric, filter_ in keys:
            result = model.get(task, metric, filter_)
            values.append(result.value if result is not None else 0.0)
            errors.append((result.stderr or 0.0) if result is not None else 0.0)
        offsets = [k + (index - (len(labels) - 1) / 2) * width for k in range(len(keys))]
        bars = axes.bar(offsets, values, width * 0.92, yerr=errors, capsize=3, color=color,
                        label=model.label, edgecolor="white")  # fmt: skip
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        top = max(top, *(v + e for v, e in zip(values, errors, strict=True)))
    names = [task if filter_ == "none" else f"{task} ({filter_})" for task, _, filter_ in keys]
    axes.set_xticks(range(len(keys)), [n.removeprefix("hubmerge_") for n in names])
    metrics = sorted({metric for _, metric, _ in keys})
    axes.set_ylabel(", ".join(metrics))
    axes.set_ylim(0, max(1.05, top * 1.15) if top <= 1.0 else top * 1.15)
    axes.set_title(title or f"{', '.join(metrics)} per task (± stderr)", fontsize=10)
    axes.legend(fontsize=8, ncols=min(len(labels), 5), loc="upper center",
                bbox_to_anchor=(0.5, -0.12), frameon=False)  # fmt: skip
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
