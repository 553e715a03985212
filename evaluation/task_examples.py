"""Harness tasks as scoring examples: the documents lm-evaluation-harness would score, as the
``{"input", "output"[, "choices"], "task"}`` rows of `evaluation.scoring`.

Each task builds its own requests (``build_all_requests``: the first `limit` documents of its
evaluation split, its prompt template, description, few-shot context seeded as
`run_harness` seeds it), and each document becomes one example:

* ``multiple_choice``: the context, the target choice as the output (with the task's target
  delimiter, as the harness scores it) and every choice as ``choices``; tasks with one
  context per choice (``multiple_input``) give the target's context and no ``choices``;
* ``loglikelihood``: the request's context and continuation;
* ``loglikelihood_rolling``: an empty input and the whole text;
* ``generate_until``: the context, and the delimiter plus the (first) target as the output.

So a fast in-memory loss or accuracy (`evaluation.scoring.Scorer`) can stand in for the
harness in an inner loop, on exactly the items the harness scores afterwards.

>>> rows = task_examples(EvalOptions(tasks=("hubmerge_demo_math",), limit=2))  # doctest: +SKIP
>>> rows[1]  # doctest: +SKIP
{'input': 'double 1 is', 'output': ' 2', 'task': 'hubmerge_demo_math'}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from evaluation.errors import DataError
from evaluation.harness import EvalOptions, build_task_manager

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

TASK_KEY = "task"


def task_examples(
    options: EvalOptions, *, task_manager: TaskManager | None = None
) -> list[dict[str, Any]]:
    """The documents `options` would have the harness score, one example per document,
    each tagged with its (leaf) task's name under ``"task"``; groups expand to their tasks.

    Raises:
        [`UnknownTaskError`]: a task the harness cannot find.
        [`DataError`]: a task gives no documents, or a document no usable target.
    """
    manager = task_manager if task_manager is not None else build_task_manager(options)
    loaded = manager.load(list(options.tasks))["tasks"]
    rows: list[dict[str, Any]] = []
    for name in sorted(loaded):
        task = loaded[name]
        if options.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=options.num_fewshot)
        task.set_fewshot_seed(seed=options.seed)
        try:
            task.build_all_requests(limit=options.limit)
        except ValueError as err:  # "did not find any docs"
            raise DataError(f"harness task {name!r} gives no documents: {err}") from None
        rows += [{**row, TASK_KEY: name} for row in document_examples(task, task.instances)]
    if not rows:
        raise DataError(f"the harness tasks {list(options.tasks)} give no documents")
    return rows


def document_examples(task: Any, instances: Sequence[Any]) -> list[dict[str, Any]]:
    """One example per document of `task`'s built `instances` (in document order)."""
    by_doc: dict[int, list[Any]] = {}
    for instance in instances:
        by_doc.setdefault(int(instance.doc_id), []).append(instance)
    kind = task.OUTPUT_TYPE
    if kind not in _BUILDERS:
        raise DataError(f"harness task {task.config.task!r}: output type {kind!r} cannot be "
                        "turned into examples")  # fmt: skip
    return [_BUILDERS[kind](task, group) for _, group in sorted(by_doc.items())]


def _delimited(task: Any, context: str, target: str) -> str:
    delimiter = str(task.config.target_delimiter or "")
    if not delimiter or target.startswith(delimiter) or context.endswith(delimiter):
        return target
    return delimiter + target


def _multiple_choice(task: Any, group: Sequence[Any]) -> dict[str, Any]:
    doc = group[0].doc
    choices = list(task.doc_to_choice(doc))
    target = task.doc_to_target(doc)
    if isinstance(target, list):  # several right answers: the first one
        target = target[0]
    if isinstance(target, str):
        if target not in choices:
            raise DataError(f"harness task {task.config.task!r}: target {target!r} is not "
                            "one of the choices")  # fmt: skip
        target = choices.index(target)
    index = int(target)
    if getattr(task, "multiple_input", False):  # one context per choice, one continuation
        context, continuation = group[index].arguments
        return {"input": context, "output": continuation}
    pairs = [instance.arguments for instance in group[: len(choices)]]
    contexts = {context for context, _ in pairs}
    if len(contexts) != 1:
        raise DataError(f"harness task {task.config.task!r}: choices of one document have "
                        "different contexts")  # fmt: skip
    continuations = [continuation for _, continuation in pairs]
    return {"input": pairs[0][0], "output": continuations[index], "choices": continuations}


def _loglikelihood(task: Any, group: Sequence[Any]) -> dict[str, Any]:
    context, continuation = group[0].arguments
    return {"input": context, "output": continuation}


def _rolling(task: Any, group: Sequence[Any]) -> dict[str, Any]:
    return {"input": "", "output": group[0].arguments[0]}


def _generate(task: Any, group: Sequence[Any]) -> dict[str, Any]:
    context = group[0].arguments[0]
    target = task.doc_to_target(group[0].doc)
    if isinstance(target, list):
        target = target[0] if target else ""
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(group[0].doc)[target]
    text = str(target)
    if not text.strip():
        raise DataError(f"harness task {task.config.task!r}: document {group[0].doc_id} has "
                        "an empty target")  # fmt: skip
    return {"input": context, "output": _delimited(task, context, text)}


_BUILDERS = {
    "multiple_choice": _multiple_choice,
    "loglikelihood": _loglikelihood,
    "loglikelihood_rolling": _rolling,
    "generate_until": _generate,
}
