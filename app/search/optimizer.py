"""The ask/tell loop: an optimiser proposes genomes, a backend scores them, the budget is exact.

There is no generation barrier: as soon as one candidate's score comes back it is told and
the next one is asked, so with several workers none waits for the slowest of a generation.
By default CMA-ES (Optuna's `CmaEsSampler`) searches four genes or more; below that, TPE
(CMA-ES needs a few dimensions to adapt its covariance); ``optimizer=`` picks CMA-ES, TPE or
nevergrad's NGOpt instead (`app.search.proposers`). All are seeded: in process, one seed
always gives the same candidates.

The first candidates are the user's recipe and the usual fixed recipes; those that lie in
the space are told to the optimiser (and the best of them is CMA-ES's starting point), so
the search starts from them and its best can only be at least as good.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.search.errors import SearchError
from app.search.proposers import CMA_ES_MIN_GENES, make_proposer
from app.search.space import SearchSpace
from merging import Recipe, load_recipe

logger = logging.getLogger(__name__)

__all__ = ["CMA_ES_MIN_GENES", "Candidate", "LocalBackend", "SearchState", "run_loop"]


@dataclass
class Candidate:
    """One scored candidate: where it came from, its recipe, genome and score."""

    index: int
    origin: str  # "your recipe", a fixed recipe's name, or "search"
    recipe: str  # YAML
    score: float
    genome: list[float] | None = None
    seconds: float = 0.0  # merge in place + scoring, where it ran
    cached: bool = False  # the rounded genome was scored before (memo hit)
    worker: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "origin": self.origin, "score": self.score,
                "genome": self.genome, "seconds": round(self.seconds, 4), "cached": self.cached,
                "worker": self.worker, "recipe": self.recipe}  # fmt: skip


class Backend(Protocol):
    """Where candidates are scored: `submit` recipes, `collect` results as they finish."""

    workers: int
    name: str

    def submit(self, ticket: int, recipe_yaml: str) -> None: ...
    def collect(self) -> tuple[int, float, float, int]: ...  # ticket, score, seconds, worker
    def discard(self) -> None: ...  # forget submitted work (cancel)
    def close(self) -> None: ...


@dataclass
class SearchState:
    """The search so far (what progress callbacks receive)."""

    budget: int
    higher_is_better: bool
    candidates: list[Candidate] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def better(self, a: float, b: float) -> bool:
        if math.isnan(b):
            return not math.isnan(a)
        if math.isnan(a):
            return False
        return a > b if self.higher_is_better else a < b

    @property
    def best(self) -> Candidate | None:
        best = None
        for candidate in self.candidates:
            if best is None or self.better(candidate.score, best.score):
                best = candidate
        return best

    def best_so_far(self) -> list[float]:
        """The best score after each candidate (the live chart's second line)."""
        out, best = [], float("nan")
        for candidate in self.candidates:
            if self.better(candidate.score, best):
                best = candidate.score
            out.append(best)
        return out


OnCandidate = Callable[[Candidate, SearchState], None]


def run_loop(
    space: SearchSpace,
    initial: Sequence[tuple[str, Recipe]],
    backend: Backend,
    *,
    budget: int,
    seed: int,
    higher_is_better: bool,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    on_candidate: OnCandidate | None = None,
    optimizer: str = "auto",
) -> tuple[SearchState, str, str]:
    """Score `initial`, then ask/tell until `budget` candidates in all (or timeout / cancel).

    Returns:
        The state, the sampler's name and why the loop stopped (``budget``, ``timeout``,
        ``cancelled``).
    """
    if budget < 1:
        raise SearchError("the budget must be at least 1 candidate")
    state = SearchState(budget, higher_is_better)
    deadline = None if timeout is None else state.started + timeout
    stopped = "budget"

    def should_stop() -> str | None:
        if cancel is not None and cancel.is_set():
            return "cancelled"
        if deadline is not None and time.perf_counter() >= deadline:
            return "timeout"
        return None

    def record(candidate: Candidate) -> None:
        state.candidates.append(candidate)
        logger.info("candidate %d/%d (%s): %.5f%s", candidate.index + 1, budget,
                    candidate.origin, candidate.score, " (memo)" if candidate.cached else "")
        if on_candidate is not None:
            on_candidate(candidate, state)

    # ---- the user's recipe and the fixed recipes, scored in parallel where workers allow
    first = list(initial)[:budget]
    genomes = {i: space.encode(recipe) for i, (_, recipe) in enumerate(first)}
    memo: dict[tuple[float, ...], float] = {}
    pending: dict[int, Any] = {}
    queue = list(enumerate(first))
    while queue or pending:
        reason = should_stop()
        if reason:
            stopped = reason
            backend.discard()
            break
        while queue and len(pending) < backend.workers:
            ticket, (origin, recipe) = queue.pop(0)
            pending[ticket] = (origin, recipe)
            backend.submit(ticket, recipe.to_yaml())
        ticket, score, seconds, worker = backend.collect()
        origin, recipe = pending.pop(ticket)
        genome = genomes[ticket]
        if genome is not None:
            genome = list(space.round(genome))
            memo.setdefault(tuple(genome), score)
        record(Candidate(len(state.candidates), origin, recipe.to_yaml(), score, genome,
                         seconds, worker=worker))  # fmt: skip
    best_start = None
    for candidate in state.candidates:
        if candidate.genome is not None and (best_start is None or state.better(
                candidate.score, best_start.score)):  # fmt: skip
            best_start = candidate
    asked = len(state.candidates)
    told = [(c.genome, c.score) for c in state.candidates if c.genome is not None]
    proposer = make_proposer(optimizer, space, told, seed=seed, higher_is_better=higher_is_better,
                             x0=best_start.genome if best_start else None,
                             budget=budget - asked, workers=backend.workers)  # fmt: skip
    # ---- ask / tell, asynchronously, until the budget is spent
    trials: dict[int, tuple[Any, list[float], str]] = {}
    if stopped == "budget":
        while asked < budget or trials:
            reason = should_stop()
            if reason:
                stopped = reason
                backend.discard()
                for handle, _, _ in trials.values():
                    proposer.fail(handle)
                break
            while asked < budget and len(trials) < backend.workers:
                handle, raw = proposer.ask()
                genome = list(space.round(raw))
                asked += 1
                key = tuple(genome)
                if key in memo:
                    proposer.tell(handle, memo[key])
                    record(Candidate(len(state.candidates), "search",
                                     space.decode(genome).to_yaml(), memo[key], genome,
                                     cached=True))  # fmt: skip
                    continue
                text = space.decode(genome).to_yaml()
                trials[asked] = (handle, genome, text)
                backend.submit(asked, text)
            if not trials:
                continue
            ticket, score, seconds, worker = backend.collect()
            handle, genome, text = trials.pop(ticket)
            memo[tuple(genome)] = score
            proposer.tell(handle, score)
            record(Candidate(len(state.candidates), "search", text, score, genome, seconds,
                             worker=worker))  # fmt: skip
    return state, proposer.name, stopped


class LocalBackend:
    """Scores candidates one at a time with an in-process `InMemoryEvaluator` (no Ray)."""

    name = "in process"
    workers = 1

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator
        self._queue: list[tuple[int, str]] = []

    def submit(self, ticket: int, recipe_yaml: str) -> None:
        self._queue.append((ticket, recipe_yaml))

    def collect(self) -> tuple[int, float, float, int]:
        ticket, text = self._queue.pop(0)
        started = time.perf_counter()
        score = self.evaluator.score(load_recipe(text))
        return ticket, score, time.perf_counter() - started, 0

    def discard(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        pass
