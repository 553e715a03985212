"""Alignment (Git Re-Basin): permute a model into another's basis without changing its function.

`merging.align.run.align_models` is the entry point (also exported as `merging.align_models`);
the recipe's ``align:`` block is `AlignSettings` and runs through `merging.align.recipe_step`.
This package's ``__init__`` imports only the settings, so that `merging.recipe` can use them
without importing the aligner (which imports the sources, which import the recipe).
"""

from merging.align.settings import AlignSettings

__all__ = ["AlignSettings"]
