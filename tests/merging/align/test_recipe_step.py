"""``align: {to: base}`` in a recipe: sources are aligned, merged, and the card records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from merging import merge, parse_recipe
from merging.align.perms import Permutations
from merging.align.spec import model_spec
from merging.errors import RecipeError
from tests.helpers.tiny import state_dict
from tests.merging.align.helpers import build, permute_folder


@pytest.mark.slow
def test_linear_merge_of_a_model_and_its_shuffled_copy_returns_the_model(tmp_path: Path) -> None:
    """Without alignment the average of A and π(A) is a different model; aligned, it is A."""
    a = build(tmp_path / "a", "qwen2", seed=3)
    spec = model_spec(json.loads((a / "config.json").read_text()))
    shuffle = Permutations.random(spec, torch.Generator().manual_seed(9))
    b = permute_folder(a, tmp_path / "b", shuffle)
    halves = [{"model": str(m), "parameters": {"weight": 0.5}} for m in (a, b)]
    recipe = parse_recipe(
        {"merge_method": "linear", "base_model": str(a), "models": halves, "align": {"to": "base"}}
    )
    result = merge(recipe, tmp_path / "out")
    merged, expected = state_dict(result.output), state_dict(a)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-7)
    card = (result.output / "README.md").read_text()
    assert "## Alignment" in card
    assert f"`{b}`" in card
    assert "align:" in (result.output / "hubmerge_recipe.yaml").read_text()
    assert "hubmerge-aligned" not in card
    assert not list(tmp_path.glob(".out.hubmerge-aligned-*")), "work folder left behind"
    record = json.loads((result.output / "alignment.json").read_text())
    assert record["target"] == str(a)
    assert record["sources"][0]["model"] == str(b)

    plain = recipe.model_copy(update={"align": None})
    unaligned = state_dict(merge(plain, tmp_path / "plain").output)
    assert not torch.allclose(unaligned["model.norm.weight"], expected["model.norm.weight"])


def test_align_to_base_needs_a_base(tmp_path: Path) -> None:
    recipe = parse_recipe(
        {"merge_method": "linear", "models": [{"model": str(tmp_path)}], "align": {"to": "base"}}
    )
    with pytest.raises(RecipeError, match="no base_model"):
        merge(recipe, tmp_path / "out")


def test_align_settings_are_validated() -> None:
    with pytest.raises(RecipeError, match="align"):
        parse_recipe({"merge_method": "linear", "models": [{"model": "/x"}],
                      "align": {"to": "base", "method": "telepathy"}})  # fmt: skip


def test_cancelled_alignment_leaves_nothing(family_models: dict[str, Path], tmp_path: Path) -> None:
    import threading

    from merging import MergeOptions
    from merging.errors import MergeCancelled

    a, b = family_models["llama"], family_models["llama_tied"]
    models = [{"model": str(a)}, {"model": str(b)}]
    recipe = parse_recipe({"merge_method": "linear", "models": models, "align": {"to": str(a)}})
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(MergeCancelled, match="cancelled while aligning"):
        merge(recipe, tmp_path / "out", options=MergeOptions(cancel=cancel))
    assert list(tmp_path.iterdir()) == []
