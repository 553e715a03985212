"""Re-scoring the top candidates on harness tasks, with a damage guard on a general benchmark.

After the search over the selection examples, the best few distinct candidates (``--rescore``,
3 by default) and the user's own recipe are scored again, each merged into the evaluator's
resident model in place (nothing goes to disk), by lm-evaluation-harness:

* on ``--tasks`` (with ``--limit`` items each): the winner is the re-scored candidate with the
  best harness score (ties go to the better selection score);
* on ``--guard`` (``mmlu``: the offline MMLU of `evaluation.ensure_mmlu`, a suite name, or
  harness tasks; ``--guard-limit`` items each): a candidate whose guard score is more than
  two standard errors below the reference's is not chosen. The reference is the user's
  recipe (default) or the base model alone; both run on the same documents, and the
  standard error is that of the per-document differences (a paired test, `app.search.guard`;
  the harness logs its samples for it), or the reference's own where those are not known.

A task's score is the first metric the harness reports for it (`app.search.guard`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.search.errors import SearchError
from app.search.guard import (
    GUARD_SES,
    HarnessScore,
    guard_drop,
    guard_excludes,
    guard_stderr,
    harness_score,
)
from evaluation.suites import DEFAULT_SEED

__all__ = ["GUARD_SES", "HarnessScore", "guard_drop", "guard_excludes", "harness_score"]

logger = logging.getLogger(__name__)

DEFAULT_RESCORE = 3
GUARD_REFERENCES = ("recipe", "base")
# named guards: the offline MMLU (all 57 subjects, 5 questions each unless --guard-limit)
ALIASES: dict[str, tuple[tuple[str, ...], int | None]] = {"mmlu": (("hubmerge_mmlu",), 5)}


@dataclass(frozen=True)
class TaskSpec:
    """Which harness tasks, how many items each, how many shots."""

    tasks: tuple[str, ...]
    limit: int | None = None
    num_fewshot: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "limit": self.limit, "num_fewshot": self.num_fewshot}


def resolve_tasks(spec: str | Sequence[str], limit: int | None = None) -> TaskSpec:
    """``"mmlu"``, a suite name (``quick``, ``demo``, …) or comma-separated harness tasks;
    `limit` (items per task) replaces the alias's or suite's own."""
    from evaluation import SUITES

    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if not names:
        raise SearchError("name at least one harness task")
    if limit is not None and limit < 1:
        raise SearchError("the limit must be at least 1 item per task")
    if len(names) == 1 and names[0] in ALIASES:
        tasks, default = ALIASES[names[0]]
        return TaskSpec(tasks, limit if limit is not None else default)
    if len(names) == 1 and names[0] in SUITES:
        suite = SUITES.get(names[0])
        return TaskSpec(suite.tasks, limit if limit is not None else suite.limit,
                        suite.num_fewshot)  # fmt: skip
    return TaskSpec(tuple(names), limit)


def check_tasks(spec: TaskSpec) -> None:
    """Raise now (`UnknownTaskError`, with close matches) for a task the harness cannot find."""
    from evaluation.harness import EvalOptions, build_task_manager

    build_task_manager(EvalOptions(tasks=spec.tasks, limit=spec.limit))


@dataclass
class Rescored:
    """One re-scored candidate: its selection rank and score, harness and guard scores."""

    index: int  # the candidate's index in the search
    origin: str
    selection: float
    rank: int  # 0: the best selection score among the re-scored
    tasks: HarnessScore | None = None
    guard: HarnessScore | None = None
    guard_drop: float | None = None
    guard_stderr: float | None = None  # the standard error the guard compared the drop with
    paired: bool = False  # ... that of the per-document differences (else the reference's)
    excluded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "origin": self.origin, "selection": self.selection,
                "rank": self.rank, "tasks": self.tasks.to_dict() if self.tasks else None,
                "guard": self.guard.to_dict() if self.guard else None,
                "guard_drop": self.guard_drop, "guard_stderr": self.guard_stderr,
                "paired": self.paired, "excluded": self.excluded}  # fmt: skip


def top_candidates(candidates: Sequence[Any], k: int, *, higher_is_better: bool) -> list[Any]:
    """The `k` best distinct candidates by selection score (a repeated recipe counts once),
    then the user's recipe if it is not among them (it is the guard's reference, and the
    comparison everyone wants)."""
    if k < 1:
        raise SearchError("re-score at least one candidate")
    scored = [c for c in candidates if not math.isnan(c.score)]
    ordered = sorted(scored, key=lambda c: (-c.score if higher_is_better else c.score, c.index))
    chosen: list[Any] = []
    seen: set[str] = set()
    for candidate in ordered:
        if candidate.recipe not in seen and len(chosen) < k:
            seen.add(candidate.recipe)
            chosen.append(candidate)
    own = next((c for c in candidates if c.origin == "your recipe"), None)
    if own is not None and own.recipe not in seen:
        chosen.append(own)
    return chosen


def choose(rescored: Sequence[Rescored]) -> tuple[Rescored, bool]:
    """The winner: the best harness score among those the guard keeps (ties, and no tasks:
    the better selection rank). When the guard excludes every one, the least damaging; the
    flag says so."""
    if not rescored:
        raise SearchError("nothing was re-scored")
    kept = [r for r in rescored if not r.excluded]
    fallback = not kept
    if fallback:
        return min(rescored, key=lambda r: (r.guard_drop or 0.0, r.rank)), True

    def key(r: Rescored) -> tuple[float, int]:
        if r.tasks is None:
            return (0.0, r.rank)
        return (-r.tasks.score if r.tasks.higher_is_better else r.tasks.score, r.rank)

    return min(kept, key=key), fallback


@dataclass
class RescoreResult:
    """What the re-scoring did (recorded in the card and ``search.json``)."""

    tasks: TaskSpec | None
    guard: TaskSpec | None
    guard_reference: str
    reference: HarnessScore | None
    rescored: list[Rescored] = field(default_factory=list)
    winner: int = 0  # candidate index
    fallback: bool = False  # the guard excluded every candidate
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks.to_dict() if self.tasks else None,
                "guard": self.guard.to_dict() if self.guard else None,
                "guard_reference": self.guard_reference, "guard_ses": GUARD_SES,
                "reference": self.reference.to_dict() if self.reference else None,
                "winner": self.winner, "fallback": self.fallback,
                "seconds": round(self.seconds, 3),
                "rescored": [r.to_dict() for r in self.rescored]}  # fmt: skip


class HarnessRunner:
    """lm-evaluation-harness on the evaluator's resident model: one HFLM wraps it, and each
    candidate is written into its parameters in place before the run."""

    def __init__(self, evaluator: Any, *, seed: int = DEFAULT_SEED, batch_size: int = 8) -> None:
        from evaluation.harness import make_hflm

        self.evaluator = evaluator
        self.seed = seed
        self.lm = make_hflm(evaluator.model, evaluator.scorer.tokenizer, batch_size=batch_size)
        self._managers: dict[TaskSpec, tuple[Any, Any]] = {}

    def _options(self, spec: TaskSpec) -> tuple[Any, Any]:
        from evaluation.harness import EvalOptions, build_task_manager

        if spec not in self._managers:
            options = EvalOptions(tasks=spec.tasks, limit=spec.limit, seed=self.seed,
                                  num_fewshot=spec.num_fewshot)  # fmt: skip
            self._managers[spec] = (options, build_task_manager(options))
        return self._managers[spec]

    def score(self, recipe: Any, spec: TaskSpec) -> HarnessScore:
        """Merge `recipe` into the resident model and run `spec`'s tasks on it."""
        from evaluation.harness import run_harness

        options, manager = self._options(spec)
        started = time.perf_counter()
        self.evaluator.apply(recipe)
        harness_log = logging.getLogger("lm_eval")  # a line per task and run: too many here
        level = harness_log.level
        harness_log.setLevel(max(level, logging.WARNING))
        try:
            results = run_harness(self.lm, options, task_manager=manager, log_samples=True)
        finally:
            harness_log.setLevel(level)
        return harness_score(results, spec.tasks, seconds=time.perf_counter() - started)


def base_alone(recipe: Any) -> Any:
    """A recipe that is the base model alone (the guard's other reference)."""
    from merging import parse_recipe

    if not recipe.base_model:
        raise SearchError("--guard-reference base needs a recipe with a base model")
    return parse_recipe({"merge_method": "linear", "models": [{"model": recipe.base_model}],
                         "dtype": recipe.dtype, "out_dtype": recipe.out_dtype})  # fmt: skip


def rescore(
    evaluator: Any,
    candidates: Sequence[Any],
    *,
    higher_is_better: bool,
    tasks: TaskSpec | None,
    guard: TaskSpec | None,
    guard_reference: str = "recipe",
    k: int = DEFAULT_RESCORE,
    seed: int = DEFAULT_SEED,
) -> RescoreResult:
    """Re-score the top `k` candidates (and the user's recipe) on `tasks` and `guard`; see
    the module docstring for how the winner is chosen."""
    from merging import load_recipe

    if tasks is None and guard is None:
        raise SearchError("re-scoring needs harness tasks or a guard")
    if guard_reference not in GUARD_REFERENCES:
        raise SearchError(f"unknown guard reference {guard_reference!r}; use "
                          f"{' or '.join(GUARD_REFERENCES)}")  # fmt: skip
    started = time.perf_counter()
    top = top_candidates(candidates, k, higher_is_better=higher_is_better)
    if not top:
        raise SearchError("no candidate has a score to re-score")
    runner = HarnessRunner(evaluator, seed=seed)
    out = RescoreResult(tasks, guard, guard_reference, None)
    rescored = [Rescored(c.index, c.origin, c.score, rank) for rank, c in enumerate(top)]
    recipes = {c.index: load_recipe(c.recipe) for c in top}
    if guard is not None:
        own = next((r for r in rescored if r.origin == "your recipe"), None)
        if guard_reference == "base":
            out.reference = runner.score(base_alone(evaluator.recipe), guard)
        elif own is not None:
            own.guard = out.reference = runner.score(recipes[own.index], guard)
        else:
            out.reference = runner.score(evaluator.recipe, guard)
    for item in rescored:
        recipe = recipes[item.index]
        if tasks is not None:
            item.tasks = runner.score(recipe, tasks)
        if guard is not None and out.reference is not None:
            if item.guard is None:
                item.guard = runner.score(recipe, guard)
            item.guard_drop = guard_drop(out.reference, item.guard)
            item.guard_stderr, item.paired = guard_stderr(out.reference, item.guard)
            item.excluded = guard_excludes(out.reference, item.guard)
        logger.info("re-scored candidate %d (%s): tasks %s, guard %s%s", item.index,
                    item.origin, _short(item.tasks), _short(item.guard),
                    " (excluded by the guard)" if item.excluded else "")  # fmt: skip
    winner, out.fallback = choose(rescored)
    if out.fallback:
        logger.warning("the guard excluded every re-scored candidate; choosing the least "
                       "damaging one (candidate %d)", winner.index)  # fmt: skip
    out.rescored, out.winner = rescored, winner.index
    out.seconds = time.perf_counter() - started
    return out


def _short(score: HarnessScore | None) -> str:
    if score is None:
        return "–"
    return f"{score.score:.4f}" + (f" ± {score.stderr:.4f}" if score.stderr is not None else "")


def summary_lines(rescored: RescoreResult) -> list[str]:
    """One line per re-scored candidate: harness score, guard score, excluded or not."""
    lines = []
    if rescored.reference is not None:
        lines.append(f"guard reference ({rescored.guard_reference}): {_short(rescored.reference)}")
    for item in rescored.rescored:
        flag = "  EXCLUDED by the guard" if item.excluded else ""
        if item.guard_stderr is not None:
            flag = (f", drop {item.guard_drop:.4f} vs 2 x SE {item.guard_stderr:.4f}"
                    f"{' (paired)' if item.paired else ''}{flag}")  # fmt: skip
        lines.append(f"re-scored candidate {item.index} ({item.origin}): tasks "
                     f"{_short(item.tasks)}, guard {_short(item.guard)}{flag}")  # fmt: skip
    if rescored.fallback:
        lines.append("the guard excluded every re-scored candidate: the least damaging won")
    return lines
