"""The results' grouped bar chart: one bar per model and task, the merge in its colour."""

from __future__ import annotations

import pytest

from evaluation.errors import EvaluationError
from evaluation.plots import BASE_COLOR, MERGE_COLOR, plot_report
from evaluation.report import ModelResult, Report, TaskResult


def _report(values: dict[str, tuple[float, float]]) -> Report:
    models = []
    for label, (a, b) in values.items():
        results = (TaskResult(task="hubmerge_demo_math", metric="exact_match", value=a,
                              stderr=0.05, seed=0),
                   TaskResult(task="hubmerge_demo_animals", metric="exact_match", value=b,
                              stderr=None, seed=0))  # fmt: skip
        models.append(ModelResult(label=label, path=label, results=results))
    return Report(harness_version="0.4.13", models=models)


def _has_colour(pixels, hex_colour: str) -> int:
    import numpy as np

    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    return int((np.abs(pixels[..., :3] - rgb).max(axis=-1) < 0.02).sum())


def test_bar_chart_draws_every_model_and_highlights_the_merge(tmp_path):
    import matplotlib.image

    report = _report({"base": (0.1, 0.0), "tiny-math": (1.0, 0.2), "merge": (0.8, 0.9)})
    path = plot_report(report, tmp_path / "out" / "scores.png")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 300
    assert pixels.shape[1] >= 500
    merge_area, base_area = _has_colour(pixels, MERGE_COLOR), _has_colour(pixels, BASE_COLOR)
    assert merge_area > 500  # the merge's two bars (1.7 in height) …
    assert merge_area > 3 * base_area  # … dwarf the base's (0.1 in height)


def test_bar_chart_without_a_merge_label_highlights_the_last_model(tmp_path):
    import matplotlib.image

    report = _report({"base": (0.5, 0.5), "out": (0.5, 0.5)})
    pixels = matplotlib.image.imread(plot_report(report, tmp_path / "s.png"))
    assert _has_colour(pixels, MERGE_COLOR) > 500


def test_an_empty_report_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="no results"):
        plot_report(Report(harness_version="x", models=[]), tmp_path / "s.png")
