"""The ask/tell loop on a cheap objective: exact budget, memo, seeds, out-of-order results."""

from __future__ import annotations

import threading

import pytest
import yaml

from app.search.fixed import fixed_recipes
from app.search.optimizer import SearchState, run_loop
from app.search.space import space_from_recipe
from merging import parse_recipe

TARGET = [1.2, 0.1, 0.8, 0.3, 1.4]  # weight[0..3], λ of a TIES recipe of four models


def _recipe():
    return parse_recipe({"merge_method": "ties", "base_model": "org/base",
                         "models": [{"model": f"org/ft-{i}"} for i in range(4)],
                         "parameters": {"density": 0.5}})  # fmt: skip


class QuadraticBackend:
    """Scores a recipe by its distance to TARGET; `workers` tasks in flight, finished in
    reverse order of submission (the loop must not assume any order)."""

    name = "quadratic"

    def __init__(self, space, workers: int = 1):
        self.space, self.workers, self.running, self.submitted = space, workers, [], 0

    def submit(self, ticket, recipe_yaml):
        assert len(self.running) < self.workers
        self.submitted += 1
        self.running.append((ticket, parse_recipe(yaml.safe_load(recipe_yaml))))

    def collect(self):
        ticket, recipe = self.running.pop()  # newest first
        genome = self.space.encode(recipe)
        if genome is None:  # a fixed recipe of another method: a poor score
            return ticket, 10.0, 0.0, 0
        return ticket, sum((a - b) ** 2 for a, b in zip(genome, TARGET)), 0.0, 0  # noqa: B905

    def discard(self):
        self.running.clear()

    def close(self):
        pass


def _run(seed=0, workers=1, budget=40, **kw):
    recipe = _recipe()
    space = space_from_recipe(recipe, budget=budget, max_genes=5)
    backend = QuadraticBackend(space, workers)
    state, sampler, stopped = run_loop(space, fixed_recipes(recipe), backend, budget=budget,
                                       seed=seed, higher_is_better=False, **kw)  # fmt: skip
    return space, backend, state, sampler, stopped


def test_budget_is_exact_and_the_search_improves_on_the_start():
    space, backend, state, sampler, stopped = _run(budget=40)
    assert [g.name for g in space.genes] == ["weight[0]", "weight[1]", "weight[2]",
                                             "weight[3]", "lambda"]  # fmt: skip
    assert sampler == "CmaEsSampler"
    assert stopped == "budget"
    assert len(state.candidates) == 40
    assert backend.submitted == 40 - sum(c.cached for c in state.candidates)
    start = min(c.score for c in state.candidates if c.origin != "search")
    assert state.best.score < start / 4
    assert state.best_so_far() == sorted(state.best_so_far(), reverse=True)


def test_same_seed_same_candidates_other_seed_other_candidates():
    a = _run(seed=3)[2]
    b = _run(seed=3)[2]
    c = _run(seed=4)[2]
    assert [x.genome for x in a.candidates] == [x.genome for x in b.candidates]
    assert a.best.recipe == b.best.recipe
    assert [x.genome for x in a.candidates] != [x.genome for x in c.candidates]


def test_parallel_workers_out_of_order_keep_the_budget():
    _, _, state, _, _ = _run(workers=3, budget=30)
    assert len(state.candidates) == 30
    assert [c.index for c in state.candidates] == list(range(30))


def test_few_genes_use_tpe():
    recipe = _recipe()
    space = space_from_recipe(recipe, budget=16)
    assert len(space) < 4
    _, sampler, _ = run_loop(space, fixed_recipes(recipe), QuadraticBackend(space), budget=8,
                             seed=0, higher_is_better=False)[0:3]  # fmt: skip
    assert sampler == "TPESampler"


def test_cancel_stops_and_keeps_the_best_so_far():
    cancel = threading.Event()
    seen: list[float] = []

    def on_candidate(candidate, state: SearchState):
        seen.append(candidate.score)
        if len(state.candidates) == 12:
            cancel.set()

    _, _, state, _, stopped = _run(budget=40, cancel=cancel, on_candidate=on_candidate)
    assert stopped == "cancelled"
    assert len(state.candidates) == 12
    assert state.best.score == min(seen)


def test_timeout_stops_asking():
    _, _, state, _, stopped = _run(budget=40, timeout=0.0)
    assert stopped == "timeout"
    assert state.candidates == []


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="budget"):
        _run(budget=0)


@pytest.mark.parametrize("workers", [1, 3])
def test_nevergrad_is_seeded_exact_and_inside_the_bounds(workers):
    runs = [_run(seed=5, workers=workers, budget=30, optimizer="nevergrad") for _ in range(2)]
    (space, backend, state, sampler, stopped), (_, _, again, _, _) = runs
    assert sampler == "nevergrad NGOpt"
    assert stopped == "budget"
    assert len(state.candidates) == 30  # the budget is exact, with `workers` asks in flight
    assert backend.submitted == 30 - sum(c.cached for c in state.candidates)
    assert [c.genome for c in state.candidates] == [c.genome for c in again.candidates]
    searched = [c for c in state.candidates if c.origin == "search"]
    for candidate in searched:
        assert all(g.low <= v <= g.high for g, v in zip(space.genes, candidate.genome,
                                                         strict=True))  # fmt: skip
    start = min(c.score for c in state.candidates if c.origin != "search")
    assert min(c.score for c in searched) < start  # it searched, not only replayed the start


def test_the_optimizer_can_be_chosen():
    recipe = _recipe()
    space = space_from_recipe(recipe, budget=16)
    assert len(space) < 4
    for kind, name in [("cmaes", "CmaEsSampler"), ("tpe", "TPESampler"), ("auto", "TPESampler")]:
        _, sampler, _ = run_loop(space, fixed_recipes(recipe), QuadraticBackend(space), budget=6,
                                 seed=0, higher_is_better=False, optimizer=kind)  # fmt: skip
        assert sampler == name
    with pytest.raises(ValueError, match="unknown optimizer"):
        run_loop(space, fixed_recipes(recipe), QuadraticBackend(space), budget=6, seed=0,
                 higher_is_better=False, optimizer="annealing")  # fmt: skip


def test_cma_es_takes_a_small_first_step_from_the_start():
    """Started from a recipe, CMA-ES's first genomes spread about `CMA_ES_SIGMA0` of each
    gene's range around it (Optuna's default, 1/6, would spread them wider)."""
    import statistics

    from app.search.proposers import CMA_ES_SIGMA0, make_proposer

    space = space_from_recipe(_recipe(), budget=40, max_genes=5)
    start = [(g.low + g.high) / 2 for g in space.genes]
    proposer = make_proposer("cmaes", space, [], seed=0, higher_is_better=False, x0=start,
                             budget=40, workers=1)  # fmt: skip
    steps = []
    for _ in range(12):  # about one generation
        handle, genome = proposer.ask()
        steps += [(v - s) / (g.high - g.low) for v, s, g in zip(genome, start, space.genes,
                                                                strict=True)]  # fmt: skip
        proposer.tell(handle, 1.0)
    spread = statistics.pstdev(steps)
    assert 0.6 * CMA_ES_SIGMA0 < spread < 1.35 * CMA_ES_SIGMA0 < 1 / 6
