"""A fitness that keeps every task's gain: ``worst_gap``.

Averages over examples (``loss``, ``example_loss``) can improve by trading one task for
another. When the examples name their task (``{"input", "output", "task"}``), ``worst_gap``
scores a merge by the task that lost most of its gain::

    gap_t = (loss_t(merge) − loss_t(best input)) / (loss_t(base) − loss_t(best input))
    worst_gap = max over tasks of gap_t          (0: every task as good as its best input)

where loss_t is the mean output-token loss on task t's examples, "best input" is the input
model (alone) that scores best on t (its specialist) and "base" the recipe's base model. The
references are measured once, on the same examples, before the search starts.

Examples come from a file (`load_search_examples`) or, with harness tasks and no file, from
the tasks' own documents (`examples_from_tasks`: the items the harness scores with that
``--limit``, each tagged with its task), so the in-memory loss is the inner loop's fitness
and lm-eval only re-scores the top candidates afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.search.errors import SearchError

if TYPE_CHECKING:
    from app.search.rescore import TaskSpec

TASK_KEY = "task"


def split_tasks(rows: Iterable[Any]) -> tuple[list[Any], list[str] | None]:
    """`Example`s and, when every row names one, their tasks (`None` when none does)."""
    from evaluation.scoring import as_examples

    plain: list[Any] = []
    tasks: list[str | None] = []
    for row in rows:
        if isinstance(row, dict) and TASK_KEY in row:
            row = dict(row)
            tasks.append(str(row.pop(TASK_KEY)))
        else:
            tasks.append(None)
        plain.append(row)
    named: list[str] = [t for t in tasks if t is not None]
    if named and len(named) != len(tasks):
        raise SearchError("either every example names its task or none does")
    return as_examples(plain), (named or None)


def load_search_examples(path: str | Path) -> list[dict[str, Any]]:
    """JSON lines of ``{"input", "output"[, "choices"][, "task"]}`` (checked, kept as dicts)."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(dict(json.loads(line)))
        except (ValueError, TypeError) as err:
            raise SearchError(f"{path}:{number}: not a JSON object ({err})") from None
    if not rows:
        raise SearchError(f"{path} holds no examples")
    split_tasks(rows)  # validates every row
    return rows


def examples_from_tasks(spec: TaskSpec) -> list[dict[str, Any]]:
    """The documents the harness scores for `spec` (the first ``limit`` of each task, its
    prompt and few-shot context, seeded as the re-scoring runs it) as selection examples
    tagged with their task (`evaluation.task_examples`); the harness itself is not run."""
    from evaluation.harness import EvalOptions
    from evaluation.suites import DEFAULT_SEED
    from evaluation.task_examples import task_examples

    options = EvalOptions(tasks=spec.tasks, limit=spec.limit, seed=DEFAULT_SEED,
                          num_fewshot=spec.num_fewshot)  # fmt: skip
    return task_examples(options)


def selection_rows(examples: Iterable[Any] | None, tasks: TaskSpec | None) -> list[Any]:
    """The search's selection examples: `examples` when given, else the documents of the
    harness `tasks`.

    Raises:
        `SearchError`: neither.
    """
    rows = list(examples) if examples is not None else []
    if rows:
        return rows
    if tasks is None:
        raise SearchError("the search needs selection examples, or harness tasks to take "
                          "them from (--tasks with --limit)")  # fmt: skip
    return examples_from_tasks(tasks)


def task_losses(scorer: Any, rows: Sequence[Any], tasks: Sequence[str]) -> dict[str, float]:
    """Mean output-token loss per task."""
    scored = scorer.continuations([(row.input, row.output) for row in rows])
    logprob: dict[str, float] = {}
    count: dict[str, int] = {}
    for task, item in zip(tasks, scored, strict=True):
        logprob[task] = logprob.get(task, 0.0) + item.logprob
        count[task] = count.get(task, 0) + item.num_tokens
    return {task: -logprob[task] / count[task] for task in logprob}


@dataclass(frozen=True)
class TaskReference:
    """Per task: the base's loss and the best single input's loss (the specialist's)."""

    base: dict[str, float]
    best: dict[str, float]

    def gaps(self, losses: dict[str, float]) -> dict[str, float]:
        out = {}
        for task, loss in losses.items():
            gain = self.base[task] - self.best[task]
            if gain <= 1e-9:
                raise SearchError(f"task {task!r}: no input improves on the base, so there is "
                                  "no gain to keep; drop the task or use another metric")
            out[task] = (loss - self.best[task]) / gain
        return out

    def worst_gap(self, losses: dict[str, float]) -> float:
        return max(self.gaps(losses).values())

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "best": self.best}


def measure_reference(evaluator: Any, rows: Sequence[Any], tasks: Sequence[str]) -> TaskReference:
    """Score the base and each input alone on `rows` with the evaluator's resident model."""
    from merging import parse_recipe

    recipe = evaluator.recipe
    if not recipe.base_model:
        raise SearchError("worst_gap needs a recipe with a base model (the gains are over it)")

    def alone(model: str, adapter: str | None) -> dict[str, float]:
        source = {"model": model, **({"adapter": adapter} if adapter else {})}
        single = parse_recipe({"merge_method": "linear", "models": [source],
                               "dtype": recipe.dtype, "out_dtype": recipe.out_dtype})  # fmt: skip
        evaluator.apply(single)
        return task_losses(evaluator.scorer, rows, tasks)

    base = alone(recipe.base_model, None)
    inputs = [alone(s.model, s.adapter) for s in recipe.inputs()]
    best = {task: min(scores[task] for scores in inputs) for task in base}
    return TaskReference(base, best)
