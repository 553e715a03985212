"""Harness re-scoring and the damage guard: the pure rules (2 standard errors, ties, the
fallback, which candidates), and on the demo zoo with real lm-evaluation-harness runs on
the demo skills' local tasks: the guard keeps a merge that forgets a skill from winning."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from app.search.errors import SearchError
from app.search.rescore import (
    HarnessScore,
    Rescored,
    TaskSpec,
    choose,
    guard_drop,
    guard_excludes,
    harness_score,
    resolve_tasks,
    top_candidates,
)


def _score(value, stderr=0.05, higher=True):
    return HarnessScore(value, stderr, higher, {})


def test_a_drop_of_more_than_two_standard_errors_excludes():
    reference = _score(0.50, stderr=0.05)
    assert not guard_excludes(reference, _score(0.60))  # better
    assert not guard_excludes(reference, _score(0.41))  # 1.8 SE below
    assert not guard_excludes(reference, _score(0.4000001))  # just under 2 SE
    assert guard_excludes(reference, _score(0.3999))  # just over 2 SE
    assert guard_drop(reference, _score(0.30)) == pytest.approx(0.20)


def test_lower_is_better_guards_turn_the_drop_around():
    reference = _score(2.0, stderr=0.1, higher=False)  # e.g. a perplexity
    assert guard_drop(reference, _score(2.5, higher=False)) == pytest.approx(0.5)
    assert guard_excludes(reference, _score(2.25, higher=False))
    assert not guard_excludes(reference, _score(1.0, higher=False))


def test_a_guard_without_a_standard_error_cannot_guard():
    with pytest.raises(SearchError, match="standard error"):
        guard_excludes(_score(0.5, stderr=None), _score(0.1))


def _rescored(index, rank, tasks=None, drop=None, excluded=False):
    return Rescored(index, "search", 0.0, rank, tasks=None if tasks is None else _score(tasks),
                    guard_drop=drop, excluded=excluded)  # fmt: skip


def test_the_best_harness_score_the_guard_keeps_wins_ties_by_selection_rank():
    rows = [_rescored(7, 0, tasks=0.9, drop=0.3, excluded=True), _rescored(3, 1, tasks=0.6),
            _rescored(5, 2, tasks=0.6), _rescored(0, 3, tasks=0.4)]  # fmt: skip
    winner, fallback = choose(rows)
    assert (winner.index, fallback) == (3, False)  # 7 is excluded; 3 and 5 tie, 3 ranks first


def test_without_tasks_the_best_selection_the_guard_keeps_wins():
    rows = [_rescored(7, 0, drop=0.3, excluded=True), _rescored(4, 1, drop=0.0)]
    assert choose(rows)[0].index == 4


def test_when_the_guard_excludes_all_the_least_damaging_wins():
    rows = [_rescored(1, 0, tasks=0.9, drop=0.5, excluded=True),
            _rescored(2, 1, tasks=0.1, drop=0.2, excluded=True)]  # fmt: skip
    assert choose(rows) == (rows[1], True)


def test_top_candidates_are_distinct_then_your_recipe():
    c = [SimpleNamespace(index=i, origin=o, recipe=r, score=s) for i, (o, r, s) in enumerate(
        [("your recipe", "a", 0.9), ("search", "b", 0.2), ("search", "b", 0.2),
         ("search", "c", float("nan")), ("search", "d", 0.5), ("search", "e", 0.7)])]  # fmt: skip
    assert [x.index for x in top_candidates(c, 2, higher_is_better=False)] == [1, 4, 0]
    assert [x.index for x in top_candidates(c, 2, higher_is_better=True)] == [0, 5]
    with pytest.raises(SearchError):
        top_candidates(c, 0, higher_is_better=False)


def test_harness_score_reads_the_first_metric_and_pools_standard_errors():
    results = {
        "results": {
            "a": {"alias": "a", "acc,none": 0.5, "acc_stderr,none": 0.03, "acc_norm,none": 0.9},
            "b": {"exact_match,strict": 0.25, "exact_match_stderr,strict": 0.04},
        },
        "higher_is_better": {"a": {"acc": True, "acc_norm": True}, "b": {"exact_match": True}},
    }
    score = harness_score(results, ["a", "b"])
    assert score.score == pytest.approx(0.375)
    assert score.stderr == pytest.approx(0.025)  # sqrt(0.03² + 0.04²) / 2
    assert score.tasks["a"]["metric"] == "acc"
    with pytest.raises(SearchError, match="nothing"):
        harness_score(results, ["c"])
    results["higher_is_better"]["b"]["exact_match"] = False
    with pytest.raises(SearchError, match="disagree"):
        harness_score(results, ["a", "b"])


def test_resolve_tasks():
    assert resolve_tasks("mmlu") == TaskSpec(("hubmerge_mmlu",), 5)
    assert resolve_tasks("mmlu", 2).limit == 2
    assert resolve_tasks("demo").tasks == ("hubmerge_demo_math", "hubmerge_demo_animals")
    assert resolve_tasks("x, y", 4) == TaskSpec(("x", "y"), 4)
    with pytest.raises(SearchError):
        resolve_tasks(" , ")


# ---- real harness runs on the demo zoo -------------------------------------------------


@pytest.fixture(scope="module")
def zoo(demo_models):
    from merging import parse_recipe

    models = {name: str(path) for name, path in demo_models.models.items()}
    rows = [json.loads(line) for line in demo_models.examples.read_text().splitlines()]
    math = [row for row in rows if row["input"].startswith("double")]  # favour tiny-math
    recipe = parse_recipe({"merge_method": "task_arithmetic", "base_model": models["tiny-base"],
                           "models": [{"model": models["tiny-math"]},
                                      {"model": models["tiny-animals"]}]})  # fmt: skip
    return recipe, math


MATH = TaskSpec(("hubmerge_demo_math",), 10)
ANIMALS = TaskSpec(("hubmerge_demo_animals",), 16)


@pytest.mark.slow
def test_the_guard_keeps_a_merge_that_forgets_a_skill_from_winning(zoo, tmp_path):
    from app.search import search_and_merge

    recipe, math = zoo  # math examples pull the animals weight down; the guard is animals
    result = search_and_merge(recipe, math, tmp_path / "out", budget=12, seed=0, max_genes=2,
                              tasks=MATH, guard=ANIMALS, rescore=3)  # fmt: skip
    rescored = result.rescored
    assert len(rescored.rescored) == 4  # the best 3 and your recipe
    top = rescored.rescored[0]
    assert top.index == result.state.best.index  # the best selection score ...
    assert top.excluded  # ... forgot the animals: excluded
    reference = rescored.reference
    for item in rescored.rescored:  # excluded exactly when more than 2 paired SE below
        differences = [item.guard.samples[t][d] - reference.samples[t][d]
                       for t in reference.samples for d in reference.samples[t]]  # fmt: skip
        assert len(differences) == ANIMALS.limit  # the same documents, every one logged
        mean = sum(differences) / len(differences)
        spread = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
        assert item.paired
        assert item.guard_stderr == pytest.approx((spread / len(differences)) ** 0.5)
        assert item.excluded == (reference.score - item.guard.score > 2 * item.guard_stderr)
    winner = next(r for r in rescored.rescored if r.index == rescored.winner)
    assert not winner.excluded
    kept = [r.tasks.score for r in rescored.rescored if not r.excluded]
    assert winner.tasks.score == max(kept)
    assert result.best.index == rescored.winner != result.state.best.index
    assert result.reproduced == pytest.approx(result.best.score, rel=1e-3)  # the written winner
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Damage guard" in card
    assert f"Excluded by the guard: {top.index}" in card
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    assert record["rescore"]["winner"] == rescored.winner
    assert record["best"]["index"] == rescored.winner


@pytest.mark.slow
def test_in_memory_harness_scores_are_those_of_the_written_merge(zoo, tmp_path):
    """Re-scoring on tasks alone: the winner has the best harness score of those re-scored,
    and the harness run on its written folder gives the same numbers."""
    from app.cli import main
    from evaluation import evaluate

    recipe, math = zoo
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in math))
    code = main(["search", str(tmp_path / "r.yaml"), "--examples", str(tmp_path / "m.jsonl"),
                 "--budget", "8", "--genes", "2", "--tasks", "hubmerge_demo_animals",
                 "--limit", "16", "--rescore", "2", "-o", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "out" / "search.json").read_text())["rescore"]
    scores = {r["index"]: r["tasks"]["score"] for r in record["rescored"]}
    assert len(scores) == 3
    assert scores[record["winner"]] == max(scores.values())
    report = evaluate(tmp_path / "out", tasks=["hubmerge_demo_animals"], limit=16,
                      device="cpu", dtype="float32")  # fmt: skip
    written = next(r.value for r in report.models[0].results if r.metric == "exact_match")
    assert written == pytest.approx(scores[record["winner"]])


@pytest.mark.slow
def test_the_offline_mmlu_guards(zoo):
    """The guard on the real MMLU (one subject, from the cached wheel): the reference is
    your recipe, which is therefore never excluded."""
    from app.search import search
    from evaluation import DataUnavailableError, ensure_mmlu

    try:
        ensure_mmlu(download=False)
    except DataUnavailableError:
        pytest.skip("the MMLU wheel is not cached here")
    recipe, math = zoo
    guard = TaskSpec(("hubmerge_mmlu_marketing",), 12)
    result = search(recipe, math, budget=6, seed=0, max_genes=2, guard=guard, rescore=1)
    rescored = result.rescored
    own = next(r for r in rescored.rescored if r.origin == "your recipe")
    assert own.guard == rescored.reference
    assert own.guard_drop == 0
    assert not own.excluded
    assert rescored.reference.tasks["hubmerge_mmlu_marketing"]["metric"] == "acc"
    assert rescored.reference.stderr > 0


@pytest.mark.slow
def test_an_unknown_task_fails_before_the_search(zoo):
    """Checked before any candidate is scored (indexing the harness's ~10k built-in tasks to
    be sure takes a while), with the harness's close matches."""
    from app.search import search
    from evaluation import UnknownTaskError

    recipe, math = zoo
    scored = []
    with pytest.raises(UnknownTaskError, match="hubmerge_demo_math"):
        search(recipe, math, budget=4, tasks=TaskSpec(("hubmerge_demo_maths",), 4),
               on_candidate=lambda c, state: scored.append(c))  # fmt: skip
    assert scored == []
