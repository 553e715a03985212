"""worst_gap: examples name their task; a merge is scored by the task that lost most of the
gain its best input (its specialist) has over the base."""

from __future__ import annotations

import json

import pytest

from app.search import InMemoryEvaluator, search_and_merge
from app.search.errors import SearchError
from app.search.tasks import load_search_examples, split_tasks
from merging import parse_recipe

pytestmark = pytest.mark.slow


def _animal_rows(count: int, seed: int) -> list[dict[str, str]]:
    from app.demo import animal_lines

    rows = []
    for line in animal_lines(count, seed):  # "the cat sees the dog near the barn."
        head, _, tail = line.partition(" sees the ")
        rows.append({"input": f"{head} sees the", "output": f" {tail}", "task": "animals"})
    return rows


@pytest.fixture(scope="module")
def tagged(demo_models):
    models = {name: str(path) for name, path in demo_models.models.items()}
    math = [json.loads(line) | {"task": "math"}
            for line in demo_models.examples.read_text().splitlines() if line.strip()]  # fmt: skip
    rows = math[:12] + _animal_rows(12, 21)
    test = math[12:] + _animal_rows(12, 22)
    recipe = parse_recipe({"merge_method": "task_arithmetic", "base_model": models["tiny-base"],
                           "models": [{"model": models["tiny-math"]},
                                      {"model": models["tiny-animals"]}]})  # fmt: skip
    return recipe, rows, test, models


def test_worst_gap_is_the_largest_share_of_gain_lost(tagged):
    recipe, rows, _, models = tagged
    evaluator = InMemoryEvaluator(recipe, rows, metric="worst_gap")
    plain, tasks = split_tasks(rows)
    by_task = {t: [r for r, k in zip(plain, tasks, strict=True) if k == t] for t in set(tasks)}

    def losses(model: str) -> dict[str, float]:
        evaluator.apply(parse_recipe({"merge_method": "linear", "models": [{"model": model}]}))
        return {t: evaluator.scorer.loss(r) for t, r in by_task.items()}

    base, math, animals = (losses(models[n]) for n in ("tiny-base", "tiny-math", "tiny-animals"))
    best = {t: min(math[t], animals[t]) for t in by_task}  # each task's best input
    value = evaluator.score(recipe)
    merged = {t: evaluator.scorer.loss(r) for t, r in by_task.items()}
    expected = max((merged[t] - best[t]) / (base[t] - best[t]) for t in by_task)
    assert value == pytest.approx(expected, rel=1e-6)
    assert evaluator.score(parse_recipe(
        {"merge_method": "linear", "models": [{"model": models["tiny-base"]}]})) == \
        pytest.approx(1.0)  # the base keeps none of the gain  # fmt: skip


def test_search_by_worst_gap_reproduces_and_reports_the_test_split(tagged, tmp_path):
    recipe, rows, test, _ = tagged
    path = tmp_path / "shots.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_search_examples(path) == rows
    result = search_and_merge(recipe, rows, tmp_path / "out", test=test, budget=8, seed=0,
                              metric="worst_gap")  # fmt: skip
    assert result.reproduced == pytest.approx(result.best.score, rel=1e-3)
    assert result.best.score <= min(c.score for c in result.candidates if c.origin != "search")
    assert result.test_score is not None
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    assert set(record["task_reference"]["base"]) == {"math", "animals"}


def test_tasks_on_some_examples_only_is_an_error():
    rows = [{"input": "a", "output": " b", "task": "x"}, {"input": "c", "output": " d"}]
    with pytest.raises(SearchError, match="every example"):
        split_tasks(rows)


def test_harness_tasks_give_the_examples_and_lm_eval_only_rescores(tagged, monkeypatch):
    """``--tasks`` without examples: the selection examples are the tasks' documents, the
    inner loop scores them in memory, and lm-eval runs only for the re-scored candidates."""
    import evaluation.harness as harness
    from app.search import examples_hash, search
    from app.search.rescore import TaskSpec
    from app.search.tasks import examples_from_tasks
    from merging import load_recipe

    recipe, _, _, models = tagged
    runs: list[int] = []
    real = harness.run_harness
    monkeypatch.setattr(harness, "run_harness",
                        lambda *a, **k: runs.append(1) or real(*a, **k))  # fmt: skip
    spec = TaskSpec(("hubmerge_demo_math",), 12)
    during: list[int] = []
    result = search(recipe, None, tasks=spec, budget=10, seed=0, max_genes=2, rescore=2,
                    on_candidate=lambda c, state: during.append(len(runs)))  # fmt: skip
    expected = examples_from_tasks(spec)
    assert [r["input"] for r in expected[:2]] == ["double 0 is", "double 1 is"]
    assert (result.examples, result.examples_hash) == (12, examples_hash(expected))
    assert result.examples_from == spec
    assert len(during) == 10
    assert set(during) == {0}  # no harness run inside the loop
    assert len(runs) == len(result.rescored.rescored) == 3  # the best 2 and your recipe
    weights = {s.model: s.parameters["weight"] for s in load_recipe(result.best.recipe).models}
    assert weights[models["tiny-math"]] > weights[models["tiny-animals"]]  # math examples


def test_search_cli_takes_examples_from_tasks(tagged, tmp_path, capsys):
    from app.cli import main

    recipe, *_ = tagged
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert main(["search", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "none")]) != 0
    assert "give --examples, or --tasks" in capsys.readouterr().err
    code = main(["search", str(tmp_path / "r.yaml"), "--tasks", "hubmerge_demo_math",
                 "--limit", "8", "--budget", "6", "--genes", "2", "--rescore", "1",
                 "-o", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    assert record["examples"] == 8
    spec = {"tasks": ["hubmerge_demo_math"], "limit": 8, "num_fewshot": None}
    assert record["rescore"]["tasks"] == record["examples_from"] == spec
    card = (tmp_path / "out" / "README.md").read_text()
    assert "the documents of the harness tasks `hubmerge_demo_math`, 8 item(s) each" in card
