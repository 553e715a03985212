"""Recipes: mergekit YAMLs load, round-trip, and every bad input names its key."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from merging import RecipeError, load_recipe, parse_recipe
from merging.methods import get_method, resolve_params
from merging.recipe import Conditional, evaluate_parameter

# mergekit's examples/ties.yaml
TIES = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""

# mergekit's examples/gradient-slerp.yaml, with `models:` instead of `slices:`
GRADIENT_SLERP = """\
models:
  - model: psmathur/orca_mini_v3_13b
  - model: garage-bAInd/Platypus2-13B
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
"""

DARE_TIES = """\
models:
  - model: TheBloke/Llama-2-13B-fp16
    # no parameters necessary for base model
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
merge_method: dare_ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  int8_mask: true
  rescale: true
  normalize: true
dtype: bfloat16
tokenizer_source: base
"""

TASK_ARITHMETIC = """\
merge_method: task_arithmetic
base_model: mistralai/Mistral-7B-v0.1
models:
  - model: mistralai/Mistral-7B-v0.1
  - model: HuggingFaceH4/zephyr-7b-beta
    parameters:
      weight: 0.5
  - model: teknium/OpenHermes-2.5-Mistral-7B
    parameters:
      weight: 0.5
parameters:
  lambda: 0.8
dtype: bfloat16
"""

LINEAR = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
"""

EXAMPLES = {
    "ties": TIES,
    "gradient_slerp": GRADIENT_SLERP,
    "dare_ties": DARE_TIES,
    "task_arithmetic": TASK_ARITHMETIC,
    "linear": LINEAR,
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_mergekit_examples_load(name):
    recipe = load_recipe(EXAMPLES[name])
    assert recipe.merge_method == yaml.safe_load(EXAMPLES[name])["merge_method"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_round_trip_to_yaml_and_back_is_identical(name):
    recipe = load_recipe(EXAMPLES[name])
    again = load_recipe(recipe.to_yaml())
    assert again == recipe
    assert again.to_yaml() == recipe.to_yaml()


def test_ties_example_values():
    recipe = load_recipe(TIES)
    assert recipe.base_model == "TheBloke/Llama-2-13B-fp16"
    assert len(recipe.inputs()) == 3
    assert recipe.dtype == "float16"
    assert recipe.parameters == {"normalize": True, "int8_mask": True}
    wizard = recipe.models[2].parameters["weight"]
    assert wizard == [Conditional(filter="mlp", value=0.5), Conditional(value=0)]


def test_ties_example_resolves_per_tensor():
    recipe = load_recipe(TIES)
    method = get_method("ties")
    inputs = recipe.inputs()
    params, sources = resolve_params(method, recipe, inputs, "model.layers.39.mlp.up_proj", 1.0)
    assert params.normalize is True
    assert [s.density for s in sources] == pytest.approx([0.1, 0.5, 0.33])
    assert [s.weight for s in sources] == pytest.approx([1.0, 1.0, 0.5])
    _, sources = resolve_params(method, recipe, inputs, "model.layers.0.self_attn.q_proj", 0.0)
    assert [s.density for s in sources] == pytest.approx([1.0, 0.5, 0.33])
    assert [s.weight for s in sources] == pytest.approx([1.0, 0.0, 0.0])
    _, sources = resolve_params(method, recipe, inputs, "model.layers.20.mlp.up_proj", 0.5)
    assert [s.density for s in sources] == pytest.approx([0.7, 0.5, 0.33])
    assert sources[1].weight == pytest.approx(0.5)  # halfway between 0.3 and 0.7


def test_gradient_slerp_example_filters_and_fallback():
    recipe = load_recipe(GRADIENT_SLERP)
    assert [s.model for s in recipe.inputs()] == ["garage-bAInd/Platypus2-13B"]
    method = get_method("slerp")
    cases = {
        ("model.layers.0.self_attn.q_proj.weight", 0.0): 0.0,
        ("model.layers.10.self_attn.o_proj.weight", 0.25): 0.5,
        ("model.layers.30.self_attn.o_proj.weight", 0.75): 0.7,
        ("model.layers.39.mlp.down_proj.weight", 1.0): 0.0,
        ("model.layers.5.mlp.gate_proj.weight", 0.125): 0.75,
        ("model.layers.5.input_layernorm.weight", 0.125): 0.5,
        ("model.embed_tokens.weight", 0.0): 0.5,
    }
    for (tensor, t), expected in cases.items():
        params, _ = resolve_params(method, recipe, recipe.inputs(), tensor, t)
        assert params.t == pytest.approx(expected), tensor


def test_dare_ties_example_values():
    recipe = load_recipe(DARE_TIES)
    assert recipe.tokenizer_source == "base"
    assert recipe.dtype == "bfloat16"
    assert len(recipe.inputs()) == 2  # the base listed under models is not an input
    params, _ = resolve_params(get_method("dare_ties"), recipe, recipe.inputs(), "x", 0.0)
    assert params.rescale == "l1"  # mergekit's `rescale: true`
    assert params.normalize is True
    assert params.int8_mask is True


def test_task_arithmetic_example_lambda():
    recipe = load_recipe(TASK_ARITHMETIC)
    params, sources = resolve_params(
        get_method("task_arithmetic"), recipe, recipe.inputs(), "x", 0.0
    )
    assert params.lambda_ == pytest.approx(0.8)
    assert [s.weight for s in sources] == [0.5, 0.5]


def test_method_alias_and_dtype_alias():
    recipe = parse_recipe({"method": "linear", "models": [{"model": "a/b"}], "dtype": "bf16"})
    assert recipe.merge_method == "linear"
    assert recipe.dtype == "bfloat16"
    assert load_recipe(recipe.to_yaml()) == recipe


def test_adapter_plus_syntax_round_trips():
    recipe = load_recipe(
        "merge_method: linear\nmodels:\n  - model: org/base+org/lora\n  - model: org/other\n"
    )
    assert recipe.models[0].model == "org/base"
    assert recipe.models[0].adapter == "org/lora"
    assert load_recipe(recipe.to_yaml()) == recipe


def test_load_recipe_from_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(TIES)
    assert load_recipe(path) == load_recipe(TIES)


# ---------------------------------------------------------------- every bad input


def _ties(**changes):
    data = yaml.safe_load(TIES)
    data.update(changes)
    return data


BAD = {
    "unknown method": (_ties(merge_method="tie"), ["merge_method", "'tie'", "Did you mean"]),
    "density 0": (
        _ties(parameters={"density": 0}),
        ["parameters.density", "greater than 0"],
    ),
    "density 1.5": (
        _ties(parameters={"density": 1.5}),
        ["parameters.density", "1.5"],
    ),
    "per-model density 1.5 in a gradient": (
        _ties(models=[{"model": "a/b", "parameters": {"density": [0.5, 1.5]}}]),
        ["models[0].parameters.density", "1.5"],
    ),
    "weights of the wrong length": (
        {
            "merge_method": "linear",
            "models": [{"model": "a/b"}, {"model": "c/d"}],
            "parameters": {"weights": [0.5, 0.3, 0.2]},
        },
        ["parameters.weights", "3", "2"],
    ),
    "slerp with two models besides the base": (
        {
            "merge_method": "slerp",
            "base_model": "a/base",
            "models": [{"model": "a/one"}, {"model": "a/two"}],
            "parameters": {"t": 0.5},
        },
        ["models", "slerp", "a/one", "a/two"],
    ),
    "slerp without t": (
        {"merge_method": "slerp", "base_model": "a/base", "models": [{"model": "a/one"}]},
        ["parameters.t", "slerp"],
    ),
    "slerp t out of range": (
        {
            "merge_method": "slerp",
            "base_model": "a/base",
            "models": [{"model": "a/one"}],
            "parameters": {"t": [{"filter": "mlp", "value": [0, 2]}, {"value": 0.5}]},
        },
        ["parameters.t", "2"],
    ),
    "invalid dtype": (_ties(dtype="float8"), ["dtype", "float8"]),
    "invalid out_dtype": (_ties(out_dtype="int4"), ["out_dtype", "int4"]),
    "no models": (_ties(models=[]), ["models"]),
    "missing base model": (
        {"merge_method": "ties", "models": [{"model": "a/b"}]},
        ["base_model", "ties"],
    ),
    "bad vocab policy": (_ties(vocab_policy="merge"), ["vocab_policy"]),
    "bad rescale": (
        {**yaml.safe_load(DARE_TIES), "parameters": {"rescale": "l2"}},
        ["parameters.rescale", "l2"],
    ),
    "both method keys": (_ties(method="ties"), ["merge_method", "method"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_raises_recipe_error_naming_the_key(case):
    data, fragments = BAD[case]
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data)
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


@pytest.mark.parametrize("text", ["- just\n- a list\n", "42\n", "'a string'\n", "\n"])
def test_non_mapping_yaml_is_refused(text):
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(text)


def test_invalid_yaml_is_refused_naming_the_line():
    with pytest.raises(RecipeError, match=r"not valid YAML at line 4.*flow sequence at line 3"):
        load_recipe("merge_method: ties\nbase_model: a\nmodels: [unclosed\n")


def test_multi_document_yaml_is_refused():
    text = "merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: ties\n"
    with pytest.raises(RecipeError, match=r"2 YAML documents.*line 3"):
        load_recipe(text)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_recipe_error_is_a_value_error():
    with pytest.raises(ValueError, match="merge_method"):
        parse_recipe(_ties(merge_method="nope"))


def test_recipe_is_frozen():
    recipe = load_recipe(TIES)
    with pytest.raises(ValueError, match="frozen"):
        recipe.seed = 3


# ---------------------------------------------------------------- evaluate_parameter


@pytest.mark.parametrize(
    ("gradient", "t", "expected"),
    [
        ([0, 1], 0.0, 0.0),
        ([0, 1], 0.25, 0.25),
        ([0, 1], 1.0, 1.0),
        ([0, 0.5, 0.3, 0.7, 1], 0.0, 0.0),
        ([0, 0.5, 0.3, 0.7, 1], 0.125, 0.25),
        ([0, 0.5, 0.3, 0.7, 1], 0.25, 0.5),
        ([0, 0.5, 0.3, 0.7, 1], 0.375, 0.4),
        ([0, 0.5, 0.3, 0.7, 1], 0.5, 0.3),
        ([0, 0.5, 0.3, 0.7, 1], 2 / 3, 0.3 + (2 / 3 * 4 - 2) * 0.4),
        ([0, 0.5, 0.3, 0.7, 1], 1.0, 1.0),
        ([1, 0.7, 0.1], 0.75, 0.4),
        ([0.42], 0.6, 0.42),
    ],
)
def test_evaluate_parameter_gradient_values(gradient, t, expected):
    assert evaluate_parameter(gradient, "x", t) == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(
    gradient=st.lists(st.floats(-5, 5), min_size=1, max_size=8),
    layer=st.integers(0, 40),
    layers=st.integers(2, 41),
)
def test_evaluate_parameter_matches_numpy_interp_at_layer_positions(gradient, layer, layers):
    """Layer i of n reads position i/(n−1) of the gradient, linearly interpolated (mergekit)."""
    layer %= layers
    t = layer / (layers - 1)
    expected = np.interp(t, np.linspace(0, 1, len(gradient)), gradient)
    assert evaluate_parameter(gradient, "x", t) == pytest.approx(expected, abs=1e-9)


def test_evaluate_parameter_first_matching_filter_wins():
    value = [
        Conditional(filter="self_attn", value=1.0),
        Conditional(filter="attn", value=2.0),
        Conditional(value=3.0),
    ]
    assert evaluate_parameter(value, "model.layers.0.self_attn.q_proj", 0) == 1.0
    assert evaluate_parameter(value, "transformer.h.0.attn.c_attn", 0) == 2.0
    assert evaluate_parameter(value, "model.norm.weight", 0) == 3.0
    assert evaluate_parameter(value[:2], "model.norm.weight", 0) is None
    star = [Conditional(filter="*", value=[0.0, 1.0])]
    assert evaluate_parameter(star, "anything", 0.5) == pytest.approx(0.5)


def test_evaluate_parameter_scalars_pass_through():
    assert evaluate_parameter(0.3, "x", 0.9) == 0.3
    assert evaluate_parameter(True, "x", 0.9) is True


def test_legacy_model_prefix_tokenizer_source_names_the_current_spelling():
    with pytest.raises(RecipeError, match=r"legacy spelling.*'org/tok'"):
        load_recipe("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: model:org/tok\n")
