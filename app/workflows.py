"""The app's jobs, without any UI: merge, greedy soup, evaluate (push: `app.push`).

Each ``submit_*`` validates what it can up front (raising `InputError` or a `MergeError`
the user can act on), then hands a work function to the `JobRunner`. The user's token is a
closure variable of that function only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from app import forms
from app.jobs import JobContext, JobRunner, JobStore
from app.local_paths import LocalPathError, check_path, check_recipe_paths
from app.settings import Settings
from merging import MergeOptions, Progress, Recipe, load_recipe, merge

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


class InputError(ValueError):
    """A form value the user must fix (missing token, unknown job, bad repo name, …)."""


def parse(text: str, settings: Settings) -> Recipe:
    """Parse recipe YAML; refuse local folders the app may not read (`app.local_paths`)."""
    if not (text or "").strip():
        raise InputError("The recipe is empty: add models (step 1) and pick a method (step 2).")
    recipe = load_recipe(text if "\n" in text else text + "\n")
    try:
        check_recipe_paths(recipe, settings)
    except LocalPathError as err:
        raise InputError(str(err)) from None
    return recipe


def _examples(settings: Settings, path: str | None) -> list[Any]:
    from evaluation.scoring import load_examples

    if path:
        try:
            return load_examples(check_path(path, settings, what="Local example files"))
        except LocalPathError as err:
            raise InputError(str(err)) from None
    if settings.probe_examples is not None:
        return load_examples(settings.probe_examples)
    return load_examples(Path(__file__).with_name("heldout_examples.jsonl"))


def submit_merge(
    runner: JobRunner,
    settings: Settings,
    text: str,
    *,
    token: str | None,
    examples: str | None = None,
    metric: str = "loss",
    owner: str | None = None,
) -> str:
    """Start a merge job of `owner` (a greedy-soup job when the YAML carries the soup note)."""
    recipe = parse(text, settings)
    if forms.is_soup(text):
        return _submit_soup(runner, settings, recipe, token=token, examples=examples,
                            metric=metric, owner=owner)  # fmt: skip
    delay = settings.tensor_delay

    def work(ctx: JobContext) -> dict[str, Any]:
        from app.disk_space import ensure_disk_space, needed_bytes

        ctx.progress("check disk space", 0, 1)
        sizes = needed_bytes(recipe, token=token, endpoint=settings.hub_endpoint)
        if sizes is not None:
            ensure_disk_space(ctx.output_dir, *sizes, reserve_bytes=settings.disk_reserve_bytes)
            ctx.log(f"disk: {sizes[0] / 1e6:.2f} MB output, {sizes[1] / 1e6:.2f} MB downloads")
        ctx.check_cancelled()
        ctx.log(f"merging with {recipe.merge_method}: {len(recipe.models)} model(s)")

        def report(event: Progress) -> None:
            unit = "models" if event.stage == "download" else "tensors"
            detail = (f"{event.bytes_done / 1e6:.2f}/{event.bytes_total / 1e6:.2f} MB"
                      if event.bytes_total else "")  # fmt: skip
            ctx.progress(event.stage, event.done, event.total, unit, detail=detail)
            if event.stage == "merge" and delay:
                time.sleep(delay)

        result = merge(
            recipe,
            ctx.output_dir / "merged",
            options=MergeOptions(
                progress=report, cancel=ctx.cancel, token=token,
                endpoint=settings.hub_endpoint, device=settings.device,
            ),
        )  # fmt: skip
        ctx.log(result.report.render())
        ctx.log(f"wrote {result.tensors} tensors ({result.bytes_written / 1e6:.2f} MB) "
                f"in {result.seconds:.1f} s")  # fmt: skip
        return {
            "output": str(result.output),
            "tensors": result.tensors,
            "bytes": result.bytes_written,
            "resolved": result.resolved,
        }

    return runner.submit("merge", work, owner=owner, recipe=recipe.to_yaml())


def _submit_soup(
    runner: JobRunner,
    settings: Settings,
    recipe: Recipe,
    *,
    token: str | None,
    examples: str | None,
    metric: str,
    owner: str | None,
) -> str:
    from app.soup import greedy_soup

    rows = _examples(settings, examples)
    ingredients = [s.model + (f"+{s.adapter}" if s.adapter else "") for s in recipe.models]

    def work(ctx: JobContext) -> dict[str, Any]:
        ctx.log(f"greedy soup of {len(ingredients)} ingredient(s), scored by {metric}")
        result = greedy_soup(
            ingredients, rows, output=ctx.output_dir / "merged", metric=metric,
            template=recipe, token=token, endpoint=settings.hub_endpoint,
            device=settings.device or "cpu", cancel=ctx.cancel, log=ctx.log,
            progress=lambda done, total: ctx.progress("soup", done, total, "steps"),
        )  # fmt: skip
        ctx.log(result.describe())
        return {"output": str(result.output), "soup": result.to_dict()}

    params = {"soup": True, "metric": metric}
    return runner.submit("merge", work, owner=owner, recipe=forms.SOUP_NOTE + recipe.to_yaml(),
                         params=params)  # fmt: skip


def merge_record(store: JobStore, job_id: str, *, owner: str | None) -> tuple[Any, Recipe, Path]:
    """The finished merge job `job_id` of `owner`, its recipe and output folder.

    Args:
        owner (`str` or `None`): the caller's identity; another identity's job is refused
            exactly like an unknown id. `None` only for the operator (any owner).
    """
    job_id = (job_id or "").strip()
    if not job_id:
        record = None
    else:
        record = store.get(job_id) if owner is None else store.get_owned(job_id, owner)
    if record is None or record.kind != "merge":
        raise InputError(f"No merge job {job_id!r}: run a merge first (step 3) or pick a job id.")
    if record.expired is not None:
        raise InputError(f"Merge job {job_id}'s output was removed when it expired "
                         "(HUBMERGE_KEEP_HOURS); run the merge again.")  # fmt: skip
    if record.state != "succeeded" or not record.output or not Path(record.output).is_dir():
        raise InputError(f"Merge job {job_id} has no output (state: {record.state}).")
    text = (record.recipe or "").replace(forms.SOUP_NOTE, "")
    if record.result and record.result.get("soup"):
        text = record.result["soup"]["recipe"]
    return record, load_recipe(text), Path(record.output)


def submit_evaluate(
    runner: JobRunner,
    settings: Settings,
    merge_job: str,
    *,
    suite: str | None,
    tasks: str | None,
    limit: int | None,
    plot: bool,
    token: str | None,
    owner: str | None,
) -> str:
    """Evaluate base / inputs / merge of a merge job of `owner` on the same items."""
    from evaluation.harness import EvalOptions

    _, recipe, merged = merge_record(runner.store, merge_job, owner=owner)
    common: dict[str, Any] = {
        "include_paths": tuple(settings.eval_include_paths),
        "device": settings.device or "auto",
    }
    if limit:
        common["limit"] = limit
    task_names = tuple(t.strip() for t in (tasks or "").replace("\n", ",").split(",") if t.strip())
    if task_names:
        options = EvalOptions(tasks=task_names, **common)
    elif suite:
        options = EvalOptions.from_suite(suite, **common)
    else:
        raise InputError("Choose a suite or type harness task names.")
    labelled: dict[str, str] = {}
    if recipe.base_model:
        labelled["base"] = recipe.base_model
    for spec in recipe.inputs() if recipe.base_model else recipe.models:
        if spec.adapter is None and spec.model not in labelled.values():
            labelled[Path(spec.model).name or spec.model] = spec.model
    examples = _examples(settings, None) if plot else None
    probe_from = recipe.base_model or recipe.models[0].model

    def work(ctx: JobContext) -> dict[str, Any]:
        from evaluation.harness import build_task_manager, evaluate_model, harness_version
        from evaluation.report import Report, comparison_table, save_report
        from merging.sources import resolve_model

        paths = {}
        for label, name in labelled.items():
            paths[label] = str(resolve_model(name, token=token,
                                             endpoint=settings.hub_endpoint).path)  # fmt: skip
        paths["merge"] = str(merged)
        manager = build_task_manager(options)
        results = []
        for index, (label, path) in enumerate(paths.items()):
            ctx.progress("evaluate", index, len(paths), "models")
            ctx.log(f"evaluating {label} on {', '.join(options.tasks)}")
            results.append(evaluate_model(path, options, label=label, task_manager=manager))
            ctx.check_cancelled()
        ctx.progress("evaluate", len(paths), len(paths), "models")
        report = Report(harness_version=harness_version(), models=results)
        save_report(report, ctx.output_dir / "report.json")
        out: dict[str, Any] = {
            "output": str(ctx.output_dir),
            "table": comparison_table(report),
            "report": report.model_dump(mode="json"),
            "merge_job": merge_job,
            "chart": _chart(ctx, report),
        }
        if plot:
            out["plot"], out["probe"] = _probe(ctx, paths[_label_of(paths, probe_from, labelled)],
                                               str(merged), examples)  # fmt: skip
        return out

    params = {"suite": suite, "tasks": list(options.tasks), "limit": options.limit, "plot": plot}
    return runner.submit("evaluate", work, owner=owner, params=params, parent=merge_job)


def _label_of(paths: dict[str, str], name: str, labelled: dict[str, str]) -> str:
    return next((label for label, ref in labelled.items() if ref == name), "merge")


def _chart(ctx: JobContext, report: Any) -> str | None:
    """The results' bar chart, saved beside ``report.json`` (none when nothing was scored)."""
    from evaluation.errors import EvaluationError
    from evaluation.plots import plot_report

    try:
        return str(plot_report(report, ctx.output_dir / "scores.png"))
    except EvaluationError:
        return None


def _probe(ctx: JobContext, start: str, end: str, examples: Any) -> tuple[str, list[Any]]:
    from evaluation.probe import interpolation_probe, plot_probe

    ctx.log("interpolation probe: loss along base → merge")
    result = interpolation_probe(
        start, end, examples, alphas=[i / 6 for i in range(7)], device="cpu",
        progress=lambda done, total: ctx.progress("probe", done, total, "points"),
    )  # fmt: skip
    return str(plot_probe(result, ctx.output_dir / "interpolation.png")), result.rows()


def latest_evaluation(store: JobStore, merge_job: str) -> Any:
    for record in store.list(limit=200, kind="evaluate"):
        if record.parent == merge_job and record.state == "succeeded" and record.result:
            return record
    return None


def _results_rows(store: JobStore, merge_job: str) -> list[dict[str, Any]]:
    from evaluation.report import Report, report_to_model_index

    record = latest_evaluation(store, merge_job)
    if record is None:
        return []
    report = Report.model_validate(record.result["report"])
    return report_to_model_index(report, label="merge")


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
