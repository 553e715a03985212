"""The gr.Blocks layout: tabs in the order a user works. Layout only; logic is in handlers.

Models → Method → Merge → Evaluate → Push → Jobs. The recipe YAML (Method tab) is the single
source of truth that the merge reads; the form and the YAML update each other.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import forms, ui_align, ui_run, ui_search
from app.handlers import Handlers
from app.jobs import JobRunner, JobStore
from app.settings import Settings

LIGHT = {"concurrency_limit": None, "api_visibility": "private"}


def _param_input(field: forms.ParamField) -> gr.components.Component:
    info = "required" if field.required else f"default {field.default}"
    if field.kind == "bool":
        return gr.Checkbox(value=bool(field.default), label=field.label, info=info)
    if field.kind == "choice":
        return gr.Dropdown(list(field.choices), value=field.default, label=field.label, info=info)
    if field.kind in ("int", "float"):
        low, high = field.minimum, field.maximum
        value = field.default if field.default is not None else (low if low is not None else 0)
        if low is not None and high is not None:
            step = 1 if field.kind == "int" else 0.01
            return gr.Slider(low, high, value=value, step=step, label=field.label, info=info)
        return gr.Number(value=value, label=field.label, info=info, minimum=low, maximum=high,
                         precision=0 if field.kind == "int" else None)  # fmt: skip
    return gr.Textbox(value=field.default or "", label=field.label, info=info)


def _models_tab(h: Handlers, settings: Settings) -> dict[str, Any]:
    gr.Markdown(
        "Pick a **base model** and the **models to merge** (fine-tunes, or `base+adapter` for a "
        "LoRA adapter). Type to search the Hub, or type an id / local folder."
    )
    with gr.Row():
        base = gr.Dropdown([], value=None, label="Base model", allow_custom_value=True,
                           filterable=True, elem_id="base-model", scale=2)  # fmt: skip
        search = gr.Dropdown([], value=None, label="Search the Hub", allow_custom_value=True,
                             filterable=True, elem_id="model-search", scale=2)  # fmt: skip
        add = gr.Button("Add model", elem_id="add-model", scale=0)
    columns = forms.source_columns()
    rows = gr.Dataframe(
        headers=columns, datatype=["str"] + ["number"] * (len(columns) - 1), type="array",
        value=[], interactive=True, label="Models to merge (weight, and density where used)",
        elem_id="models-table", row_count=0,
    )  # fmt: skip
    with gr.Row():
        check_btn = gr.Button("Check compatibility", elem_id="check")
        demo_btn = gr.Button("Use the demo recipe", elem_id="demo-recipe", visible=settings.demo)
    report = gr.Code(label="Compatibility (from headers only)", language=None,
                     elem_id="compat-report", interactive=False)  # fmt: skip
    for dropdown in (base, search):
        dropdown.key_up(h.on_key_up, None, dropdown, trigger_mode="always_last", **LIGHT)
    return {"base": base, "search": search, "add": add, "rows": rows, "check": check_btn,
            "report": report, "demo": demo_btn}  # fmt: skip


def _method_tab(h: Handlers) -> dict[str, Any]:
    fields = forms.param_fields()
    inputs: list[gr.components.Component] = []
    groups = []
    with gr.Row():
        with gr.Column(scale=1):
            method = gr.Dropdown(forms.method_names(), value="task_arithmetic", label="Method",
                                 elem_id="method")  # fmt: skip
            info = gr.Markdown(forms.method_info("task_arithmetic"), elem_id="method-info")
            for name in forms.METHODS.names():
                with gr.Group(visible=(name == "task_arithmetic")) as group:
                    for field in fields:
                        if field.method == name:
                            inputs.append(_param_input(field))
                groups.append(group)
            with gr.Group(visible=False) as soup_box:
                soup_examples = gr.Textbox(label="Held-out examples (jsonl path; blank: default)")
                soup_metric = gr.Dropdown(["loss", "exact_match", "multiple_choice"],
                                          value="loss", label="Soup metric")  # fmt: skip
        with gr.Column(scale=1):
            recipe = gr.Code(label="Recipe YAML (edit, or paste a mergekit YAML)",
                             language="yaml", interactive=True, elem_id="recipe-yaml")  # fmt: skip
    return {"method": method, "info": info, "inputs": inputs, "groups": groups,
            "soup_box": soup_box, "soup_examples": soup_examples, "soup_metric": soup_metric,
            "recipe": recipe}  # fmt: skip


def _wire_recipe(h: Handlers, m: dict[str, Any], r: dict[str, Any], token: Any) -> None:
    form = [r["recipe"], r["method"], m["base"], m["rows"], *r["inputs"]]
    to_yaml: dict[str, Any] = {
        "fn": h.form_to_yaml,
        "inputs": form,
        "outputs": r["recipe"],
        **LIGHT,
    }
    method_outputs = [r["info"], r["soup_box"], *r["groups"]]
    r["method"].input(h.method_changed, r["method"], method_outputs, **LIGHT).then(**to_yaml)
    m["base"].input(**to_yaml)
    m["rows"].input(**to_yaml)
    for component in r["inputs"]:
        component.input(**to_yaml)
    m["add"].click(h.add_model, [m["rows"], m["search"]], m["rows"], **LIGHT).then(**to_yaml)
    r["recipe"].input(
        h.yaml_to_form, r["recipe"], [r["method"], m["base"], m["rows"], *r["inputs"]],
        trigger_mode="always_last", **LIGHT,
    ).then(h.method_changed, r["method"], method_outputs, **LIGHT)  # fmt: skip
    r["recipe"].change(h.preview_check, [r["recipe"], token], m["report"],
                       trigger_mode="always_last", **LIGHT)  # fmt: skip
    m["check"].click(h.check, [r["recipe"], token], m["report"], api_name="check",
                     concurrency_limit=None)  # fmt: skip
    m["demo"].click(demo_recipe, None, r["recipe"], **LIGHT).then(
        h.yaml_to_form, r["recipe"], [r["method"], m["base"], m["rows"], *r["inputs"]], **LIGHT
    ).then(h.method_changed, r["method"], method_outputs, **LIGHT)


def demo_recipe() -> str:
    """The demo's default recipe: its two skill fine-tunes as task vectors on its base."""
    from app.demo import DEFAULT_RECIPE

    return DEFAULT_RECIPE


def build_demo(settings: Settings, runner: JobRunner | None = None) -> gr.Blocks:
    """Build the app (nothing is launched or downloaded here)."""
    if runner is None:
        from app.handlers import user_errors

        store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
        runner = JobRunner(
            store, concurrency=settings.concurrency, user_errors=user_errors(),
            max_queued=settings.max_queued, keep_hours=settings.keep_hours,
        )  # fmt: skip
    h = Handlers(settings, runner)
    with gr.Blocks(title="hubmerge") as demo:
        with gr.Row():
            gr.Markdown("# hubmerge\nMerge models from the Hub, evaluate the merge, push it back.")
            if settings.on_spaces:
                gr.LoginButton()
        token = gr.Textbox(
            value=settings.default_token or "", type="password", elem_id="hub-token",
            label="Hub token (used for this session's requests only; never stored)",
            visible=not settings.on_spaces,
        )  # fmt: skip
        if settings.demo:
            how = (
                "sign in, authorizing with the demo token `hf_demo_local_token`"
                if settings.on_spaces
                else "the pre-filled demo token"
            )
            gr.Markdown(
                "**Offline demo**: a local Hub with `demo/tiny-*` models; try searching `tiny`. "
                f"Push to `demo/<name>` with {how}."
            )
        with gr.Tabs():
            with gr.Tab("1 · Models", id="models"):
                models = _models_tab(h, settings)
            with gr.Tab("2 · Method", id="method"):
                method = _method_tab(h)
            _wire_recipe(h, models, method, token)
            ui_search.render(h, settings, method=method, token=token)
            ui_run.render(h, settings, method=method, token=token)
            ui_align.render(h, settings, token=token)
        gr.api(h.search_models, api_name="search_models", concurrency_limit=None)
        ui_run.soup_api(h)
    demo.runner = runner  # type: ignore[attr-defined]
    return demo
