"""Each permutation family alone keeps the logits; what the spec leaves out would not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from merging.align.perms import Permutations
from merging.align.spec import model_spec, tensor_axes
from tests.helpers.tiny import state_dict
from tests.merging.align.helpers import FAMILIES

PERMUTATION_FAMILIES = ("residual", "mlp", "kv", "q", "v")
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


class Loaded:
    """One model kept in memory; logits for any state dict of the same shapes."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tensors = state_dict(path)
        self.spec = model_spec(json.loads((path / "config.json").read_text()))
        self.axes = tensor_axes(self.spec, {n: tuple(t.shape) for n, t in self.tensors.items()})

    def logits(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        result = self.model.load_state_dict(tensors, strict=False)
        assert not result.unexpected_keys
        with torch.no_grad():
            return self.model(input_ids=IDS).logits.clone()

    def permuted(self, perms: Permutations) -> dict[str, torch.Tensor]:
        return {n: perms.apply(t, self.axes[n]) for n, t in self.tensors.items()}


@pytest.fixture(scope="module")
def loaded(family_models: dict[str, Path]) -> dict[str, Loaded]:
    return {family: Loaded(path) for family, path in family_models.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("which", PERMUTATION_FAMILIES)
def test_each_permutation_family_alone_keeps_logits(
    loaded: dict[str, Loaded], family: str, which: str
) -> None:
    model = loaded[family]
    if which == "q" and model.spec.group == 1:
        pytest.skip("multi-head attention: one query head per KV head, nothing to permute")
    generator = torch.Generator().manual_seed(3)
    perms = Permutations.random(model.spec, generator, families={which})
    while perms.is_identity():
        perms = Permutations.random(model.spec, generator, families={which})
    moved = model.permuted(perms)
    assert any(not torch.equal(moved[n], t) for n, t in model.tensors.items())
    before, after = model.logits(model.tensors), model.logits(moved)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_all_families_together_keep_logits(loaded: dict[str, Loaded], family: str) -> None:
    model = loaded[family]
    perms = Permutations.random(model.spec, torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        model.logits(model.permuted(perms)), model.logits(model.tensors), rtol=0, atol=1e-5
    )


def _within_heads(rows: int, head_dim: int, pairs: torch.Tensor) -> torch.Tensor:
    """Move dimension pairs (i, i + d/2) together inside every head (rotary's pairs)."""
    inside = torch.cat([pairs, pairs + head_dim // 2])
    return torch.cat([h * head_dim + inside for h in range(rows // head_dim)])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_within_head_qk_permutation_changes_logits(loaded: dict[str, Loaded], family: str) -> None:
    """Without rotary embeddings q·k would not change; with them every pair index has its own
    frequency, so the spec must never permute q/k dimensions inside a head."""
    model = loaded[family]
    generator = torch.Generator().manual_seed(5)
    # sharpen attention (as training does): at init scale 0.02 the scores are nearly uniform
    sharp = {n: t * 25 if n.endswith(("q_proj.weight", "k_proj.weight")) else t
             for n, t in model.tensors.items()}  # fmt: skip
    moved = dict(sharp)
    for layer in range(model.spec.layers):
        pairs = torch.randperm(model.spec.head_dim // 2, generator=generator)
        for kind in ("q", "k"):
            for suffix in ("weight", "bias"):
                name = f"model.layers.{layer}.self_attn.{kind}_proj.{suffix}"
                if name in moved:
                    index = _within_heads(moved[name].shape[0], model.spec.head_dim, pairs)
                    moved[name] = moved[name].index_select(0, index)
    # the same permutation of q and k dims leaves every head's q·k unchanged before rotary
    p, d = "model.layers.0.self_attn.", model.spec.head_dim

    def scores(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return t[p + "q_proj.weight"][:d].T @ t[p + "k_proj.weight"][:d]

    torch.testing.assert_close(scores(moved), scores(sharp), rtol=1e-4, atol=1e-4)
    change = (model.logits(moved) - model.logits(sharp)).abs().max()
    assert change > 1e-2


def test_query_head_moved_to_another_group_changes_logits(loaded: dict[str, Loaded]) -> None:
    model = loaded["llama"]
    spec = model.spec
    d, group = spec.head_dim, spec.group
    moved = dict(model.tensors)
    heads = torch.arange(spec.heads)
    heads[[0, group]] = heads[[group, 0]]  # swap a query head of group 0 with one of group 1
    rows = torch.cat([h * d + torch.arange(d) for h in heads.tolist()])
    moved["model.layers.0.self_attn.q_proj.weight"] = moved[
        "model.layers.0.self_attn.q_proj.weight"
    ].index_select(0, rows)
    moved["model.layers.0.self_attn.o_proj.weight"] = moved[
        "model.layers.0.self_attn.o_proj.weight"
    ].index_select(1, rows)
    assert (model.logits(moved) - model.logits(model.tensors)).abs().max() > 1e-2


def test_permutations_round_trip_through_json(loaded: dict[str, Loaded]) -> None:
    spec = loaded["qwen2"].spec
    perms = Permutations.random(spec, torch.Generator().manual_seed(6))
    back = Permutations.from_json(spec, json.loads(json.dumps(perms.to_json())))
    for axis in [("q", 1), ("v", 0), ("o", 1), ("mlp", 0), "residual"]:
        assert torch.equal(back.index(axis), perms.index(axis))
