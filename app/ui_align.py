"""The Align tab: permute model B into model A's basis, and show the barrier before vs after
(layout, one handler; the job itself is `app.align_step`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from app import align_step
from app.handlers import Handlers, _token, public, user_facing
from app.jobs import JobRecord
from app.settings import Settings

FOLLOW = {"concurrency_limit": 32, "concurrency_id": "follow"}


def make_handler(h: Handlers) -> Any:
    def align(
        reference: str,
        model: str,
        method: str,
        token: str | None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio's injection idiom
    ) -> Iterator[tuple[str, str, str | None, dict[str, Any]]]:
        """Permute model B into model A's basis (Git Re-Basin), function-preserving (a job).

        Args:
            reference: model A (Hub id or, where allowed, a local folder), whose basis is kept.
            model: model B, the one permuted (same architecture and shapes as A).
            method: `weights` (weight matching) or `activations` (activation matching).
            token: a Hub token that can read both models (blank for public models).

        Returns:
            the job id, a markdown summary (barrier A→B and A→aligned B), the plot, the record.
        """
        with user_facing():
            job_id = align_step.submit_align(
                h.runner, h.settings, reference, model, method=method or "weights",
                token=_token(token, oauth_token), owner=h.caller(token, oauth_token, request),
            )  # fmt: skip

        def render(record: JobRecord) -> tuple[str, str, str | None, dict[str, Any]]:
            result = record.result or {}
            table = result.get("table") or record.log or ""
            return record.id, table, result.get("plot"), public(record)

        yield from h._follow(job_id, progress, render)

    return align


def render(h: Handlers, settings: Settings, *, token: Any) -> None:
    """The Align tab (an optional step before merging models trained from different inits)."""
    with gr.Tab("Align", id="align"):
        gr.Markdown(
            "For models trained from **different initializations**: permute B's hidden units "
            "into A's basis (it computes exactly the same function), then merge A with the "
            "aligned B. Fine-tunes of one base are already aligned. Shows the loss barrier "
            "along A→B and A→aligned B."
        )
        with gr.Row():
            reference = gr.Textbox(label="Reference model A", elem_id="align-reference")
            model = gr.Textbox(label="Model B to align", elem_id="align-model")
            method = gr.Dropdown(["weights", "activations"], value="weights", label="Method",
                                 elem_id="align-method")  # fmt: skip
        button = gr.Button("Align", variant="primary", elem_id="align-btn")
        job = gr.Textbox(label="Align job id", elem_id="align-job")
        summary = gr.Markdown(elem_id="align-summary")
        image = gr.Image(label="Barrier before vs after", type="filepath", elem_id="align-plot")
        with gr.Accordion("Job record", open=False):
            record = gr.JSON(label="Job")
    button.click(
        make_handler(h), [reference, model, method, token], [job, summary, image, record],
        api_name="align", **FOLLOW,
    )  # fmt: skip
