"""hubmerge's merge engine: recipes, methods, streaming I/O. Never imports gradio or evaluation."""

from merging.align.run import AlignmentResult, align_models
from merging.engine import MergeOptions, MergeResult, Progress, merge
from merging.errors import MergeError, RecipeError
from merging.methods import METHODS, get_method
from merging.recipe import Recipe, Slice, SliceSource, SourceSpec
from merging.validate import load_recipe, parse_recipe

__all__ = [
    "METHODS",
    "AlignmentResult",
    "MergeError",
    "MergeOptions",
    "MergeResult",
    "Progress",
    "Recipe",
    "RecipeError",
    "Slice",
    "SliceSource",
    "SourceSpec",
    "align_models",
    "get_method",
    "load_recipe",
    "merge",
    "parse_recipe",
]
