"""Merge search end to end: space from the recipe, candidates scored in memory, the winner
merged through the normal streamed `merging.merge`, its score reproduced, the card written.

>>> from merging import load_recipe
>>> from evaluation.scoring import load_examples
>>> result = search_and_merge(load_recipe("ties.yaml"), load_examples("shots.jsonl"),
...                           "out/searched", budget=48, seed=0)  # doctest: +SKIP
>>> result.best.score, result.reproduced  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.search.errors import SearchError
from app.search.evaluator import InMemoryEvaluator, examples_hash, score_folder
from app.search.fixed import fixed_recipes
from app.search.optimizer import Candidate, LocalBackend, OnCandidate, SearchState, run_loop
from app.search.rescore import DEFAULT_RESCORE, TaskSpec, check_tasks
from app.search.rescore import rescore as rescore_candidates
from app.search.space import SearchSpace, space_from_recipe
from merging import MergeOptions, Recipe, merge, parse_recipe
from merging.engine import ProgressCallback

logger = logging.getLogger(__name__)

REPRODUCE_TOLERANCE = 1e-3  # relative: the streamed merge's score vs the in-memory one


@dataclass
class SearchResult:
    """Everything about one search (and, after `search_and_merge`, its written winner)."""

    space: SearchSpace
    state: SearchState
    budget: int
    seed: int
    metric: str
    sampler: str
    stopped: str  # "budget", "timeout" or "cancelled"
    backend: str
    workers: int
    examples_hash: str
    examples: int
    seconds: float
    load_seconds: float
    output: Path | None = None
    reproduced: float | None = None
    test_score: float | None = None
    test_hash: str | None = None
    reference: Any = None  # worst_gap: the per-task base / best-input losses
    rescored: Any = None  # `RescoreResult`: harness re-scoring and the guard, if asked
    examples_from: Any = None  # `TaskSpec` whose documents the examples are, if they are

    @property
    def candidates(self) -> list[Candidate]:
        return self.state.candidates

    @property
    def best(self) -> Candidate:
        """The winner: the best selection score, or the candidate the harness re-scoring
        (and the guard) chose."""
        if self.rescored is not None:
            return self.candidates[self.rescored.winner]
        best = self.state.best
        if best is None:
            raise SearchError("the search scored no candidate (cancelled or timed out at once)")
        return best

    @property
    def recipe(self) -> Recipe:
        import yaml

        return parse_recipe(yaml.safe_load(self.best.recipe))

    def best_fixed(self) -> Candidate | None:
        """The best of the user's recipe and the fixed recipes."""
        fixed = SearchState(self.budget, self.state.higher_is_better,
                            [c for c in self.candidates if c.origin != "search"])  # fmt: skip
        return fixed.best

    def per_candidate_overhead(self) -> float:
        """Mean wall seconds per candidate beyond the evaluation itself (the engine's cost)."""
        evaluated = [c for c in self.candidates if not c.cached]
        if not evaluated:
            return 0.0
        busy = sum(c.seconds for c in evaluated) / max(1, self.workers)
        return max(0.0, (self.seconds - self.load_seconds - busy) / len(self.candidates))

    def to_dict(self) -> dict[str, Any]:
        best = self.best if self.state.candidates else None
        fixed = self.best_fixed()
        return {
            "space": self.space.describe(), "budget": self.budget, "seed": self.seed,
            "metric": self.metric, "higher_is_better": self.state.higher_is_better,
            "sampler": self.sampler, "stopped": self.stopped, "backend": self.backend,
            "workers": self.workers, "examples": self.examples,
            "examples_sha256": self.examples_hash,
            "examples_from": self.examples_from.to_dict() if self.examples_from else None,
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "best": best.to_dict() if best else None,
            "best_fixed": fixed.to_dict() if fixed else None,
            "reproduced": self.reproduced, "test_score": self.test_score,
            "test_sha256": self.test_hash,
            "task_reference": self.reference.to_dict() if self.reference else None,
            "rescore": self.rescored.to_dict() if self.rescored else None,
            "output": str(self.output) if self.output else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }  # fmt: skip


def pin_recipe(recipe: Recipe, *, token: str | None, endpoint: str | None) -> Recipe:
    """The recipe with every Hub reference pinned to its commit (``org/name@sha``), so every
    worker, and the final merge, read the same weights."""
    from merging.hub import resolve_revision
    from merging.io.refs import ModelRef

    cache: dict[str, str] = {}

    def pinned(name: str | None) -> str | None:
        if not name or name == "base":
            return name
        if name not in cache:
            ref = ModelRef.parse(name)
            if ref.local:
                cache[name] = name
            else:
                commit = resolve_revision(ref.name, ref.revision, token=token, endpoint=endpoint)
                cache[name] = f"{ref.name}@{commit}"
        return cache[name]

    data = recipe.model_dump(mode="json", exclude_defaults=True)
    data["merge_method"] = recipe.merge_method
    data["base_model"] = pinned(recipe.base_model)
    if recipe.tokenizer_source:
        data["tokenizer_source"] = pinned(recipe.tokenizer_source)
    for entry in data["models"]:
        entry["model"] = pinned(entry["model"])
        if entry.get("adapter"):
            entry["adapter"] = pinned(entry["adapter"])
    return parse_recipe({k: v for k, v in data.items() if v is not None})


def search(
    recipe: Recipe,
    examples: Sequence[Any] | None,
    *,
    budget: int = 32,
    seed: int = 0,
    timeout: float | None = None,
    metric: str = "loss",
    device: str = "cpu",
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    max_genes: int | None = None,
    optimizer: str = "auto",
    tasks: TaskSpec | None = None,
    guard: TaskSpec | None = None,
    rescore: int = DEFAULT_RESCORE,
    guard_reference: str = "recipe",
    cancel: threading.Event | None = None,
    on_candidate: OnCandidate | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> SearchResult:
    """Search the parameters of `recipe` on `examples`; nothing is written to disk.

    Args:
        recipe (`Recipe`): the starting recipe; its method and models define the space.
        examples: selection examples (``{"input", "output"}`` rows or `Example`s); `None`
            or empty: the documents of `tasks` (`app.search.tasks.examples_from_tasks`).
        budget (`int`): candidates in all, the initial ones included; exact.
        seed (`int`): seeds the optimiser (same seed, same candidates, in process).
        timeout (`float`, *optional*): seconds after which no new candidate is asked.
        metric (`str`): ``"loss"`` (per output token, lower is better), ``"example_loss"``
            (per example), ``"exact_match"``, ``"multiple_choice"``.
        ray, ray_address: score on a local Ray (127.0.0.1) or an existing cluster.
        optimizer (`str`): ``"auto"`` (CMA-ES from 4 genes, TPE below), ``"cmaes"``,
            ``"tpe"`` or ``"nevergrad"``.
        tasks (`TaskSpec`, *optional*): harness tasks the top `rescore` candidates (and the
            user's recipe) are re-scored on, in memory; the best harness score wins.
        guard (`TaskSpec`, *optional*): a general benchmark; a re-scored candidate more than
            2 standard errors below `guard_reference`'s score (``"recipe"``: the user's
            recipe; ``"base"``: the base model) is not chosen (`app.search.rescore`).
        cancel (`threading.Event`, *optional*): stop; the best so far is kept.
        on_candidate (`Callable`, *optional*): called with each scored candidate and the state.

    Returns:
        `SearchResult`; ``result.recipe`` is the best recipe found.

    Raises:
        `SearchError`: nothing to search, no examples, a backend failure.
    """
    from app.search.evaluator import higher_is_better
    from app.search.tasks import selection_rows, split_tasks

    started = time.perf_counter()
    from_tasks = tasks if not list(examples or []) else None
    rows = selection_rows(examples, tasks)
    if not split_tasks(rows)[0]:
        raise SearchError("the search needs at least one example")
    # imported here, so that their import (cmaes pulls in scipy.stats: seconds) counts as
    # start-up, not as the overhead of the first CMA-ES candidate
    import cmaes  # noqa: F401
    import optuna  # noqa: F401

    recipe = pin_recipe(recipe, token=token, endpoint=endpoint)
    space = space_from_recipe(recipe, budget=budget, max_genes=max_genes)
    for spec in (tasks, guard):
        if spec is not None:
            check_tasks(spec)  # an unknown task fails now, not after the search
    initial = fixed_recipes(recipe)
    if ray or ray_address:
        from app.search.ray_backend import RayBackend

        backend: Any = RayBackend(recipe, rows, address=ray_address, workers=workers,
                                  metric=metric, device=device, token=token,
                                  endpoint=endpoint)  # fmt: skip
        reference = backend.reference()
        load_seconds = time.perf_counter() - started
    else:
        evaluator = InMemoryEvaluator(recipe, rows, metric=metric, device=device, token=token,
                                      endpoint=endpoint)  # fmt: skip
        backend = LocalBackend(evaluator)
        reference = evaluator.reference
        load_seconds = time.perf_counter() - started
    logger.info("searching %d gene(s) of %s with a budget of %d on %s", len(space),
                recipe.merge_method, budget, backend.name)  # fmt: skip
    try:
        state, sampler, stopped = run_loop(
            space, initial, backend, budget=budget, seed=seed,
            higher_is_better=higher_is_better(metric), optimizer=optimizer,
            timeout=timeout, cancel=cancel, on_candidate=on_candidate,
        )  # fmt: skip
    finally:
        backend.close()
    result = SearchResult(
        space=space, state=state, budget=budget, seed=seed, metric=metric, sampler=sampler,
        stopped=stopped, backend=backend.name, workers=backend.workers,
        examples_hash=examples_hash(rows), examples=len(rows), examples_from=from_tasks,
        seconds=time.perf_counter() - started, load_seconds=load_seconds, reference=reference,
    )  # fmt: skip
    if (tasks or guard) and stopped != "cancelled" and state.candidates:
        local = backend.evaluator if isinstance(backend, LocalBackend) else InMemoryEvaluator(
            recipe, rows, device=device, token=token, endpoint=endpoint)  # fmt: skip
        result.rescored = rescore_candidates(
            local, state.candidates, higher_is_better=state.higher_is_better, tasks=tasks,
            guard=guard, guard_reference=guard_reference, k=rescore)  # fmt: skip
        result.seconds = time.perf_counter() - started
    return result


def search_and_merge(
    recipe: Recipe,
    examples: Sequence[Any] | None,
    output: str | Path,
    *,
    test: Sequence[Any] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> SearchResult:
    """`search`, then merge the winner to `output` with the streamed engine, check that its
    score reproduces, score the held-out `test` split (never used to choose), and add the
    search to the model card (``README.md``) and ``search.json``.

    A cancelled search writes nothing and returns the best so far.

    Raises:
        `SearchError`: the written merge does not reproduce the in-memory score.
    """
    from app.search.tasks import selection_rows

    tasks = options.get("tasks")
    from_tasks = tasks if not list(examples or []) else None
    examples = selection_rows(examples, tasks)
    result = search(recipe, examples, **options)
    result.examples_from = from_tasks
    if result.stopped == "cancelled":
        return result
    device = options.get("device", "cpu")
    merged = merge(result.recipe, output, options=MergeOptions(
        overwrite=overwrite, token=options.get("token"), endpoint=options.get("endpoint"),
        device=device, cancel=options.get("cancel"), progress=progress))  # fmt: skip
    result.output = merged.output
    result.reproduced = score_folder(merged.output, examples, metric=result.metric,
                                     device=device, reference=result.reference)  # fmt: skip
    expected = result.best.score
    if not math.isclose(result.reproduced, expected, rel_tol=REPRODUCE_TOLERANCE,
                        abs_tol=REPRODUCE_TOLERANCE):  # fmt: skip
        raise SearchError(
            f"the streamed merge scores {result.reproduced:.6f} but the search measured "
            f"{expected:.6f} in memory; the output at {merged.output} is not trustworthy"
        )
    if test:
        rows = list(test)
        reference = None
        if result.metric == "worst_gap":  # the base's and inputs' losses on the test split
            reference = InMemoryEvaluator(result.space.template, rows, metric="worst_gap",
                                          device=device, token=options.get("token"),
                                          endpoint=options.get("endpoint")).reference  # fmt: skip
        result.test_score = score_folder(merged.output, rows, metric=result.metric,
                                         device=device, reference=reference)  # fmt: skip
        result.test_hash = examples_hash(rows)
    from app.search.card import write_search_card

    write_search_card(merged.output, result)
    return result


def save_json(result: SearchResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
