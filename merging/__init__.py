"""hubmerge's merge engine: recipes, methods, streaming I/O. Never imports gradio or evaluation."""

from merging.engine import MergeOptions, MergeResult, Progress, merge
from merging.errors import MergeError, RecipeError
from merging.methods import METHODS, get_method
from merging.recipe import Recipe, SourceSpec, load_recipe, parse_recipe

__all__ = [
    "METHODS",
    "MergeError",
    "MergeOptions",
    "MergeResult",
    "Progress",
    "Recipe",
    "RecipeError",
    "SourceSpec",
    "get_method",
    "load_recipe",
    "merge",
    "parse_recipe",
]
