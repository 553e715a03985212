"""Fuzzing the recipe loader: arbitrary bytes, arbitrary YAML and mutated valid recipes give
a `Recipe` or a `RecipeError` with a message, never anything else (no traceback reaches a
user of ``hubmerge check`` or of the app)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merging import load_recipe
from merging.errors import RecipeError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "merge_method": "ties",
    "base_model": "org/base",
    "models": [
        {"model": "org/math", "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": "org/code", "parameters": {"weight": [0.2, 0.8], "density": 0.5}},
    ],
    "parameters": {"normalize": True},
    "dtype": "bfloat16",
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=10), st.sampled_from(list(VALID))), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


def loads_or_refuses(source: str | Path) -> None:
    try:
        load_recipe(source)
    except RecipeError as err:
        message = str(err)
    else:
        return
    assert message.strip(), "a RecipeError must say what is wrong"


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_in_a_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_bytes(data)
        loads_or_refuses(str(path))


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    loads_or_refuses(text + "\n")  # with a newline: parsed as YAML text, not a path


@FUZZ
@given(values)
def test_arbitrary_yaml(value: Any) -> None:
    loads_or_refuses(yaml.safe_dump(value) + "\n")


def _mutate(data: dict[str, Any], draw: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "model", "param"]))
        if where == "top":
            key = draw(st.sampled_from([*VALID, "slices", "tokenizer_source", "seed", "extra"]))
            if draw(st.booleans()):
                data.pop(key, None)
            else:
                data[key] = draw(values)
        elif isinstance(data.get("models"), list) and data["models"]:
            index = draw(st.integers(0, len(data["models"]) - 1))
            entry = data["models"][index]
            if not isinstance(entry, dict):
                continue
            if where == "model":
                entry[draw(st.sampled_from(["model", "adapter", "parameters", "x"]))] = draw(values)
            elif isinstance(entry.get("parameters"), dict):
                key = draw(st.sampled_from(["weight", "density", "epsilon", "lambda", "z"]))
                entry["parameters"][key] = draw(values)
    return data


@FUZZ
@given(st.data())
def test_mutated_valid_recipes(data: st.DataObject) -> None:
    mutated = _mutate(VALID, data.draw)
    loads_or_refuses(yaml.safe_dump(mutated, sort_keys=False) + "\n")


def test_the_valid_recipe_is_valid() -> None:
    assert load_recipe(yaml.safe_dump(VALID, sort_keys=False)).merge_method == "ties"


@pytest.mark.parametrize("value", ["[]", "[{filter: mlp, value: []}]"])
def test_an_empty_gradient_is_refused(value: str) -> None:
    text = yaml.safe_dump(VALID, sort_keys=False).replace("weight: 0.6", f"weight: {value}")
    with pytest.raises(RecipeError, match="an empty list is not a value"):
        load_recipe(text)


def test_a_binary_recipe_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00\x01\xff\xfe" * 64)
    with pytest.raises(RecipeError, match=r"not UTF-8 text \(byte 0xff at offset 2\)"):
        load_recipe(str(path))
