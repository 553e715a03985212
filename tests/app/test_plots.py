"""The Evaluate tab's pictures: the probe curve in long form for gr.LinePlot, and what the
tab shows from an evaluation's job record."""

from __future__ import annotations

from app.plots import probe_frame
from app.ui_run import pictures

ROWS = [
    {"alpha": 0.0, "loss": 0.9, "linear_loss": 0.9, "excess": 0.0, "accuracy": None},
    {"alpha": 0.5, "loss": 0.7, "linear_loss": 0.6, "excess": 0.1, "accuracy": None},
    {"alpha": 1.0, "loss": 0.3, "linear_loss": 0.3, "excess": 0.0, "accuracy": 0.75},
]


def test_probe_frame_has_one_row_per_point_and_curve():
    frame = probe_frame(ROWS)
    assert list(frame.columns) == ["alpha", "value", "curve"]
    loss = frame[frame.curve == "loss"]
    assert loss.alpha.tolist() == [0.0, 0.5, 1.0]
    assert loss.value.tolist() == [0.9, 0.7, 0.3]
    line = frame[frame.curve.str.startswith("straight")]
    assert line.value.tolist() == [0.9, 0.6, 0.3]
    assert frame[frame.curve == "accuracy"].value.tolist() == [0.75]  # only where measured
    assert probe_frame(None) is None
    assert probe_frame([]) is None


def test_the_evaluate_tab_shows_the_chart_and_the_curve_of_a_record():
    chart, curve = pictures({"result": {"chart": "/jobs/e/scores.png", "probe": ROWS}})
    assert chart == "/jobs/e/scores.png"
    assert curve["visible"] is True
    assert len(curve["value"]) == 7
    chart, curve = pictures({"result": {"chart": "/jobs/e/scores.png"}})  # no probe asked
    assert curve["visible"] is False
    assert pictures(None)[0] is None  # a cleared record
