"""The recipe's ``align: {to: base}`` step: align every other source, then merge the copies.

Every source other than the target (``base``: the recipe's base model, or a named model) is
permuted into the target's basis with `align_models` into a hidden work folder beside the
output; the recipe's sources are rewritten to those copies and merged as usual; the card and
``hubmerge_recipe.yaml`` of the output then carry the original recipe (with its ``align``
block), an Alignment section and ``alignment.json``. The work folder is removed afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merging.align.run import align_models
from merging.errors import MergeCancelled, RecipeError
from merging.outputs import RECIPE_FILE

if TYPE_CHECKING:
    from merging.engine import MergeOptions, MergeResult
    from merging.recipe import Recipe

    MergeFunction = Callable[..., MergeResult]

logger = logging.getLogger(__name__)


def align_target(recipe: Recipe) -> tuple[str, list[str]]:
    """The model everything is aligned to, and the sources to align (in recipe order).

    Raises:
        `RecipeError`: ``to: base`` without a base model, a target that is not a source,
            adapters or slices (not supported with alignment).
    """
    assert recipe.align is not None
    if getattr(recipe, "slices", None):
        raise RecipeError("align: is not supported together with slices:")
    if any(s.adapter for s in recipe.models):
        raise RecipeError("align: cannot permute LoRA adapter sources; merge the adapter first")
    names = list(dict.fromkeys([*([recipe.base_model] if recipe.base_model else []),
                                *(s.model for s in recipe.models)]))  # fmt: skip
    target = recipe.base_model if recipe.align.to == "base" else recipe.align.to
    if target is None:
        raise RecipeError("align.to is 'base' but the recipe has no base_model")
    if target not in names:
        raise RecipeError(f"align.to {target!r} is not one of the recipe's models: {names}")
    return target, [n for n in names if n != target]


def _rewrite(recipe: Recipe, mapping: dict[str, str]) -> Recipe:
    models = [s.model_copy(update={"model": mapping.get(s.model, s.model)}) for s in recipe.models]
    update: dict[str, Any] = {"align": None, "models": models}
    if recipe.base_model:
        update["base_model"] = mapping.get(recipe.base_model, recipe.base_model)
    if recipe.tokenizer_source in mapping:
        update["tokenizer_source"] = mapping[recipe.tokenizer_source]
    return recipe.model_copy(update=update)


def _replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.hubmerge-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def alignment_section(target: str, records: list[dict[str, Any]]) -> str:
    lines = [
        "## Alignment",
        "",
        f"Before merging, every other source was permuted into the basis of `{target}` "
        "(Git Re-Basin, https://arxiv.org/abs/2209.04836); each aligned copy computes the same "
        "function as its source (checked on fixed token sequences).",
        "",
        "| source | method | objective before → after | sweeps | max abs Δlogit | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| `{r['model']}` | {r['method']} | {r['objective_before']:.6g} → "
            f"{r['objective_after']:.6g} | {r['sweeps']} | {r['max_abs_logit_diff']:.2g} | "
            f"{r['lineage']} |"
        )
    return "\n".join(lines) + "\n"


def _record_in_output(
    output: Path, recipe: Recipe, rewritten: Recipe, target: str, records: list[dict[str, Any]],
    mapping: dict[str, str],
) -> None:  # fmt: skip
    card = output / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        text = text.replace(rewritten.to_yaml().rstrip(), recipe.to_yaml().rstrip())
        for name, folder in mapping.items():
            text = text.replace(folder, f"{name} (aligned)")
        marker = "## Recipe"
        section = alignment_section(target, records)
        text = (
            text.replace(marker, section + "\n" + marker, 1) if marker in text else text + section
        )
        _replace_file(card, text)
    if (output / RECIPE_FILE).is_file():
        _replace_file(output / RECIPE_FILE, recipe.to_yaml())
    _replace_file(output / "alignment.json", json.dumps({"target": target, "sources": records},
                                                        indent=1) + "\n")  # fmt: skip


def merge_aligned(
    recipe: Recipe, output: Path | str, *, options: MergeOptions, merge: MergeFunction
) -> MergeResult:
    """Run a recipe with an ``align:`` block (see the module docstring).

    ``merge`` is the engine's own merge function, handed in by the engine (this module never
    imports the engine): it is called once, on the recipe rewritten to the aligned copies.
    """
    settings = recipe.align
    assert settings is not None
    target, others = align_target(recipe)
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.hubmerge-aligned-", dir=output.parent))
    mapping: dict[str, str] = {}
    records: list[dict[str, Any]] = []

    def cancelled() -> None:
        if options.cancel is not None and options.cancel.is_set():
            raise MergeCancelled(f"merge into {output} cancelled while aligning; nothing written")

    def progress(event: Any) -> None:  # cancellation is honoured after every sweep
        cancelled()
        if options.progress is not None:
            options.progress(event)

    try:
        for index, name in enumerate(others):
            cancelled()
            result = align_models(
                target, name, work / f"source-{index}", method=settings.method,
                examples=settings.examples, max_iter=settings.max_iter,
                seed=recipe.seed if settings.seed is None else settings.seed,
                device=options.device, token=options.token, endpoint=options.endpoint,
                progress=progress,
            )  # fmt: skip
            mapping[name] = str(result.output)
            records.append(
                {
                    "model": name,
                    "pinned": result.model,
                    "method": result.method,
                    "objective_before": result.initial_objective,
                    "objective_after": result.final_objective,
                    "sweeps": len(result.sweeps),
                    "identity": result.identity,
                    "max_abs_logit_diff": result.check.max_abs_diff,
                    "lineage": result.lineage.reason,
                }
            )
            if result.lineage.pointless:
                logger.warning("%s: %s", name, result.lineage.reason)
        rewritten = _rewrite(recipe, mapping)
        merged = merge(rewritten, output, options=options)
        _record_in_output(merged.output, recipe, rewritten, target, records, mapping)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return merged
