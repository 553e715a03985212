import pytest

from evaluation.errors import UnknownNameError
from evaluation.report import (
    ModelResult,
    Report,
    TaskResult,
    comparison_table,
    load_report,
    report_to_model_index,
    save_report,
)


def result(task, value, *, metric="acc", stderr=0.1, higher_is_better=True):
    return TaskResult(
        task=task,
        metric=metric,
        value=value,
        stderr=stderr,
        higher_is_better=higher_is_better,
        limit=20,
        num_samples=20,
        seed=1234,
        dataset_type="cais/mmlu",
        dataset_config=task.removeprefix("hubmerge_mmlu_"),
    )


@pytest.fixture
def report():
    return Report(
        harness_version="0.4.13",
        models=[
            ModelResult(label="base", path="m/base", results=(result("hubmerge_mmlu_x", 0.5),)),
            ModelResult(
                label="in1",
                path="m/in1",
                results=(
                    result("hubmerge_mmlu_x", 0.25),
                    result("ppl", 12.0, metric="word_perplexity", higher_is_better=False),
                ),
            ),
            ModelResult(
                label="merge",
                path="m/merge",
                results=(
                    result("hubmerge_mmlu_x", 0.75),
                    result("ppl", 10.0, metric="word_perplexity", higher_is_better=False),
                ),
            ),
        ],
    )


def test_table_has_one_row_per_task_metric_and_deltas_against_base(report):
    lines = comparison_table(report).splitlines()
    assert lines[0] == "| task | metric | base | in1 | merge |"
    assert lines[2] == (
        "| hubmerge_mmlu_x | acc | 0.5000 ± 0.1000 | 0.2500 ± 0.1000 (-0.2500 ▼) "
        "| 0.7500 ± 0.1000 (+0.2500 ▲) |"
    )
    # the base lacks this task: no delta, a dash in its cell
    assert lines[3] == ("| ppl | word_perplexity | – | 12.0000 ± 0.1000 | 10.0000 ± 0.1000 |")
    assert len(lines) == 4


def test_base_can_be_any_label_and_lower_is_better_metrics_mark_decreases_as_gains(report):
    report.base = "in1"
    table = comparison_table(report)
    assert "10.0000 ± 0.1000 (-2.0000 ▲)" in table
    assert "0.5000 ± 0.1000 (+0.2500 ▲)" in table


def test_json_round_trip(report, tmp_path):
    path = save_report(report, tmp_path / "sub" / "report.json")
    assert load_report(path) == report
    assert Report.model_validate_json(report.model_dump_json()) == report


def test_model_index_rows_describe_the_merge(report):
    rows = report_to_model_index(report)
    assert [r["metric_value"] for r in rows] == [0.75, 10.0]
    first = rows[0]
    assert first["task_type"] == "text-generation"
    assert first["dataset_type"] == "cais/mmlu"
    assert first["dataset_config"] == "x"
    assert first["metric_type"] == "acc"
    assert "lm-eval 0.4.13" in first["metric_name"]
    required = {"task_name", "task_type", "dataset_name", "dataset_type", "metric_name"}
    assert required <= set(first)
    assert report_to_model_index(report, label="base")[0]["metric_value"] == 0.5


def test_model_index_rows_build_hub_eval_results(report):
    from huggingface_hub import EvalResult, ModelCardData

    rows = report_to_model_index(report)
    results = [EvalResult(**row) for row in rows]
    card = ModelCardData(model_name="merge", eval_results=results)
    assert card.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.75


def test_unknown_label(report):
    with pytest.raises(UnknownNameError, match="Did you mean 'merge'"):
        report.model("merg")
