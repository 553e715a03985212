"""The Try step: one prompt to the merge and, side by side, to its base and each input.

Layout and wiring here; generation and the model cache are in `app.generate`. Models stay
loaded between prompts and are released when idle. The ``generate`` API endpoint does the
same for scripts and streams label → text dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.generate import GenerationSettings, ModelCache, job_models, side_by_side
from app.handlers import Handlers, _token, user_facing
from app.settings import Settings

SLOTS = 6  # the merge, the base and up to four inputs
GENERATE = {"concurrency_limit": 2, "concurrency_id": "generate"}
DEMO_PROMPTS = ["double 7 is", "the cow says", "a lion says", "double 12 is"]


class TryStep:
    """Handlers of the Try step, bound to the app's handlers (settings, jobs, callers) and a
    model cache."""

    def __init__(self, h: Handlers, cache: ModelCache | None = None) -> None:
        self.h = h
        self.settings = h.settings
        self.cache = cache or ModelCache(device=h.settings.device or "auto")

    def stream(
        self,
        merge_job: str,
        prompt: str,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        stop: str,
        token: str | None,
        owner: str,
    ) -> Iterator[dict[str, str]]:
        """Label → text so far, for the merge, its base and each input in turn."""
        with user_facing():
            if not (prompt or "").strip():
                from app.workflows import InputError

                raise InputError("Type a prompt first.")
            settings = GenerationSettings(
                max_new_tokens=int(max_new_tokens or 64), temperature=float(temperature or 0),
                top_p=float(top_p or 1.0), stop=stop or "",
            )  # fmt: skip
            models = job_models(self.h.store, (merge_job or "").strip(), owner=owner,
                                token=token, endpoint=self.settings.hub_endpoint)  # fmt: skip
            yield from side_by_side(self.cache, models, prompt, settings)

    def ui(
        self,
        merge_job: str,
        prompt: str,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        stop: str,
        token: str | None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[list[Any]]:
        """The stream as updates of the output boxes (labelled, unused ones hidden)."""
        owner = self.h.caller(token, oauth_token, request)
        user_token = _token(token, oauth_token)
        for texts in self.stream(merge_job, prompt, max_new_tokens, temperature, top_p, stop,
                                 user_token, owner):  # fmt: skip
            labels = list(texts)[:SLOTS]
            yield [
                gr.update(label=labels[i], value=texts[labels[i]], visible=True)
                if i < len(labels)
                else gr.update(visible=False)
                for i in range(SLOTS)
            ]


def render(h: Handlers, settings: Settings, *, merge_job: Any, token: Any) -> TryStep:
    """The Try tab; its merge job id follows the Merge tab's."""
    step = TryStep(h)
    with gr.Tab("4 · Try", id="try"):
        gr.Markdown(
            "Talk to the merge before pushing it: the prompt goes to the merge and, side by "
            "side, to its base and each input (greedy decoding unless you raise the "
            "temperature; the chat template is applied when the tokenizer has one). Models stay "
            "loaded between prompts."
        )
        job = gr.Textbox(label="Merge job id", elem_id="try-merge-job")
        hint = DEMO_PROMPTS[0] if settings.demo else "Ask something"
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="try-prompt", placeholder=hint)
        if settings.demo:
            gr.Examples([[p] for p in DEMO_PROMPTS], inputs=prompt, label="Demo prompts")
        with gr.Accordion("Sampling", open=False), gr.Row():
            max_new = gr.Slider(1, 512, value=24 if settings.demo else 128, step=1,
                                label="Max new tokens")  # fmt: skip
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0: greedy)")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (sampling)")
            stop = gr.Textbox(value="." if settings.demo else "", label="Stop at (blank: none)")
        button = gr.Button("Generate", variant="primary", elem_id="try-btn")
        boxes = []
        for row in range(SLOTS // 3):
            with gr.Row():
                for column in range(3):
                    index = row * 3 + column
                    boxes.append(gr.Textbox(label="merge" if index == 0 else f"model {index}",
                                            lines=4, interactive=False, visible=index == 0,
                                            elem_id=f"try-out-{index}"))  # fmt: skip
    merge_job.change(lambda value: value, merge_job, job, api_visibility="private",
                     concurrency_limit=None)  # fmt: skip
    inputs = [job, prompt, max_new, temperature, top_p, stop, token]
    for event in (button.click, prompt.submit):
        event(step.ui, inputs, boxes, api_visibility="private", **GENERATE)

    def generate(
        merge_job: str,
        prompt: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str = "",
        token: str = "",
        request: gr.Request = None,  # type: ignore[assignment]  # injected by gradio
    ) -> Iterator[dict[str, str]]:
        """Talk to a merge: the prompt goes to the merge, its base and each input in turn.

        Args:
            merge_job: the id of a finished merge job (what `merge` returned).
            prompt: the text to continue (the chat template is applied when there is one).
            max_new_tokens: tokens to generate per model.
            temperature: 0 for greedy decoding, > 0 to sample.
            top_p: nucleus sampling mass (sampling only).
            stop: stop a model's text once it contains this string (blank: no stop string).
            token: a Hub token that can read the base and input models (and owns the job).

        Returns:
            label → text so far (`merge`, `base`, then each input), streamed.
        """
        user_token = (token or "").strip() or None
        owner = step.h.caller(user_token, None, request)
        yield from step.stream(merge_job, prompt, max_new_tokens, temperature, top_p, stop,
                               user_token, owner)  # fmt: skip

    gr.api(generate, api_name="generate", **GENERATE)
    return step
