"""`hubmerge evaluate` (app/commands/evaluate.py) on the tiny model and task."""

import argparse
import json

import lm_eval
import pytest
from lm_eval.tasks import TaskManager

from app.commands import evaluate as command
from evaluation.report import load_report


def parse(argv):
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_writes_the_same_numbers_as_simple_evaluate(
    tiny_models, tiny_task_dir, tmp_path, capsys
):
    output = tmp_path / "report.json"
    args = parse(
        [
            "evaluate",
            str(tiny_models["a"]),
            "--tasks",
            "tiny_animals",
            "--limit",
            "6",
            "--include-path",
            str(tiny_task_dir),
            "--output",
            str(output),
            "--plot",
            str(tmp_path / "scores.png"),
            "--compare",
            f"base={tiny_models['random']}",
            "--batch-size",
            "4",
        ]
    )
    assert command.run(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| task | metric | base | a |"
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "scores.png").shape[1] >= 500  # the bar chart

    data = json.loads(output.read_text())
    assert data["harness_version"] == lm_eval.__version__
    report = load_report(output)
    merge = report.model("a").get("tiny_animals", "acc")
    assert (merge.limit, merge.seed, merge.num_samples) == (6, 1234, 6)

    manager = TaskManager(include_path=str(tiny_task_dir), include_defaults=False)
    direct = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_models["a"]), "device": "cpu"},
        tasks=["tiny_animals"],
        limit=6,
        task_manager=manager,
        log_samples=False,
    )["results"]["tiny_animals"]
    assert merge.value == pytest.approx(direct["acc,none"], abs=1e-12)


def test_cli_reports_unknown_tasks_without_a_traceback(tiny_model, tiny_task_dir, capsys):
    args = parse(
        [
            "evaluate",
            str(tiny_model),
            "--tasks",
            "tiny_animal",
            "--include-path",
            str(tiny_task_dir),
            "--local-tasks-only",
        ]
    )
    assert command.run(args) == 2
    assert "Did you mean 'tiny_animals'" in capsys.readouterr().err


def test_compare_labels_default_to_directory_names_and_stay_unique():
    models = command.parse_models("out/merge", "base=m/base, m/in1,x/in1")
    assert models == {"base": "m/base", "in1": "m/in1", "in1_2": "x/in1", "merge": "out/merge"}


def test_suite_options_with_cli_overrides():
    args = parse(["evaluate", "m", "--suite", "quick", "--limit", "3", "--num-fewshot", "1"])
    options = command.build_options(args)
    assert (options.limit, options.num_fewshot) == (3, 1)
    assert options.tasks[0].startswith("hubmerge_mmlu_")


def test_write_card_adds_model_index_to_the_models_card(tiny_models, tiny_task_dir, tmp_path):
    import shutil

    from huggingface_hub import ModelCard

    model = tmp_path / "merged"
    shutil.copytree(tiny_models["a"], model)
    (model / "README.md").write_text("---\nlibrary_name: transformers\n---\n# merged\n")
    args = parse(
        [
            "evaluate", str(model), "--tasks", "tiny_animals", "--limit", "4",
            "--include-path", str(tiny_task_dir), "--batch-size", "4", "--write-card",
        ]
    )  # fmt: skip
    assert command.run(args) == 0
    results = ModelCard.load(model / "README.md").data.eval_results
    assert [r.dataset_type for r in results] == ["tiny_animals"]
    assert 0.0 <= results[0].metric_value <= 1.0
