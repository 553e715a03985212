"""Adapter combinations that stay adapters: concat (exact), lorahub (formula), svd (errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from merging.errors import AdapterError
from merging.lora import LoraAdapter
from merging.lora.combine import CombineParams, combine_adapters
from merging.lora.factors import concat_factors, svd_factors
from tests.merging.test_lora import make_adapter

pytest.importorskip("peft")

MODULES = ["q_proj", "v_proj", "embed_tokens"]


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_models["base"]
    return {
        "a4": make_adapter(base, root / "a4", seed=1, r=4, lora_alpha=8, target_modules=MODULES),
        "b4": make_adapter(
            base, root / "b4", seed=2, r=4, lora_alpha=4, use_rslora=True, target_modules=MODULES
        ),
        "c2": make_adapter(
            base,
            root / "c2",
            seed=3,
            r=2,
            lora_alpha=2,
            target_modules=["q_proj", "o_proj"],
            rank_pattern={"o_proj": 3},
        ),
    }


def peft_deltas(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """Merged-minus-base weights of an adapter folder loaded by PEFT itself."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    return {k: merged[k] - before[k] for k in before}


def weighted_deltas(paths: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path, weight in zip(paths, weights, strict=True):
        adapter = LoraAdapter(path)
        for target in adapter.modules:
            out[target] = out.get(target, 0) + weight * adapter.delta(target)
    return out


def test_concat_equals_weighted_delta_sum_and_loads_in_peft(tiny_models, adapters, tmp_path):
    paths, weights = [adapters["a4"], adapters["b4"], adapters["c2"]], [0.7, -0.3, 1.2]
    result = combine_adapters(
        paths, tmp_path / "cat", method="concat", weights=weights, base=str(tiny_models["base"])
    )
    combined = LoraAdapter(result.output)
    assert combined.modules["model.layers.0.self_attn.q_proj.weight"].rank == 4 + 4 + 2
    assert combined.modules["model.layers.0.self_attn.o_proj.weight"].rank == 3
    got = peft_deltas(tiny_models["base"], result.output)
    for target, delta in weighted_deltas(paths, weights).items():
        torch.testing.assert_close(got[target], delta, atol=1e-5, rtol=1e-4, msg=target)
    card = (result.output / "README.md").read_text()
    assert "library_name: peft" in card
    assert f"base_model: {tiny_models['base']}" in card


def test_lorahub_output_loads_and_equals_formula(tiny_models, adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    weights = [0.6, -0.4]
    result = combine_adapters(
        [adapters["a4"], adapters["b4"]], tmp_path / "hub", method="lorahub", weights=weights
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"], dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, result.output)
    a4, b4 = LoraAdapter(adapters["a4"]), LoraAdapter(adapters["b4"])
    for target, first in a4.modules.items():
        second = b4.modules[target]
        (a1, b1), (a2, b2) = a4.factors(target), b4.factors(target)
        expected_a = 0.6 * a1 - 0.4 * a2
        expected_b = 0.6 * first.scale * b1 - 0.4 * second.scale * b2
        layer = peft_model.base_model.model.get_submodule(first.module)
        assert layer.scaling["default"] == pytest.approx(1.0)
        if first.kind == "embedding":
            got_a, got_b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
        else:
            got_a, got_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        torch.testing.assert_close(got_a, expected_a, msg=target)
        torch.testing.assert_close(got_b, expected_b, msg=target)
    deltas = peft_deltas(tiny_models["base"], result.output)
    q = "model.layers.1.self_attn.q_proj.weight"
    (a1, b1), (a2, b2) = a4.factors(q), b4.factors(q)
    cross = (0.6 * a4.modules[q].scale * b1 - 0.4 * b4.modules[q].scale * b2) @ (
        0.6 * a1 - 0.4 * a2
    )
    torch.testing.assert_close(deltas[q], cross, atol=1e-5, rtol=1e-4)


def test_lorahub_refuses_mixed_ranks(adapters, tmp_path):
    with pytest.raises(AdapterError, match="same rank"):
        combine_adapters([adapters["a4"], adapters["c2"]], tmp_path / "x", method="lorahub")
    assert not (tmp_path / "x").exists()


def test_svd_error_zero_at_full_rank_positive_below(tiny_models, adapters, tmp_path):
    paths = [adapters["a4"], adapters["c2"]]
    full = combine_adapters(
        paths, tmp_path / "full", method="svd", weights=[1.0, 0.5], params=CombineParams(rank=6)
    )
    assert full.overall_error == pytest.approx(0.0, abs=1e-5)
    assert max(full.errors.values()) < 1e-5
    got = peft_deltas(tiny_models["base"], full.output)
    for target, delta in weighted_deltas(paths, [1.0, 0.5]).items():
        # float32 SVD: the error scales with the tensor's magnitude (the embedding's ΔW reaches ~25)
        scale = float(delta.abs().max())
        torch.testing.assert_close(got[target], delta, atol=1e-5 * scale, rtol=1e-4, msg=target)
    low = combine_adapters(paths, tmp_path / "low", method="svd", params=CombineParams(rank=1))
    assert low.overall_error is not None
    assert low.overall_error > 0.01
    assert all(e > 0 for e in low.errors.values())
    assert "Relative SVD reconstruction error" in (low.output / "README.md").read_text()


def test_svd_runs_any_merge_method(tiny_models, adapters, tmp_path):
    params = CombineParams(rank=4, method="ties", parameters={"density": 0.5})
    result = combine_adapters(
        [adapters["a4"], adapters["b4"]], tmp_path / "t", method="svd", params=params
    )
    assert peft_deltas(tiny_models["base"], result.output)  # loads in PEFT
    assert 0 < result.overall_error < 1


def test_modules_to_save_cannot_be_combined(tiny_models, adapters, tmp_path):
    saved = make_adapter(
        tiny_models["base"], tmp_path / "saved", seed=0, modules_to_save=["lm_head"]
    )
    with pytest.raises(AdapterError, match="modules_to_save"):
        combine_adapters([saved, adapters["a4"]], tmp_path / "x", method="concat")


def test_factor_math():
    gen = torch.Generator().manual_seed(0)
    a1, b1 = torch.randn(2, 5, generator=gen), torch.randn(3, 2, generator=gen)
    a2, b2 = torch.randn(1, 5, generator=gen), torch.randn(3, 1, generator=gen)
    a, b = concat_factors([(a1, b1), None, (a2, b2)], [2.0, 9.0, -1.0])
    torch.testing.assert_close(b @ a, 2 * b1 @ a1 - b2 @ a2)
    (a, b), error = svd_factors(b1 @ a1, 2)
    torch.testing.assert_close(b @ a, b1 @ a1, atol=1e-5, rtol=1e-5)
    assert error == pytest.approx(0.0, abs=1e-5)
