"""The Search step: find the recipe's weights / densities / λ on examples (layout, wiring and
its one handler; the search itself is `app.search`).

The search runs as a job like a merge (cancel keeps the best recipe so far); the chart shows
every candidate's score and the best so far while it runs, and the winning recipe replaces
the Method tab's YAML when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from app import workflows
from app.handlers import Handlers, _token, public, user_facing
from app.jobs import JobRecord
from app.search.errors import SearchError
from app.search.job import BACKENDS, chart_points, submit_search
from app.search.proposers import OPTIMIZERS
from app.settings import Settings

FOLLOW = {"concurrency_limit": 32, "concurrency_id": "follow"}
LIGHT = {"concurrency_limit": None}


class SearchHandler:
    """The ``search`` endpoint, on top of the app's `Handlers` (settings, runner, identity)."""

    def __init__(self, h: Handlers) -> None:
        self.h = h

    def search(
        self,
        recipe: str,
        examples: str | None,
        upload: str | None,
        budget: float | None,
        seed: float | None,
        metric: str | None,
        backend: str | None,
        token: str | None,
        tasks: str | None = "",
        limit: float | None = None,
        guard: str | None = "",
        guard_limit: float | None = None,
        optimizer: str | None = "auto",
        from_tasks: bool | None = False,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio's injection idiom
    ) -> Iterator[tuple[str, str, Any, Any, dict[str, Any]]]:
        """Search a recipe's parameters (per-model weights, densities, λ or t) by scoring
        candidate merges on examples in memory, then merge the best one (a job; it streams).

        Args:
            recipe: the starting recipe as YAML; its method and models define what is searched.
            examples: a jsonl file of {"input", "output"} selection examples (blank: default).
            upload: an uploaded jsonl file of examples (takes precedence over `examples`).
            budget: how many candidates to score in all, the starting recipes included.
            seed: the optimiser's seed; the same seed gives the same candidates.
            metric: "loss" (mean output-token loss), "example_loss" (every example weighs the
                same), "exact_match" or "multiple_choice".
            backend: "in process", or "local ray" (Ray actors on this machine).
            token: a Hub token that can read the recipe's models (blank for public models).
            tasks: harness tasks (comma-separated) or a suite name: the best few candidates
                and the starting recipe are re-scored on them and the best score wins (blank:
                no re-scoring).
            limit: items per task of `tasks` (blank or 0: every item).
            guard: "mmlu" (the offline MMLU), a suite or tasks: a re-scored candidate more
                than 2 standard errors below the starting recipe's score is not chosen.
            guard_limit: items per guard task (blank or 0: the guard's default; mmlu: 5).
            optimizer: "auto" (CMA-ES from 4 genes, TPE below), "cmaes", "tpe", "nevergrad".
            from_tasks: take the selection examples from the documents of `tasks` (`limit`
                items per task) instead of `examples` / `upload`.

        Returns:
            the job id, its log, the chart (score per candidate and best so far), the best
            recipe's YAML once the search ends, and the job record.
        """
        from evaluation.scoring import load_examples

        with user_facing():
            parsed = workflows.parse(recipe, self.h.settings)
            if from_tasks:  # (no rows: the search takes the tasks' documents)
                if not (tasks or "").strip():
                    raise SearchError("name the harness tasks to take the examples from")
                rows = []
            elif upload:
                rows = load_examples(upload)  # the caller's own upload
            else:
                rows = workflows._examples(self.h.settings, (examples or "").strip() or None)
            job_id = submit_search(
                self.h.runner, self.h.settings, parsed, rows, budget=int(budget or 24),
                seed=int(seed or 0), metric=metric or "loss", backend=backend or BACKENDS[0],
                token=_token(token, oauth_token), owner=self.h.caller(token, oauth_token, request),
                tasks=(tasks or "").strip() or None, limit=int(limit) if limit else None,
                guard=(guard or "").strip() or None,
                guard_limit=int(guard_limit) if guard_limit else None,
                optimizer=optimizer or "auto",
            )  # fmt: skip

        def render(record: JobRecord) -> tuple[str, str, Any, Any, dict[str, Any]]:
            import pandas as pd

            points = pd.DataFrame(chart_points(record.id, record.result),
                                  columns=["candidate", "score", "series"])  # fmt: skip
            best = (record.result or {}).get("recipe")
            return record.id, record.log, points, best if best else gr.update(), public(record)

        yield from self.h._follow(job_id, progress, render)


def render(h: Handlers, settings: Settings, *, method: dict[str, Any], token: Any) -> None:
    """The Search tab (between Method and Merge)."""
    handler = SearchHandler(h)
    recipe = method["recipe"]
    with gr.Tab("2b · Search", id="search"):
        gr.Markdown(
            "Search the recipe's **weights, densities and λ** on examples of what the merge must "
            "do: each candidate is merged in memory and scored (mean output-token loss); your "
            "recipe and the usual fixed recipes are scored first. The best recipe replaces the "
            "YAML in step 2 and is merged (use its job id in Evaluate and Push). Cancel keeps "
            "the best so far."
        )
        with gr.Row():
            examples = gr.Textbox(label="Examples (jsonl path; blank: the default held-out set)",
                                  elem_id="search-examples")  # fmt: skip
            upload = gr.File(label="…or upload a jsonl", file_types=[".jsonl"], type="filepath")
        with gr.Row():
            budget = gr.Number(value=24, precision=0, minimum=1, label="Budget (candidates)",
                               elem_id="search-budget")  # fmt: skip
            seed = gr.Number(value=0, precision=0, label="Seed")
            metric = gr.Dropdown(["loss", "example_loss", "exact_match", "multiple_choice"],
                                 value="loss", label="Metric")  # fmt: skip
            backend = gr.Dropdown(list(BACKENDS), value=BACKENDS[0], label="Backend")
            optimizer = gr.Dropdown(list(OPTIMIZERS), value="auto", label="Optimizer")
        with gr.Accordion("Re-score on harness tasks, guard a general benchmark", open=False):
            gr.Markdown(
                "The best few candidates and your recipe are scored again by "
                "lm-evaluation-harness (in memory); the best score on the **tasks** wins, and a "
                "candidate more than 2 standard errors below your recipe on the **guard** "
                "(`mmlu`: the offline MMLU) is not chosen."
            )
            with gr.Row():
                tasks = gr.Textbox(label="Tasks (comma-separated, or a suite)", value="",
                                   elem_id="search-tasks")  # fmt: skip
                limit = gr.Number(value=0, precision=0, minimum=0, label="Items per task (0: all)")
                guard = gr.Textbox(label="Guard (mmlu, a suite or tasks)", value="",
                                   elem_id="search-guard")  # fmt: skip
                guard_limit = gr.Number(value=0, precision=0, minimum=0,
                                        label="Guard items per task (0: default)")  # fmt: skip
            from_tasks = gr.Checkbox(
                value=False, elem_id="search-from-tasks",
                label="Take the selection examples from the tasks' documents (items per task "
                "as above; no examples file)",
            )  # fmt: skip
        with gr.Row():
            start = gr.Button("Search", variant="primary", elem_id="search-btn")
            cancel = gr.Button("Cancel", variant="stop", elem_id="search-cancel")
        job = gr.Textbox(label="Search job id", elem_id="search-job")
        chart = gr.LinePlot(x="candidate", y="score", color="series", elem_id="search-chart",
                            label="Score per candidate and best so far")  # fmt: skip
        log = gr.Textbox(label="Log", lines=8, max_lines=20, elem_id="search-log")
        with gr.Accordion("Job record", open=False):
            record = gr.JSON(label="Job")
        note = gr.Markdown()
    inputs = [recipe, examples, upload, budget, seed, metric, backend, token, tasks, limit, guard,
              guard_limit, optimizer, from_tasks]  # fmt: skip
    start.click(h.validate_recipe, recipe, None, api_visibility="private", **LIGHT).success(
        handler.search, inputs, [job, log, chart, recipe, record], api_name="search", **FOLLOW
    )
    cancel.click(h.cancel, [job, token], note, api_name="search_cancel",  # not /cancel's name
                 api_visibility="private", **LIGHT)  # fmt: skip
