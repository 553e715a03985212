"""Merge a LoRA adapter into its base as a full model (PEFT's ``merge_and_unload``, streamed).

The adapter source never calls the engine: this module builds the one-source recipe and hands it
to the engine, like any other merge.
"""

from __future__ import annotations

from pathlib import Path

from merging.engine import MergeOptions, MergeResult, merge
from merging.recipe import Recipe
from merging.validate import parse_recipe


def merge_into_base_recipe(base: str | Path, adapter: str | Path) -> Recipe:
    """The recipe that writes ``base`` with ``adapter`` applied: W + s·B·A for every adapted
    weight, every other tensor copied (a `linear` merge of the single source base+adapter)."""
    return parse_recipe(
        {"merge_method": "linear", "models": [{"model": str(base), "adapter": str(adapter)}]}
    )


def merge_into_base(
    base: str | Path,
    adapter: str | Path,
    output: str | Path,
    *,
    options: MergeOptions | None = None,
) -> MergeResult:
    """Write base + adapter as a full model, streamed tensor by tensor.

    Example:
        >>> merge_into_base("org/base", "org/lora", "out/merged")  # doctest: +SKIP
    """
    return merge(merge_into_base_recipe(base, adapter), output, options=options)


__all__ = ["merge_into_base", "merge_into_base_recipe"]
