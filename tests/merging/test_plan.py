"""The tensor plan from headers and configs only: inputs, parameters in effect, layers, config."""

from __future__ import annotations

import pytest
import yaml

from merging import load_recipe
from merging.check import compare_plan
from merging.io.headers import SourceInfo, TensorHeader
from merging.plan import build_plan, plan_sources, with_layer

PARTS = ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight")


def info(label: str, layers: int, hidden: int = 8, **config) -> SourceInfo:
    shapes = {"model.embed_tokens.weight": (50, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (50, hidden)}  # fmt: skip
    for i in range(layers):
        for part in PARTS:
            shapes[f"model.layers.{i}.{part}"] = (hidden,) if "norm" in part else (hidden, hidden)
    headers = {n: TensorHeader(n, s, "BF16") for n, s in shapes.items()}
    cfg = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers, **config}
    return SourceInfo(label, headers, cfg)


def plan_of(data: dict, infos: dict[str, SourceInfo]):
    return build_plan(load_recipe(yaml.safe_dump(data)), infos)


def by_name(plan):
    return {t.name: t for t in plan.tensors}


def test_models_recipe_plans_each_tensor_from_the_same_tensor_of_every_source():
    infos = {"org/base": info("org/base", 3), "org/a": info("org/a", 3), "org/b": info("org/b", 3)}
    data = {"merge_method": "ties", "base_model": "org/base",
            "models": [{"model": "org/a", "parameters": {"density": [1.0, 0.5], "weight": 2}},
                       {"model": "org/b", "parameters": {"density": 0.3}}]}  # fmt: skip
    plan = plan_of(data, infos)
    assert list(plan_sources(load_recipe(yaml.safe_dump(data)))) == ["org/base", "org/a", "org/b"]
    assert [t.name for t in plan.tensors] == list(infos["org/base"].headers)
    tensor = by_name(plan)["model.layers.1.mlp.up_proj.weight"]
    assert [(i.source, i.name) for i in tensor.inputs] == [
        ("org/base", tensor.name), ("org/a", tensor.name), ("org/b", tensor.name)
    ]
    assert tensor.has_base
    assert [s.density for s in tensor.per_source] == pytest.approx([0.75, 0.3])
    assert [s.weight for s in tensor.per_source] == [2.0, 1.0]
    assert plan.summary() == ["layers 0-2 <- org/base [0, 3), org/a [0, 3), org/b [0, 3)"]


def test_slices_renumber_layers_and_take_outer_tensors_from_the_first_and_last_slice():
    infos = {"a": info("a", 4), "b": info("b", 6)}
    data = {"merge_method": "passthrough",
            "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]}]},
                       {"sources": [{"model": "b", "layer_range": [3, 6]}]}]}  # fmt: skip
    plan = plan_of(data, infos)
    assert plan.num_layers == 5
    assert [layer.sources for layer in plan.layers] == [
        (("a", 0),), (("a", 1),), (("b", 3),), (("b", 4),), (("b", 5),)
    ]
    tensors = by_name(plan)
    assert tensors["model.layers.2.mlp.up_proj.weight"].inputs[0].name == (
        "model.layers.3.mlp.up_proj.weight"
    )
    assert tensors["model.embed_tokens.weight"].inputs[0].source == "a"
    assert tensors["model.norm.weight"].inputs[0].source == "b"
    assert tensors["lm_head.weight"].inputs[0].source == "b"
    assert plan.tensors[0].name == "model.embed_tokens.weight"
    assert plan.summary() == [
        "layers 0-1 (slice 0) <- a [0, 2)", "layers 2-4 (slice 1) <- b [3, 6)"
    ]


def _weights(plan, name):
    return [s.weight for s in by_name(plan)[name].per_source]


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ({"source": 4.0, "slice": 3.0, "entry": 2.0, "global": 1.0}, 4.0),
        ({"slice": 3.0, "entry": 2.0, "global": 1.0}, 3.0),
        ({"entry": 2.0, "global": 1.0}, 2.0),
        ({"global": 1.0}, 1.0),
        # a level whose filters match nothing falls through to the next (mergekit)
        ({"source": [{"filter": "nothing", "value": 9.0}], "slice": 3.0}, 3.0),
    ],
)
def test_parameter_precedence_source_in_slice_then_slice_then_models_entry_then_global(
    levels, expected
):
    infos = {"base": info("base", 2), "ft": info("ft", 2)}
    src = {"model": "ft", "layer_range": [0, 2]}
    if "source" in levels:
        src["parameters"] = {"weight": levels["source"]}
    slice_ = {"sources": [{"model": "base", "layer_range": [0, 2]}, src]}
    if "slice" in levels:
        slice_["parameters"] = {"weight": levels["slice"]}
    data = {"merge_method": "task_arithmetic", "base_model": "base", "slices": [slice_],
            "parameters": {"weight": levels["global"]} if "global" in levels else {}}  # fmt: skip
    if "entry" in levels:
        data["models"] = [{"model": "ft", "parameters": {"weight": levels["entry"]}}]
    plan = plan_of(data, infos)
    assert _weights(plan, "model.layers.1.mlp.up_proj.weight") == [expected]


def test_gradients_restart_in_each_slice_and_filters_see_the_right_names():
    """t = j/(n−1) inside a slice (1 for a one-layer slice); per-source filters match the
    source's tensor name, global ones the output name (mergekit's ConfigReader)."""
    infos = {"base": info("base", 4), "ft": info("ft", 4)}
    weight = [{"filter": "layers.3.", "value": 5.0}, {"value": [0.0, 1.0]}]
    tuned = {"weight": weight}
    data = {"merge_method": "task_arithmetic", "base_model": "base",
            "slices": [
                {"sources": [{"model": "base", "layer_range": [0, 3]},
                             {"model": "ft", "layer_range": [0, 3]}]},
                {"sources": [{"model": "base", "layer_range": [3, 4]},
                             {"model": "ft", "layer_range": [3, 4], "parameters": tuned}]},
                {"sources": [{"model": "base", "layer_range": [0, 1]},
                             {"model": "ft", "layer_range": [0, 1], "parameters": tuned}]},
            ],
            "parameters": {"weight": [0.0, 1.0], "lambda": [{"filter": "layers.4.", "value": 2.0},
                                                             {"value": 1.0}]}}  # fmt: skip
    plan = plan_of(data, infos)
    name = "model.layers.{}.mlp.up_proj.weight"
    assert [_weights(plan, name.format(k))[0] for k in range(3)] == [0.0, 0.5, 1.0]
    assert _weights(plan, name.format(3)) == [5.0]  # input name layers.3. matches
    assert _weights(plan, name.format(4)) == [1.0]  # input layers.0: gradient at t = 1
    assert [by_name(plan)[name.format(k)].params.lambda_ for k in range(5)] == [1, 1, 1, 1, 2]
    assert _weights(plan, "model.embed_tokens.weight") == [0.0]  # outside the layers: t = 0


def test_output_config_follows_the_plan_with_per_layer_lists():
    types = ["sliding_attention", "full_attention"] * 2
    infos = {"a": info("a", 4, layer_types=types)}
    data = {"merge_method": "passthrough",
            "slices": [{"sources": [{"model": "a", "layer_range": [1, 4]}]},
                       {"sources": [{"model": "a", "layer_range": [0, 2]}]}]}  # fmt: skip
    plan = plan_of(data, infos)
    config = plan.output_config(infos["a"].config, infos)
    assert config["num_hidden_layers"] == 5
    assert config["layer_types"] == [types[1], types[2], types[3], types[0], types[1]]
    assert infos["a"].config["num_hidden_layers"] == 4  # the source's config is not changed


def test_compare_plan_names_the_sources_whose_shapes_differ_and_estimates_follow_the_plan():
    infos = {"a": info("a", 2), "b": info("b", 2, hidden=12), "c": info("c", 2)}
    data = {"merge_method": "linear",
            "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]},
                                    {"model": "b", "layer_range": [0, 2]}]}]}  # fmt: skip
    report = compare_plan(plan_of(data, infos), infos, out_dtype="bfloat16")
    assert not report.ok
    expected = "b (model.layers.0.mlp.up_proj.weight) has shape (12, 12)"
    assert any(expected in e for e in report.errors)
    ok = {"merge_method": "passthrough",
          "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]}]},
                     {"sources": [{"model": "c", "layer_range": [1, 2]}]}]}  # fmt: skip
    report = compare_plan(plan_of(ok, infos), infos, out_dtype="float32")
    assert report.ok
    assert [h.name for h in report.output if ".layers." in h.name][-1] == with_layer(
        "model.layers.0.input_layernorm.weight", 2
    )
    assert report.output_bytes == sum(h.numel * 4 for h in report.output)
    assert "Plan:" in report.render()


@pytest.mark.parametrize("with_base", [True, False])
def test_an_optional_base_is_the_base_when_the_recipe_names_one(with_base):
    infos = {k: info(k, 2) for k in ("base", "a", "b")}
    data = {"merge_method": "nuslerp",
            "models": [{"model": "a", "parameters": {"weight": 0.3}},
                       {"model": "b", "parameters": {"weight": 0.7}}]}  # fmt: skip
    if with_base:
        data["base_model"] = "base"
    tensor = by_name(plan_of(data, infos))["model.layers.0.mlp.up_proj.weight"]
    assert tensor.has_base is with_base
    assert [i.source for i in tensor.inputs] == (["base"] if with_base else []) + ["a", "b"]
    assert [s.weight for s in tensor.per_source] == [0.3, 0.7]
