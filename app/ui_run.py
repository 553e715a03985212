"""Tabs 3–6 of the layout: Merge, Evaluate, Push and Jobs (layout and wiring only)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from app import ui_try
from app.handlers import JOB_COLUMNS, Handlers
from app.settings import Settings

# Long jobs run on the job runner's own threads (settings.concurrency at once); the
# handlers that follow them only poll, so many may stream at the same time.
FOLLOW = {"concurrency_limit": 32, "concurrency_id": "follow"}
LIGHT = {"concurrency_limit": None}


def _suites(settings: Settings) -> list[str]:
    from evaluation.suites import suite_names

    names = suite_names()
    return sorted(names, key=lambda n: (n != ("demo" if settings.demo else "quick"), n))


def render(h: Handlers, settings: Settings, *, method: dict[str, Any], token: Any) -> None:
    recipe = method["recipe"]
    with gr.Tab("3 · Merge", id="merge"):
        gr.Markdown("Runs the recipe from step 2. Cancelling stops the job and keeps nothing.")
        with gr.Row():
            merge_btn = gr.Button("Merge", variant="primary", elem_id="merge-btn")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
        merge_job = gr.Textbox(label="Merge job id", elem_id="merge-job", interactive=True)
        merge_log = gr.Textbox(label="Log", lines=8, max_lines=20, elem_id="merge-log")
        with gr.Accordion("Job record", open=False):
            merge_record = gr.JSON(label="Job")
        cancel_note = gr.Markdown()
    inputs = [recipe, token, method["soup_examples"], method["soup_metric"]]
    merge_btn.click(h.validate_recipe, recipe, None, api_visibility="private", **LIGHT).success(
        h.merge, inputs, [merge_job, merge_log, merge_record], api_name="merge", **FOLLOW
    )
    cancel_btn.click(h.cancel, [merge_job, token], cancel_note, api_name="cancel", **LIGHT)
    ui_try.render(h, settings, merge_job=merge_job, token=token)

    with gr.Tab("5 · Evaluate", id="evaluate"):
        suites = _suites(settings)
        with gr.Row():
            eval_job_in = gr.Textbox(label="Merge job id to evaluate", elem_id="eval-merge-job")
            suite = gr.Dropdown(suites, value=suites[0] if suites else None, label="Suite",
                                elem_id="suite")  # fmt: skip
        with gr.Row():
            tasks = gr.Textbox(label="…or harness task names (comma-separated)")
            limit = gr.Number(label="Limit (items per task; blank: the suite's)", precision=0)
            plot = gr.Checkbox(label="Interpolation probe (loss along base → merge)",
                               value=settings.demo, elem_id="plot")  # fmt: skip
        eval_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-btn")
        eval_job = gr.Textbox(label="Evaluation job id", elem_id="eval-job")
        with gr.Row():
            table = gr.Markdown(label="Results", elem_id="eval-table")
            chart = gr.Image(label="Scores (± stderr)", type="filepath", elem_id="eval-chart",
                             interactive=False)  # fmt: skip
        curve = gr.LinePlot(x="alpha", y="value", color="curve", label="Interpolation probe",
                            x_title="α (θ = (1−α)·base + α·merge)", y_title="loss per token",
                            color_title="", elem_id="eval-curve", visible=False)  # fmt: skip
        image = gr.Image(label="Interpolation", type="filepath", elem_id="eval-plot",
                         visible=False)  # fmt: skip
        with gr.Accordion("Job record", open=False):
            eval_record = gr.JSON(label="Job")
    merge_job.change(lambda job: job, merge_job, eval_job_in, api_visibility="private", **LIGHT)
    eval_btn.click(
        h.evaluate, [eval_job_in, suite, tasks, limit, plot, token],
        [eval_job, table, image, eval_record], api_name="evaluate", **FOLLOW,
    )  # fmt: skip
    eval_record.change(pictures, eval_record, [chart, curve], api_visibility="private", **LIGHT)

    with gr.Tab("6 · Push", id="push"):
        with gr.Row():
            push_job_in = gr.Textbox(label="Merge job id to push", elem_id="push-merge-job")
            repo_id = gr.Textbox(label="Repo id (namespace/name)", elem_id="repo-id",
                                 placeholder="you/my-merge")  # fmt: skip
        with gr.Row():
            private = gr.Checkbox(label="Private", value=True, elem_id="private")
            exist_ok = gr.Checkbox(label="Update if it exists", value=False)
        preview_btn = gr.Button("Preview model card", elem_id="preview-btn")
        card = gr.Code(label="Model card (README.md)", language="markdown", elem_id="card")
        push_btn = gr.Button("Push", variant="primary", elem_id="push-btn")
        push_job = gr.Textbox(label="Push job id", elem_id="push-job")
        commit_url = gr.Textbox(label="Commit URL", elem_id="commit-url")
        with gr.Accordion("Job record", open=False):
            push_record = gr.JSON(label="Job")
    merge_job.change(lambda job: job, merge_job, push_job_in, api_visibility="private", **LIGHT)
    preview_btn.click(h.card_preview, [push_job_in, token], card, api_name="card_preview",
                      **LIGHT)  # fmt: skip
    push_inputs = [push_job_in, repo_id, private, exist_ok, token]
    push_btn.click(h.validate_push, push_inputs, None, api_visibility="private", **LIGHT).success(
        h.push, push_inputs, [push_job, commit_url, push_record], api_name="push", **FOLLOW
    )

    with gr.Tab("7 · Jobs", id="jobs"):
        keep = f"{settings.keep_hours:g} h after a job ends" if settings.keep_hours else "for now"
        gr.Markdown("Your jobs only: those of your Hub user (the token above, or your sign-in), "
                    f"else those of this browser tab. Outputs are kept {keep}.")  # fmt: skip
        with gr.Row():
            refresh = gr.Button("Refresh", elem_id="jobs-refresh")
            limit_jobs = gr.Number(value=50, precision=0, label="Show", visible=False)
        jobs = gr.Dataframe(headers=JOB_COLUMNS, type="array", interactive=False,
                            elem_id="jobs-table", wrap=True)  # fmt: skip
        with gr.Row():
            status_id = gr.Textbox(label="Job id", elem_id="status-id")
            status_btn = gr.Button("Show", elem_id="status-btn")
        status = gr.JSON(label="Job record")
    refresh.click(h.list_jobs, [limit_jobs, token], jobs, api_name="list_jobs", **LIGHT)
    status_btn.click(h.job_status, [status_id, token], status, api_name="job_status", **LIGHT)


def pictures(record: dict[str, Any] | None) -> tuple[Any, Any]:
    """The evaluation's bar chart and the probe's curve, from its job record."""
    from app.plots import probe_frame

    result = (record or {}).get("result") or {}
    frame = probe_frame(result.get("probe"))
    curve = gr.update(value=frame, visible=frame is not None)
    return result.get("chart"), curve


def soup_api(h: Handlers) -> None:
    """``greedy_soup`` for scripts: ingredients, held-out examples path, metric, token."""

    def greedy_soup(
        models: str,
        examples: str = "",
        metric: str = "loss",
        token: str = "",
        request: gr.Request | None = None,
    ) -> Iterator[tuple[str, str, dict]]:
        """Greedy soup of `models` (one per line); returns (job id, log, job record)."""
        yield from h.greedy_soup(models, examples, metric, token, request=request)

    gr.api(greedy_soup, api_name="greedy_soup", **FOLLOW)
