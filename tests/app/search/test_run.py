"""The merge search on tiny locally trained Llamas (the demo models): the examples decide the
weights, seeds reproduce, cancel keeps the best so far, nothing is written per candidate, and
the winner's streamed merge reproduces its score and records the search in its card."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from app.search import InMemoryEvaluator, search, search_and_merge
from app.search.evaluator import score_folder
from merging import load_recipe, parse_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo(demo_models):
    from evaluation.scoring import load_examples

    models = {name: str(path) for name, path in demo_models.models.items()}
    return models, load_examples(demo_models.examples)


def _soup(models, *names):
    return parse_recipe({"merge_method": "linear", "models": [{"model": models[n]} for n in names]})


def _task_arithmetic(models):
    return parse_recipe({"merge_method": "task_arithmetic", "base_model": models["tiny-base"],
                         "models": [{"model": models["tiny-math"]},
                                    {"model": models["tiny-animals"]}]})  # fmt: skip


def test_examples_that_favour_one_fine_tune_pull_the_weight_to_it(zoo):
    models, rows = zoo  # arithmetic examples: tiny-math is good at them, tiny-noisy harmful
    result = search(_soup(models, "tiny-noisy", "tiny-math"), rows, budget=12, seed=0)
    assert [g.name for g in result.space.genes] == ["simplex[0]"]  # budget 12: one gene
    noisy, math = (s.parameters["weight"] for s in result.recipe.models)
    assert math >= 0.95
    assert noisy == pytest.approx(1 - math)
    start = min(c.score for c in result.candidates if c.origin != "search")
    assert result.best.score < start
    assert len(result.candidates) == 12  # the budget is exact


def test_same_seed_same_candidates_and_recipe(zoo):
    models, rows = zoo
    a = search(_task_arithmetic(models), rows, budget=10, seed=7)
    b = search(_task_arithmetic(models), rows, budget=10, seed=7)
    assert [c.genome for c in a.candidates] == [c.genome for c in b.candidates]
    assert [c.score for c in a.candidates] == [c.score for c in b.candidates]
    assert a.best.recipe == b.best.recipe


def test_cancel_mid_search_keeps_the_best_so_far(zoo, tmp_path):
    models, rows = zoo
    cancel = threading.Event()

    def on_candidate(candidate, state):
        if len(state.candidates) == 7:
            cancel.set()

    result = search_and_merge(_task_arithmetic(models), rows, tmp_path / "out", budget=30,
                              cancel=cancel, on_candidate=on_candidate)  # fmt: skip
    assert result.stopped == "cancelled"
    assert len(result.candidates) == 7
    assert result.best.score == min(c.score for c in result.candidates)
    assert result.best in result.candidates
    assert result.recipe.to_yaml() == result.best.recipe  # the best recipe so far, ready to merge
    assert not (tmp_path / "out").exists()  # cancelled: nothing merged, the best recipe kept


def _write_bytes() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))


def test_nothing_is_written_to_disk_per_candidate(zoo, tmp_path):
    models, rows = zoo
    recipe = _task_arithmetic(models)
    evaluator = InMemoryEvaluator(recipe, rows)
    model_bytes = sum(t.numel() * 4 for t in evaluator.targets.values())
    candidates = [parse_recipe({**recipe.model_dump(mode="json", exclude_defaults=True),
                                "parameters": {"lambda": 0.1 + 0.05 * i}}) for i in range(20)]
    evaluator.score(candidates[0])  # warm up (lazy imports, allocator)
    before = _write_bytes()
    scores = [evaluator.score(c) for c in candidates]
    written = _write_bytes() - before
    assert len(set(scores)) == len(scores)  # every candidate really changed the model
    assert written < model_bytes  # 20 candidates wrote less than one model's weights


def test_winner_reproduces_and_the_card_records_the_search(zoo, tmp_path):
    models, rows = zoo
    test_rows = rows[:8]
    result = search_and_merge(_task_arithmetic(models), rows[8:], tmp_path / "out", budget=8,
                              seed=1, test=test_rows)  # fmt: skip
    out = tmp_path / "out"
    assert result.reproduced == pytest.approx(result.best.score, rel=1e-3)
    assert result.test_score == pytest.approx(score_folder(out, test_rows))
    assert load_recipe(out / "hubmerge_recipe.yaml") == result.recipe  # loadable by `merge`
    card = (out / "README.md").read_text()
    assert "## Merge search" in card
    assert result.examples_hash in card
    assert card.count("| search |") + card.count("| your recipe |") >= 2
    record = json.loads((out / "search.json").read_text())
    assert len(record["candidates"]) == 8
    assert record["seed"] == 1
    assert record["budget"] == 8
    assert [g["name"] for g in record["space"]] == [g.name for g in result.space.genes]


def test_cli_search(zoo, tmp_path, capsys):
    from app.cli import main

    models, rows = zoo
    recipe = tmp_path / "ties.yaml"
    recipe.write_text(_task_arithmetic(models).to_yaml())
    examples = tmp_path / "shots.jsonl"
    examples.write_text("".join(json.dumps(r.model_dump(exclude_none=True)) + "\n"
                                for r in rows[:12]))  # fmt: skip
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r.model_dump(exclude_none=True)) + "\n"
                            for r in rows[12:]))  # fmt: skip
    code = main(["search", str(recipe), "--examples", str(examples), "--test", str(test),
                 "--budget", "6", "--seed", "2", "-o", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "6 candidate(s)" in printed
    assert "held-out test loss" in printed
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    assert len(record["candidates"]) == 6
    written = load_recipe(tmp_path / "out" / "hubmerge_recipe.yaml")
    assert written.to_yaml() == record["best"]["recipe"]


def test_lora_adapters_are_searched_in_the_same_evaluator(zoo, demo_models):
    """LoraHub-style: per-adapter weights searched with the adapters' ΔW applied in memory."""
    models, rows = zoo
    base, adapter = models["tiny-base"], str(demo_models.models["tiny-lora-math"])
    recipe = parse_recipe({"merge_method": "task_arithmetic", "base_model": base,
                           "models": [{"model": base, "adapter": adapter},
                                      {"model": models["tiny-animals"]}]})  # fmt: skip
    result = search(recipe, rows, budget=8, seed=0, max_genes=2)
    assert [g.name for g in result.space.genes] == ["weight[0]", "weight[1]"]
    scores = {c.origin: c.score for c in result.candidates}
    assert len(set(scores.values())) > 1  # the adapter's weight changes the model
    assert result.best.score <= scores["your recipe"]


def test_example_loss_weighs_every_example_the_same(zoo):
    models, rows = zoo
    recipe = _task_arithmetic(models)
    evaluator = InMemoryEvaluator(recipe, rows, metric="example_loss")
    value = evaluator.score(recipe)
    singles = [evaluator.scorer.loss([row]) for row in rows]  # the model as merged just now
    assert value == pytest.approx(sum(singles) / len(singles))
    result = search(recipe, rows, budget=4, seed=0, metric="example_loss")
    assert not result.state.higher_is_better
    assert result.best.score == min(c.score for c in result.candidates)


def test_in_memory_merge_takes_the_inputs_the_engine_takes(zoo, tmp_path):
    """karcher with an unlisted base_model averages the base as one more point (mergekit's
    planner): the resident model equals the streamed merge, base included."""
    from merging import merge

    models, rows = zoo
    recipe = parse_recipe({"merge_method": "karcher", "base_model": models["tiny-base"],
                           "models": [{"model": models["tiny-math"]},
                                      {"model": models["tiny-animals"]}]})  # fmt: skip
    evaluator = InMemoryEvaluator(recipe, rows)
    evaluator.apply(recipe)
    folder = merge(recipe, tmp_path / "karcher").output
    from safetensors.torch import load_file

    streamed = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}
    for name, target in evaluator.targets.items():  # (the function vs the chunked kernel)
        torch.testing.assert_close(target.to(streamed[name].dtype), streamed[name],
                                   rtol=1e-4, atol=1e-5, msg=name)  # fmt: skip
