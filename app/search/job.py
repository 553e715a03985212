"""The search as an app job: validated up front, run on the job runner, streamed live.

The job is of kind ``merge`` (params ``{"search": true}``), so Evaluate and Push take its
output like any merge's; once the winner is merged the job's recipe becomes the winning
recipe. Each scored candidate is kept in `LIVE` (by job id) for the live chart, and in the
job's result when it finishes. Cancelling stops the search, keeps the best recipe so far in
the result and merges nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from app.jobs import JobContext, JobRunner
from app.settings import Settings
from merging import Recipe

MAX_BUDGET = 512
BACKENDS = ("in process", "local ray")

# job id -> [(candidate index, score, best so far)], while the job runs (and a while after)
LIVE: dict[str, list[tuple[int, float, float]]] = {}
_LIVE_LOCK = threading.Lock()
_KEEP = 64  # finished searches whose points stay in memory


def chart_points(job_id: str, result: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows for the chart: one per candidate and series (``score`` / ``best so far``)."""
    if result and result.get("search"):
        search = result["search"]
        scores = [c["score"] for c in search["candidates"]]
        bests = _best_so_far(scores, bool(search["higher_is_better"]))
        points = list(zip(range(len(scores)), scores, bests, strict=True))
    else:
        with _LIVE_LOCK:
            points = list(LIVE.get(job_id, []))
    rows = []
    for index, score, best in points:
        rows.append({"candidate": index, "score": score, "series": "candidate"})
        rows.append({"candidate": index, "score": best, "series": "best so far"})
    return rows


def _best_so_far(scores: Sequence[float], higher: bool) -> list[float]:
    out: list[float] = []
    for score in scores:
        out.append(score if not out else (max if higher else min)(out[-1], score))
    return out


def submit_search(
    runner: JobRunner,
    settings: Settings,
    recipe: Recipe,
    rows: Sequence[Any],
    *,
    budget: int,
    seed: int,
    metric: str,
    backend: str,
    token: str | None,
    owner: str | None,
    tasks: str | None = None,
    limit: int | None = None,
    guard: str | None = None,
    guard_limit: int | None = None,
    optimizer: str = "auto",
) -> str:
    """Queue a search of `recipe` on `rows` as a job of `owner`; returns the job id.

    `tasks` / `guard` (harness tasks, a suite name or ``mmlu``) re-score the top candidates
    and guard them (`app.search.rescore`); they are checked before the job is queued."""
    from app.search.errors import SearchError
    from app.search.proposers import OPTIMIZERS
    from app.search.rescore import check_tasks, resolve_tasks
    from app.search.space import space_from_recipe

    if not 1 <= budget <= MAX_BUDGET:
        raise SearchError(f"the budget must be between 1 and {MAX_BUDGET} candidates")
    if backend not in BACKENDS:
        raise SearchError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if optimizer not in OPTIMIZERS:
        raise SearchError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    space = space_from_recipe(recipe, budget=budget)  # raises for nothing to search
    task_spec = resolve_tasks(tasks, limit) if tasks else None
    guard_spec = resolve_tasks(guard, guard_limit) if guard else None
    for spec in (task_spec, guard_spec):
        if spec is not None:
            check_tasks(spec)  # an unknown task fails the request, not the job

    def work(ctx: JobContext) -> dict[str, Any]:
        from app.search.run import search_and_merge

        ctx.log(
            f"searching {len(space)} gene(s) of {recipe.merge_method} "
            f"({', '.join(g.name for g in space.genes)}), budget {budget}, seed {seed}"
        )
        with _LIVE_LOCK:
            LIVE[ctx.job_id] = []
            for stale in list(LIVE)[:-_KEEP]:
                LIVE.pop(stale, None)

        def on_candidate(candidate: Any, state: Any) -> None:
            best = state.best.score
            with _LIVE_LOCK:
                LIVE[ctx.job_id].append((candidate.index, candidate.score, best))
            ctx.log(
                f"candidate {candidate.index + 1}/{budget} ({candidate.origin}): "
                f"{metric} {candidate.score:.4f}, best {best:.4f}"
            )
            ctx.progress("search", len(state.candidates), budget, "candidates")

        result = search_and_merge(
            recipe, rows, ctx.output_dir / "merged", budget=budget, seed=seed, metric=metric,
            device=settings.device or "cpu", ray=backend == "local ray", token=token,
            endpoint=settings.hub_endpoint, cancel=ctx.cancel, on_candidate=on_candidate,
            tasks=task_spec, guard=guard_spec, optimizer=optimizer,
            progress=lambda e: ctx.progress(e.stage, e.done, e.total, "tensors"),
        )  # fmt: skip
        summary = result.to_dict()
        best = result.best
        ctx.log(f"best: candidate {best.index} ({best.origin}), {metric} {best.score:.4f}")
        if result.stopped == "cancelled":
            ctx.log("cancelled: the best recipe so far is kept; nothing was merged")
            return {"search": summary, "recipe": best.recipe, "cancelled": True}
        if result.rescored is not None:
            from app.search.rescore import summary_lines

            for line in summary_lines(result.rescored):
                ctx.log(line)
        runner.store.update(ctx.job_id, recipe=best.recipe)  # Evaluate / Push read this
        ctx.log(f"merged the winner; written merge scores {result.reproduced:.4f}")
        return {"output": str(result.output), "search": summary, "recipe": best.recipe}

    params = {"search": True, "budget": budget, "seed": seed, "metric": metric,
              "backend": backend, "optimizer": optimizer,
              "tasks": task_spec.to_dict() if task_spec else None,
              "guard": guard_spec.to_dict() if guard_spec else None}  # fmt: skip
    return runner.submit("merge", work, owner=owner, recipe=recipe.to_yaml(), params=params)
