"""The search space: genes from the recipe, bounded, scaled to the budget; decode ∘ encode."""

from __future__ import annotations

import pytest
import torch

from app.search.errors import SearchError
from app.search.fixed import fixed_recipes
from app.search.space import (
    Layout,
    SearchSpace,
    inverse_stick_breaking,
    space_from_recipe,
    stick_breaking,
)
from merging import parse_recipe


def _recipe(method: str, n: int = 2, **parameters: object):
    data: dict = {"merge_method": method, "models": [{"model": f"org/ft-{i}"} for i in range(n)]}
    if method != "linear":
        data["base_model"] = "org/base"
    if parameters:
        data["parameters"] = parameters
    return parse_recipe(data)


def test_stick_breaking_is_a_bijection_onto_the_simplex():
    genes = [0.3, 0.5, 0.9]
    weights = stick_breaking(genes)
    assert len(weights) == 4
    assert sum(weights) == pytest.approx(1.0)
    assert all(w >= 0 for w in weights)
    assert inverse_stick_breaking(weights) == pytest.approx(genes)
    assert stick_breaking(inverse_stick_breaking([1, 1, 1, 1])) == pytest.approx([0.25] * 4)


def test_genes_scale_with_the_budget():
    recipe = _recipe("ties", n=3, density=0.5)
    small = space_from_recipe(recipe, budget=16)
    medium = space_from_recipe(recipe, budget=64)
    large = space_from_recipe(recipe, budget=96)
    assert [g.name for g in small.genes] == ["lambda", "density"]
    assert len(medium) <= 64 // 8
    assert {"weight[0]", "weight[2]", "lambda", "density[1]"} <= {g.name for g in medium.genes}
    assert len(medium) < len(large) <= 96 // 8
    assert {"weight[0]@early", "weight[2]@late"} <= {g.name for g in large.genes}  # layer groups
    assert len(space_from_recipe(recipe, budget=4)) >= 1  # the smallest space, never empty


def test_soup_weights_lie_on_the_simplex():
    space = space_from_recipe(_recipe("linear", n=3), budget=16)
    assert [g.name for g in space.genes] == ["simplex[0]", "simplex[1]"]
    recipe = space.decode([0.5, 0.5])
    weights = [s.parameters["weight"] for s in recipe.models]
    assert weights == pytest.approx([0.5, 0.25, 0.25])
    assert all(g.low == 0 and g.high == 1 for g in space.genes)


def test_decode_then_encode_round_trips():
    recipe = _recipe("ties", n=2, density=0.5)
    space = SearchSpace(recipe, Layout(weights="free", lambda_=True, density="per_model",
                                       groups=2))  # fmt: skip
    genome = [0.2, 1.1, 0.9, 0.4, 1.3, 0.7, 0.35]
    assert [g.name for g in space.genes][:4] == [
        "weight[0]@early", "weight[1]@early", "weight[0]@late", "weight[1]@late"]  # fmt: skip
    decoded = space.decode(genome)
    assert decoded.models[0].parameters["weight"] == [0.2, 0.9]
    assert decoded.parameters["lambda"] == 1.3
    assert space.encode(decoded) == pytest.approx(genome)


def test_encode_refuses_what_lies_outside_the_space():
    recipe = _recipe("task_arithmetic", n=2)
    space = space_from_recipe(recipe, budget=16)
    assert [g.name for g in space.genes] == ["weight[0]", "weight[1]"]  # λ is carried by weights
    assert space.encode(_recipe("ties", n=2)) is None  # another method
    assert space.encode(_recipe("task_arithmetic", n=2, **{"lambda": 0.5})) == [0.5, 0.5]
    too_far = parse_recipe({**recipe.model_dump(mode="json", exclude_defaults=True),
                            "merge_method": "task_arithmetic",
                            "parameters": {"weights": [3.0, 1.0]}})  # fmt: skip
    assert space.encode(too_far) is None  # out of bounds: not folded back


def test_slerp_searches_t():
    recipe = parse_recipe({"merge_method": "slerp", "base_model": "org/base",
                           "models": [{"model": "org/ft"}], "parameters": {"t": 0.3}})  # fmt: skip
    space = space_from_recipe(recipe, budget=8)
    assert [g.name for g in space.genes] == ["t"]
    assert space.encode(recipe) == [0.3]
    assert space.decode([0.8]).parameters["t"] == 0.8


def test_nothing_to_search_is_a_clear_error():
    with pytest.raises(SearchError, match="two models"):
        space_from_recipe(_recipe("linear", n=1), budget=16)


def test_fixed_recipes_start_with_the_users():
    recipe = _recipe("ties", n=2, density=0.7)
    found = fixed_recipes(recipe)
    labels = [label for label, _ in found]
    assert labels[0] == "your recipe"
    assert found[0][1] == recipe
    assert {"task arithmetic λ=0.5", "TIES density=0.5", "uniform soup"} <= set(labels)
    soup = dict(found)["uniform soup"]
    assert soup.merge_method == "linear"
    assert [s.model for s in soup.models] == ["org/ft-0", "org/ft-1"]


def test_the_largest_space_weighs_attention_and_mlp_apart():
    from merging import get_method
    from merging.methods import resolve_params

    recipe = _recipe("ties", n=2, density=0.5)
    space = space_from_recipe(recipe, budget=88)  # 11 genes
    names = [g.name for g in space.genes]
    assert space.layout.parts == 2
    assert names[:4] == ["weight[0]@early@attn", "weight[1]@early@attn",
                         "weight[0]@early@mlp", "weight[1]@early@mlp"]  # fmt: skip
    genome = [0.1 * (k + 1) for k in range(len(names) - 3)] + [1.2, 0.5, 0.6]  # λ, densities
    decoded = space.decode(genome)
    method = get_method("ties")

    def weight_of(tensor: str, t: float) -> float:
        _, per_source = resolve_params(method, decoded, decoded.inputs(), tensor, t)
        return per_source[0].weight

    assert weight_of("model.layers.0.self_attn.q_proj.weight", 0.0) == pytest.approx(0.1)
    assert weight_of("model.layers.0.mlp.up_proj.weight", 0.0) == pytest.approx(0.3)
    assert weight_of("model.layers.3.mlp.up_proj.weight", 1.0) == pytest.approx(0.7)  # late
    assert weight_of("model.norm.weight", 0.0) == pytest.approx(0.2)  # the parts' mean
    assert space.encode(decoded) is None  # filtered weights are not read back
    assert space.encode(recipe) is not None  # the scalar start recipe is


def test_richer_spaces_give_the_other_tensors_and_four_layer_groups_their_own_weights():
    from merging import get_method
    from merging.methods import resolve_params

    recipe = _recipe("task_arithmetic", n=2)
    three = space_from_recipe(recipe, budget=12 * 8)  # 2 groups x 3 parts x 2 models
    assert (three.layout.groups, three.layout.parts, len(three)) == (2, 3, 12)
    four = space_from_recipe(recipe, budget=24 * 8)
    assert (four.layout.groups, four.layout.parts, len(four)) == (4, 3, 24)
    names = [g.name for g in four.genes]
    assert names[:3] == ["weight[0]@g0@attn", "weight[1]@g0@attn", "weight[0]@g0@mlp"]
    assert "weight[1]@g3@rest" in names
    genome = [0.05 * (k + 1) for k in range(len(names))]
    decoded = four.decode(genome)
    method = get_method("task_arithmetic")
    value = dict(zip(names, genome, strict=True))

    def weight_of(tensor: str, t: float) -> float:
        _, per_source = resolve_params(method, decoded, decoded.inputs(), tensor, t)
        return per_source[1].weight

    for group in range(4):  # a four-point gradient: layer group k of 4 at t = k / 3
        t = group / 3
        assert weight_of("model.layers.1.self_attn.q_proj.weight", t) == pytest.approx(
            value[f"weight[1]@g{group}@attn"])  # fmt: skip
        assert weight_of("model.layers.1.mlp.up_proj.weight", t) == pytest.approx(
            value[f"weight[1]@g{group}@mlp"])  # fmt: skip
        assert weight_of("model.layers.1.input_layernorm.weight", t) == pytest.approx(
            value[f"weight[1]@g{group}@rest"])  # its own, not the parts' mean  # fmt: skip
    assert weight_of("lm_head.weight", 0.0) == pytest.approx(value["weight[1]@g0@rest"])
    start = four.encode(recipe)  # a scalar weight reads back into every group and part
    assert start is not None
    assert set(start) == {1.0}


def _merged(recipe):
    """One tensor merged by the recipe's method (the evaluator's pure-function path)."""
    from merging import get_method
    from merging.methods import random_stream, resolve_params

    method = get_method(recipe.merge_method)
    specs = recipe.inputs()
    params, per_source = resolve_params(method, recipe, specs, "model.layers.0.mlp.w", 0.0)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 4, generator=generator)
    others = [base + torch.randn(4, 4, generator=generator) for _ in specs]
    return method.fn(base, others, per_source, params, random_stream(0, "model.layers.0.mlp.w"))


def test_free_weights_carry_the_whole_scale_of_the_template_lambda():
    """A task-arithmetic recipe with λ = 0.5: the genes are the effective weights λ·w in
    [0, 1.5] (not capped at 0.75), decoded with λ = 1, and the recipe itself encodes to the
    same merge."""
    recipe = _recipe("task_arithmetic", n=2, **{"lambda": 0.5})
    space = space_from_recipe(recipe, budget=16)
    assert [(g.name, g.low, g.high) for g in space.genes] == [
        ("weight[0]", 0.0, 1.5), ("weight[1]", 0.0, 1.5)]  # fmt: skip
    genome = space.encode(recipe)
    assert genome == [0.5, 0.5]
    decoded = space.decode(genome)
    assert "lambda" not in decoded.parameters  # λ = 1 (the default)
    assert torch.allclose(_merged(decoded), _merged(recipe))  # the same merge
    assert [m.parameters["weight"] for m in space.decode([1.4, 0.2]).models] == [1.4, 0.2]
    wide = space_from_recipe(_recipe("task_arithmetic", n=2, **{"lambda": 2.0}), budget=16)
    assert wide.genes[0].high == 3.0  # a larger λ keeps its reach
