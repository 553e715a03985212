"""``slices:`` end to end on tiny Llamas: frankenmerges, depth up-scaling, passthrough scale,
gradients per slice, every method inside a slice, and bad slices named at load / check time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from merging import METHODS, MergeOptions, RecipeError, load_recipe, merge
from merging.check import check_recipe
from merging.methods import random_stream
from merging.plan import with_layer
from merging.streaming import run_kernel
from tests.helpers.tiny import build_llama, state_dict
from tests.merging.method_helpers import method_parameters

pytest.importorskip("transformers")

CPU = MergeOptions(device="cpu", threads=1)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three 4-layer Llamas: a base, a fine-tune of it, and an unrelated one."""
    root = tmp_path_factory.mktemp("deep")
    base = build_llama(root / "a", seed=10, layers=4)
    return {
        "a": base,
        "b": build_llama(root / "b", seed=11, layers=4),
        "ft": build_llama(root / "ft", seed=12, base=base, scale=0.05),
    }


def run(data: dict[str, Any], out: Path) -> tuple[Path, Any]:
    result = merge(load_recipe(yaml.safe_dump(data)), out, options=CPU)
    return result.output, result


def source(model: Path, start: int, end: int, **parameters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": str(model), "layer_range": [start, end]}
    if parameters:
        entry["parameters"] = parameters
    return entry


def assert_layer_from(out: dict[str, torch.Tensor], k: int, src: dict[str, torch.Tensor], i: int):
    names = [n for n in src if f".layers.{i}." in n]
    assert names
    for name in names:
        assert torch.equal(out[with_layer(name, k)], src[name]), (k, name)


def test_frankenmerge_loads_and_each_layer_is_the_source_layer_the_plan_names(deep, tmp_path):
    from transformers import AutoModelForCausalLM

    data = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [source(deep["a"], 0, 3)]},
            {"sources": [source(deep["b"], 1, 4)]},
            {"sources": [source(deep["a"], 3, 4)]},
            {"sources": [source(deep["b"], 0, 2)]},
        ],
        "dtype": "float32",
    }
    out, result = run(data, tmp_path / "out")
    assert "layers 0-2 (slice 0) <- " + str(deep["a"]) + " [0, 3)" in result.report.plan
    assert "layers 3-5 (slice 1) <- " + str(deep["b"]) + " [1, 4)" in result.report.plan
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 + 3 + 1 + 2
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 9
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6]])).logits).all()
    merged, a, b = state_dict(out), state_dict(deep["a"]), state_dict(deep["b"])
    expected = [("a", 0), ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3), ("a", 3),
                ("b", 0), ("b", 1)]  # fmt: skip
    for k, (name, i) in enumerate(expected):
        assert_layer_from(merged, k, {"a": a, "b": b}[name], i)
    # embeddings from the first slice's source, final norm and LM head from the last's
    assert torch.equal(merged["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(merged["model.norm.weight"], b["model.norm.weight"])
    assert torch.equal(merged["lm_head.weight"], b["lm_head.weight"])
    assert len(merged) == len(a) - 4 * 9 + 9 * 9  # 9 tensors per Llama layer


def test_depth_upscaling_repeats_overlapping_layers_of_one_model(deep, tmp_path):
    data = {
        "merge_method": "passthrough",
        "slices": [{"sources": [source(deep["a"], 0, 3)]}, {"sources": [source(deep["a"], 1, 4)]}],
    }
    out, _ = run(data, tmp_path / "out")
    merged, a = state_dict(out), state_dict(deep["a"])
    for k, i in enumerate([0, 1, 2, 1, 2, 3]):
        assert_layer_from(merged, k, a, i)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6


def test_passthrough_scale_with_filters_applies_to_the_matching_tensors(deep, tmp_path):
    scale = [{"filter": "o_proj", "value": 0.0}, {"filter": "down_proj", "value": 0.5},
             {"value": 1.0}]  # fmt: skip
    data = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [source(deep["a"], 0, 2)]},
            {"sources": [source(deep["a"], 1, 3, scale=scale)]},
        ],
    }
    out, _ = run(data, tmp_path / "out")
    merged, a = state_dict(out), state_dict(deep["a"])
    o, down, up = "self_attn.o_proj", "mlp.down_proj", "mlp.up_proj"

    def at(state: dict[str, torch.Tensor], layer: int, part: str) -> torch.Tensor:
        return state[f"model.layers.{layer}.{part}.weight"]

    assert torch.equal(at(merged, 1, o), at(a, 1, o))
    assert not at(merged, 2, o).any()  # output layer 2 is layer 1 of a, scaled by 0
    assert torch.equal(at(merged, 3, down), at(a, 2, down) * 0.5)
    assert torch.equal(at(merged, 3, up), at(a, 2, up))


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_passthrough_scale_leaves_the_stored_input_as_it_is(stored):
    """The kernel reads raw chunks (views of the stored input, which other tensors of a
    frankenmerge may read at the same time): scaling must not write into them."""
    method = METHODS.get("passthrough")
    source = method.source_params(scale=0.0)
    kernel = method.kernel(method.params(), [source], random_stream(0, "w"), (64,))
    flat = torch.arange(1, 65, dtype=torch.float32).to(stored)
    before = flat.clone()
    out = torch.empty(64, dtype=stored)
    run_kernel(kernel, [flat], out, has_base=False, device=torch.device("cpu"),
               dtype=torch.float32, chunk=16)  # fmt: skip
    assert torch.equal(flat, before)
    assert not out.any()


def test_gradients_interpolate_within_each_slice(deep, tmp_path):
    """mergekit: layer j of an n-layer slice reads t = j/(n−1) (1 when n = 1); outside 0."""
    data = {
        "merge_method": "linear",
        "slices": [
            {"sources": [source(deep["a"], 0, 3), source(deep["b"], 0, 3)]},
            {"sources": [source(deep["a"], 3, 4), source(deep["b"], 3, 4)]},
        ],
        "models": [{"model": str(deep["b"]), "parameters": {"weight": [0.0, 1.0]}}],
        "parameters": {"weight": 1.0, "normalize": False},
    }
    out, result = run(data, tmp_path / "out")
    merged, a, b = state_dict(out), state_dict(deep["a"]), state_dict(deep["b"])
    name = "model.layers.{}.mlp.up_proj.weight"
    for k, t in enumerate([0.0, 0.5, 1.0, 1.0]):
        expected = a[name.format(k)] + t * b[name.format(k)]
        torch.testing.assert_close(merged[name.format(k)], expected, msg=str(k))
    torch.testing.assert_close(merged["model.norm.weight"], a["model.norm.weight"] + 0.0)
    assert result.report.ok


def test_gradient_slerp_template_written_with_slices(deep, tmp_path):
    """The LazyMergekit SLERP template: one slice of both models, filtered gradients."""
    t = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
         {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]  # fmt: skip
    data = {
        "merge_method": "slerp",
        "base_model": str(deep["a"]),
        "slices": [{"sources": [source(deep["a"], 0, 4), source(deep["ft"], 0, 4)]}],
        "parameters": {"t": t},
        "dtype": "float32",
    }
    out, _ = run(data, tmp_path / "out")
    models = dict(data, models=[{"model": str(deep["a"])}, {"model": str(deep["ft"])}])
    del models["slices"]
    again, _ = run(models, tmp_path / "models")
    merged, reference = state_dict(out), state_dict(again)
    assert merged.keys() == reference.keys()
    for name in merged:
        assert torch.equal(merged[name], reference[name]), name


@pytest.mark.parametrize("name", sorted(n for n in METHODS.names() if n != "passthrough"))
def test_every_method_inside_one_full_slice_equals_its_models_recipe(name, deep, tmp_path):
    """A slice spanning every layer of every model is the ``models:`` merge, tensor for tensor."""
    method = METHODS.get(name)
    models = [str(deep[k]) for k in ["ft", "b"][: method.max_inputs or 2]]
    base = [str(deep["a"])] if method.needs_base else []
    common = {"merge_method": name, "parameters": method_parameters(name), "seed": 3,
              "dtype": "float32"}  # fmt: skip
    if method.needs_base:
        common["base_model"] = str(deep["a"])
    sliced = dict(common, slices=[{"sources": [source(Path(m), 0, 4) for m in base + models]}])
    plain = dict(common, models=[{"model": m} for m in models])
    one, _ = run(sliced, tmp_path / "sliced")
    two, _ = run(plain, tmp_path / "plain")
    first, second = state_dict(one), state_dict(two)
    assert first.keys() == second.keys()
    for tensor in first:
        assert torch.equal(first[tensor], second[tensor]), tensor


# ---------------------------------------------------------------- bad slices


def _recipe(method: str, slices: list[dict[str, Any]], **top: Any) -> str:
    return yaml.safe_dump({"merge_method": method, "slices": slices, **top})


def _two(method: str, first: int = 2, second: int = 2, **top: Any) -> str:
    sources = [source(Path("a/x"), 0, first), source(Path("b/y"), 0, second)]
    return _recipe(method, [{"sources": sources}], **top)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (_two("linear", 2, 3), ["slices[0]", "a/x: 2 layers", "b/y: 3 layers"]),
        (
            _recipe("passthrough", [{"sources": [source(Path("a/x"), 2, 2)]}]),
            ["slices.0.sources.0.layer_range", "empty"],
        ),
        (_two("ties", base_model="c/base"), ["slices[0]", "ties needs the base model c/base"]),
        (
            _recipe("ties", [{"sources": [source(Path("a/x"), 0, 2)]}]),
            ["slices[0]", "needs a base model"],
        ),
        (_two("passthrough"), ["slices[0]", "passthrough takes exactly 1", "a/x", "b/y"]),
        (_two("slerp", base_model="a/x"), ["slices[0].parameters.t", "required by slerp"]),
        (yaml.safe_dump({"merge_method": "linear", "slices": []}), ["slices: empty"]),
    ],
    ids=["unequal", "empty", "base-missing", "no-base", "passthrough-two", "slerp-no-t", "none"],
)
def test_bad_slices_fail_at_load_naming_slice_and_source(text, fragments):
    with pytest.raises(RecipeError) as caught:
        load_recipe(text)
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_layer_range_past_the_source_fails_at_check_naming_slice_and_source(deep):
    text = _recipe("passthrough", [{"sources": [source(deep["a"], 0, 2)]},
                                   {"sources": [source(deep["b"], 2, 6)]}])  # fmt: skip
    report = check_recipe(load_recipe(text))
    assert not report.ok
    assert any("slices[1]" in e and str(deep["b"]) in e and "4 layers" in e for e in report.errors)


def test_check_shows_the_plan_and_estimates_follow_it(deep):
    text = _recipe("passthrough", [{"sources": [source(deep["a"], 0, 4)]},
                                   {"sources": [source(deep["a"], 2, 4)]}])  # fmt: skip
    report = check_recipe(load_recipe(text))
    rendered = report.render()
    assert "Plan:" in rendered
    assert f"layers 4-5 (slice 1) <- {deep['a']} [2, 4)" in rendered
    whole = _recipe("passthrough", [{"sources": [source(deep["a"], 0, 4)]}])
    plain = check_recipe(load_recipe(whole))
    per_layer = (report.output_bytes - plain.output_bytes) / 2
    layer_bytes = sum(h.nbytes for h in plain.output if ".layers.0." in h.name)
    assert per_layer == layer_bytes
    assert len(report.output) == len(plain.output) + 2 * 9


def test_slices_and_tokenizer_block_round_trip_through_yaml():
    text = _recipe(
        "ties",
        [{"sources": [source(Path("org/base"), 0, 2), source(Path("org/a"), 0, 2, density=0.5)],
          "parameters": {"weight": [0.2, 0.8]}, "base_model": "org/base"}],
        base_model="org/base",
        tokenizer={"source": "union", "pad_to_multiple_of": 8,
                   "tokens": {"<x>": {"source": {"kind": "zero"}, "force": True}}},
        chat_template="chatml",
    )  # fmt: skip
    recipe = load_recipe(text)
    assert recipe.slices[0].sources[1].layer_range == (0, 2)
    again = load_recipe(recipe.to_yaml())
    assert again == recipe
    assert again.to_yaml() == recipe.to_yaml()
