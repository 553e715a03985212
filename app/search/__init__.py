"""Merge search: evaluation in the loop finds the recipe.

The space comes from the recipe (`space`), candidates are merged into a resident model and
scored in memory (`evaluator`), Optuna asks and tells without a generation barrier
(`optimizer`), in process or on Ray actors (`ray_backend`); only the winner goes through the
streamed merge (`run`). The greedy soup (`soup`) uses the same evaluator. No gradio here.
"""

from app.search.errors import BackendUnavailableError, SearchError
from app.search.evaluator import InMemoryEvaluator, examples_hash, score_folder
from app.search.fixed import fixed_recipes
from app.search.optimizer import Candidate, SearchState
from app.search.run import SearchResult, search, search_and_merge
from app.search.space import Gene, SearchSpace, space_from_recipe

__all__ = [
    "BackendUnavailableError",
    "Candidate",
    "Gene",
    "InMemoryEvaluator",
    "SearchError",
    "SearchResult",
    "SearchSpace",
    "SearchState",
    "examples_hash",
    "fixed_recipes",
    "score_folder",
    "search",
    "search_and_merge",
    "space_from_recipe",
]
