"""Lenient where mergekit is, never silent: keys without effect load with a warning naming the
key, why, and the likely intended key; ``strict`` makes them errors; warnings reach `check`,
`merge`, the model card; the tensors are those of the recipe without the ignored keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from app.cli import main
from merging import MergeOptions, RecipeError, load_recipe, merge, parse_recipe
from merging.check import check_recipe
from tests.helpers.tiny import state_dict

TIES: dict[str, Any] = {
    "merge_method": "ties",
    "base_model": "org/base",
    "models": [{"model": "org/a", "parameters": {"density": 0.5, "weight": 1.0}}],
    "parameters": {"normalize": True},
}


def changed(**top: Any) -> dict[str, Any]:
    return {**yaml.safe_load(yaml.safe_dump(TIES)), **top}


def with_model(**entry: Any) -> dict[str, Any]:
    data = changed()
    data["models"][0].update(entry)
    return data


# fmt: off
CASES = {
    "empty top-level parameters": (
        changed(parameters=None), ["parameters: empty (YAML null)", "sets nothing"]
    ),
    "empty per-model parameters": (
        with_model(parameters=None), ["models[0].parameters: empty (YAML null)"]
    ),
    "base listed again": (
        changed(models=[{"model": "org/base"}, *TIES["models"]]),
        ["models[0]: org/base is the base model listed again", "not an input"],
    ),
    "base listed again with parameters": (
        changed(models=[{"model": "org/base", "parameters": {"weight": 3}}, *TIES["models"]]),
        ["models[0]", "its parameters have no effect"],
    ),
    "int8_mask": (
        changed(parameters={"int8_mask": True}), ["parameters.int8_mask", "no-op", "float32"]
    ),
    "embed_slerp": (
        {"merge_method": "slerp", "base_model": "org/base", "models": [{"model": "org/a"}],
         "parameters": {"t": 0.5, "embed_slerp": True}},
        ["parameters.embed_slerp", "legacy mergekit parameter"],
    ),
    "parameter the method does not read": (
        changed(parameters={"nomalize": True}),
        ["parameters.nomalize", "ties does not read", "did you mean 'normalize'?"],
    ),
    "per-model parameter the method does not read": (
        with_model(parameters={"densty": 0.5}),
        ["models[0].parameters.densty", "did you mean 'density'?"],
    ),
    "global parameter given per model": (
        with_model(parameters={"lambda": 0.5}),
        ["models[0].parameters.lambda", "not a per-model parameter"],
    ),
    "misspelled tokenizer_source": (
        changed(tokenzer_source="base"),
        ["tokenzer_source: unknown key", "did you mean 'tokenizer_source'?"],
    ),
    "unknown top-level key": (
        changed(merge_methd="ties"), ["merge_methd: unknown key", "did you mean 'merge_method'?"]
    ),
    "unknown per-model key": (with_model(weight=1), ["models[0].weight: unknown key"]),
    "slice residual_weight": (
        {"merge_method": "passthrough",
         "slices": [{"sources": [{"model": "org/a", "layer_range": [0, 2]}],
                     "residual_weight": 0.5}]},
        ["slices[0].residual_weight", "never uses it"],
    ),
}
# fmt: on


@pytest.mark.parametrize("case", sorted(CASES))
def test_key_without_effect_loads_with_a_warning_naming_it(case):
    data, fragments = CASES[case]
    recipe = parse_recipe(data)
    text = "\n".join(recipe.warnings)
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_turns_every_warning_into_an_error(case):
    data, fragments = CASES[case]
    with pytest.raises(RecipeError, match="strict") as caught:
        parse_recipe(data, strict=True)
    assert fragments[0] in str(caught.value)
    with pytest.raises(RecipeError, match="strict"):
        parse_recipe({**data, "strict": True})


def test_a_clean_recipe_has_no_warnings():
    assert parse_recipe(TIES).warnings == ()
    assert parse_recipe({**TIES, "strict": True}).warnings == ()


def test_what_mergekit_refuses_is_still_refused_with_the_warnings_shown():
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"merge_methd": "ties", "models": [{"model": "a/b"}]})
    assert "merge_method: Field required" in str(caught.value)
    assert "did you mean 'merge_method'?" in str(caught.value)


def _real(models: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {"merge_method": "ties", "base_model": str(models["base"]),
            "models": [{"model": str(models["ft1"]), "parameters": {"density": 0.5}},
                       {"model": str(models["ft2"]), "parameters": {"density": 0.7}}],
            "parameters": {"normalize": True}, "dtype": "float32", **extra}  # fmt: skip


def test_ignored_keys_give_the_same_tensors_and_reach_check_merge_and_the_card(
    tiny_models, tmp_path, capsys
):
    clean = _real(tiny_models)
    noisy = _real(tiny_models, tokenzer_source="base")
    noisy["parameters"] = {"normalize": True, "int8_mask": True, "nomalize": False}
    noisy["models"].insert(0, {"model": str(tiny_models["base"]), "parameters": None})
    options = MergeOptions(device="cpu", threads=1)
    one = merge(parse_recipe(clean), tmp_path / "clean", options=options).output
    result = merge(parse_recipe(noisy), tmp_path / "noisy", options=options)
    first, second = state_dict(one), state_dict(result.output)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    expected = ["tokenzer_source", "int8_mask", "nomalize", "models[0].parameters: empty"]
    for fragment in expected:
        assert any(fragment in w for w in result.report.warnings), fragment
    card = (result.output / "README.md").read_text()
    assert "## Warnings" in card
    assert "did you mean 'normalize'?" in card
    assert "## Warnings" not in (one / "README.md").read_text()
    report = check_recipe(parse_recipe(noisy))
    assert "warning: parameters.nomalize" in report.render()
    path = tmp_path / "noisy.yaml"
    path.write_text(yaml.safe_dump(noisy))
    assert main(["check", str(path)]) == 0
    assert "did you mean 'tokenizer_source'?" in capsys.readouterr().out
    assert main(["check", "--strict", str(path)]) == 1
    assert "strict" in capsys.readouterr().err
    assert main(["merge", "--strict", str(path), "-o", str(tmp_path / "never")]) == 1
    assert not (tmp_path / "never").exists()


def test_load_recipe_from_a_file_warns_too(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(changed(parameters={"int8_mask": True})))
    assert any("int8_mask" in w for w in load_recipe(path).warnings)


def test_a_token_source_must_be_one_of_the_recipe_models():
    data = changed(tokenizer={"source": "union", "tokens": {"<x>": {"source": "org/other"}}})
    with pytest.raises(RecipeError, match=r"tokenizer\.tokens\.<x>\.source: org/other is not one"):
        parse_recipe(data)
    data = changed(tokenizer={"source": "union", "tokens": {"<x>": {"source": "org/a"}}})
    assert parse_recipe(data).tokenizer.tokens["<x>"].source == "org/a"
