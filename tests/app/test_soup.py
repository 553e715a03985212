"""Greedy soup: a helpful ingredient is kept, a harmful (noisy) one is rejected."""

from __future__ import annotations

import pytest

from app.soup import greedy_soup, soup_recipe
from merging.errors import RecipeError

pytestmark = pytest.mark.slow


def test_soup_keeps_good_and_rejects_noisy(tmp_path, demo_models):
    from evaluation.scoring import load_examples

    models = demo_models.models
    ingredients = [str(models[n]) for n in ("tiny-noisy", "tiny-math", "tiny-animals")]
    result = greedy_soup(ingredients, load_examples(demo_models.examples),
                         output=tmp_path / "soup", metric="loss")  # fmt: skip
    noisy, math = ingredients[0], ingredients[1]
    # ordered by individual score: the noisy model is worst, so it is tried last
    assert result.steps[-1].ingredient == noisy
    assert not result.steps[-1].kept
    assert noisy not in result.members
    assert math in result.members  # the best on arithmetic starts the soup
    assert result.individual[noisy] > result.individual[math]
    assert result.score <= min(result.individual.values()) + 1e-9
    assert (tmp_path / "soup" / "model.safetensors.index.json").exists() or any(
        (tmp_path / "soup").glob("*.safetensors")
    )
    assert result.recipe.merge_method == "linear"
    assert [s.model for s in result.recipe.models] == list(result.members)
    assert "rejected" in result.describe()
    assert not list(tmp_path.glob(".soup-*"))  # candidates cleaned up


def test_soup_needs_two_ingredients(tmp_path):
    with pytest.raises(RecipeError, match="two"):
        greedy_soup(["a/b", "a/b"], [], output=tmp_path / "x")


def test_soup_recipe_is_uniform_linear():
    recipe = soup_recipe(["org/a", "org/b"])
    assert recipe.merge_method == "linear"
    assert [s.model for s in recipe.models] == ["org/a", "org/b"]
    assert all(not s.parameters for s in recipe.models)
