"""The app's Align job: B permuted into A's basis, and the loss barrier before vs after.

A job like merge and evaluate (no UI here): `align_models` writes the aligned copy into the
job's folder (checked function-preserving), then the interpolation probe runs A→B and
A→aligned B on the same held-out examples; the result carries both barriers as a markdown
table, one plot with both curves, and the plain "pointless" note for fine-tunes of one base.
"""

from __future__ import annotations

from typing import Any

from app.jobs import JobContext, JobRunner
from app.local_paths import LocalPathError, check_path
from app.settings import Settings
from app.workflows import InputError, _examples
from merging.io.refs import ModelRef


def _checked(name: str, settings: Settings) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("Give both models: the reference A and the model B to align.")
    if ModelRef.parse(name).local:
        try:
            check_path(name, settings)
        except LocalPathError as err:
            raise InputError(str(err)) from None
    return name


def summary_table(result: Any, barriers: dict[str, float]) -> str:
    lines = [
        f"**{result.method} matching**: objective {result.initial_objective:.6g} → "
        f"{result.final_objective:.6g} in {len(result.sweeps)} sweeps; function check "
        f"max |Δlogit| {result.check.max_abs_diff:.2g} (tolerance {result.check.tolerance:.2g}).",
        "",
        "| interpolation | loss barrier |",
        "|---|---|",
        f"| A → B | {barriers['before']:.4f} |",
        f"| A → aligned B | {barriers['after']:.4f} |",
    ]
    if result.lineage.pointless:
        lines += ["", f"**Alignment is pointless here**: {result.lineage.reason}."]
    return "\n".join(lines) + "\n"


def submit_align(
    runner: JobRunner,
    settings: Settings,
    reference: str,
    model: str,
    *,
    method: str = "weights",
    token: str | None,
    owner: str | None = None,
) -> str:
    """Queue an Align job of `owner`; its result has ``output``, ``table`` and ``plot``."""
    reference, model = _checked(reference, settings), _checked(model, settings)
    if method not in ("weights", "activations"):
        raise InputError(f"Unknown alignment method {method!r}: weights or activations.")
    examples = _examples(settings, None)

    def work(ctx: JobContext) -> dict[str, Any]:
        from evaluation.probe import compare_barriers, plot_probes
        from merging.align.run import align_models
        from merging.sources import resolve_model

        def progress(event: Any) -> None:
            ctx.progress("align", event.done, event.total, "sweeps")
            if getattr(event, "objective", None) is not None:
                ctx.log(f"sweep {event.done}: objective {event.objective:.6g}")
            ctx.check_cancelled()

        ctx.log(f"aligning {model} to {reference} ({method} matching)")
        result = align_models(
            reference, model, ctx.output_dir / "aligned", method=method, token=token,
            endpoint=settings.hub_endpoint, device=settings.device, progress=progress,
        )  # fmt: skip
        if result.lineage.pointless:
            ctx.log(f"note: alignment is pointless here: {result.lineage.reason}")
        ctx.log("interpolation probe: A → B and A → aligned B")
        path_a = resolve_model(reference, token=token, endpoint=settings.hub_endpoint).path
        path_b = resolve_model(model, token=token, endpoint=settings.hub_endpoint).path
        curves = compare_barriers(
            path_a, {"B": path_b, "aligned B": result.output}, examples,
            device="cpu" if settings.device in (None, "auto") else settings.device,
            progress=lambda done, total: ctx.progress("probe", done, total, "points"),
        )  # fmt: skip
        barriers = {"before": curves["B"].barrier, "after": curves["aligned B"].barrier}
        plot = plot_probes(curves, ctx.output_dir / "barrier.png")
        return {
            "output": str(result.output),
            "table": summary_table(result, barriers),
            "plot": str(plot),
            "barrier_before": barriers["before"],
            "barrier_after": barriers["after"],
            "pointless": result.lineage.pointless,
        }

    params = {"reference": reference, "model": model, "method": method}
    return runner.submit("align", work, owner=owner, params=params)
