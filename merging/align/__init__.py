"""Alignment (Git Re-Basin): permute a model into another's basis without changing its function.

`align_models` is the entry point (`merging.align.run`); the recipe's ``align:`` block is
`AlignSettings` and runs through `merging.align.recipe_step`. Heavy modules load on use, so
`merging.recipe` can import the settings without importing the engine.
"""

from __future__ import annotations

from typing import Any

from merging.align.settings import AlignSettings

__all__ = ["AlignSettings", "AlignmentResult", "align_models"]


def __getattr__(name: str) -> Any:
    if name in ("align_models", "AlignmentResult"):
        from merging.align import run

        return getattr(run, name)
    raise AttributeError(name)
