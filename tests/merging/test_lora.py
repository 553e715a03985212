"""LoRA adapters as sources: merge into the base (vs PEFT), task vectors, refusals, check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from merging import MergeOptions, load_recipe, merge
from merging.check import check_recipe
from merging.errors import AdapterError
from merging.lora import LoraAdapter, lora_scale, pattern_value
from merging.lora.merge import merge_into_base
from tests.helpers.tiny import build_llama, state_dict

pytest.importorskip("peft")

OPTIONS = MergeOptions(device="cpu", readers=1)


def make_adapter(base: Path, path: Path, *, seed: int, **lora: object) -> Path:
    """A random PEFT LoRA adapter of ``base`` (B ≠ 0); modules_to_save copies get noise too."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **lora}
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **lora))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.save_pretrained(path)
    return path


def merged_with_peft(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "lora",
    [
        {},
        {"use_rslora": True, "lora_alpha": 16},
        {
            "target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"],
            "rank_pattern": {"layers.0.self_attn.q_proj": 2, "down_proj": 6},
            "alpha_pattern": {"v_proj": 3},
            "modules_to_save": ["lm_head"],
        },
    ],
    ids=["plain", "rslora", "patterns-embedding-modules_to_save"],
)
def test_merge_into_base_equals_peft_merge_and_unload(tiny_models, tmp_path, lora):
    adapter = make_adapter(tiny_models["base"], tmp_path / "adapter", seed=3, **lora)
    result = merge_into_base(tiny_models["base"], adapter, tmp_path / "out", options=OPTIONS)
    got = state_dict(result.output)
    expected = merged_with_peft(tiny_models["base"], adapter)
    assert set(got) == set(expected)
    assert_same_weights(got, expected)
    changed = [n for n in got if not torch.equal(got[n], state_dict(tiny_models["base"])[n])]
    assert any("q_proj" in n for n in changed)
    card = (result.output / "README.md").read_text()
    assert "| adapter |" in card


def test_fan_in_fan_out_gpt2_conv1d(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32)
    base = tmp_path / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(base)
    adapter = make_adapter(
        base, tmp_path / "adapter", seed=1, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True
    )
    assert LoraAdapter(adapter).modules["transformer.h.0.attn.c_attn.weight"].transpose
    result = merge_into_base(base, adapter, tmp_path / "out", options=OPTIONS)
    assert_same_weights(state_dict(result.output), merged_with_peft(base, adapter))


@pytest.mark.parametrize(("method", "extra"), [("ties", "density: 0.6"), ("task_arithmetic", "")])
def test_adapter_task_vector_equals_premerged_fine_tune(tiny_models, tmp_path, method, extra):
    base, ft1 = tiny_models["base"], tiny_models["ft1"]
    adapter = make_adapter(base, tmp_path / "adapter", seed=5, target_modules=["q_proj", "o_proj"])
    premerged = merge_into_base(base, adapter, tmp_path / "premerged", options=OPTIONS).output
    head = f"merge_method: {method}\nbase_model: {base}\nparameters: {{{extra}}}\n"
    with_adapter = load_recipe(
        head + f"models:\n  - model: {ft1}\n  - model: {base}+{adapter}\n"
        "    parameters: {weight: 0.7}\n"
    )
    with_full = load_recipe(
        head
        + f"models:\n  - model: {ft1}\n  - model: {premerged}\n    parameters: {{weight: 0.7}}\n"
    )
    got = state_dict(merge(with_adapter, tmp_path / "a", options=OPTIONS).output)
    expected = state_dict(merge(with_full, tmp_path / "b", options=OPTIONS).output)
    assert_same_weights(got, expected)


def _edited(adapter: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(adapter, target)
    config = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return target


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"lora_bias": True}, "lora_bias"),
        ({"peft_type": "IA3"}, "peft_type IA3"),
        ({"init_lora_weights": "pissa"}, "modified base"),
        ({"r": 16}, "config says r=16"),
    ],
)
def test_unsupported_adapters_are_refused(tiny_models, tmp_path, changes, message):
    adapter = make_adapter(tiny_models["base"], tmp_path / "adapter", seed=0)
    edited = _edited(adapter, tmp_path / "edited", **changes)
    with pytest.raises(AdapterError, match=message):
        LoraAdapter(edited)
    recipe = load_recipe(
        f"merge_method: linear\nmodels: [{{model: {tiny_models['base']}+{edited}}}]\n"
    )
    with pytest.raises(AdapterError, match=message):
        merge(recipe, tmp_path / "out", options=OPTIONS)
    assert not (tmp_path / "out").exists()


def test_check_refuses_adapter_of_another_base(tiny_models, tmp_path):
    wide = build_llama(tmp_path / "wide", seed=4, hidden=48, tokenizer=False)
    adapter = make_adapter(tiny_models["base"], tmp_path / "adapter", seed=0)
    recipe = load_recipe(f"merge_method: linear\nmodels: [{{model: {wide}+{adapter}}}]\n")
    report = check_recipe(recipe)
    assert not report.ok
    assert any(
        "q_proj.weight is (48, 48) in the base, the adapter needs (32, 32)" in e
        for e in report.errors
    )
    with pytest.raises(AdapterError, match="does not fit its base"):
        merge(recipe, tmp_path / "out", options=OPTIONS)
    good = load_recipe(
        f"merge_method: linear\nmodels: [{{model: {tiny_models['base']}+{adapter}}}]\n"
    )
    assert check_recipe(good).ok


def test_check_refuses_adapter_of_another_architecture(tiny_models, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64)).save_pretrained(gpt2)
    adapter = make_adapter(gpt2, tmp_path / "adapter", seed=0, target_modules=["c_attn"])
    recipe = load_recipe(
        f"merge_method: linear\nmodels: [{{model: {tiny_models['base']}+{adapter}}}]\n"
    )
    errors = "\n".join(check_recipe(recipe).errors)
    assert "made for GPT2LMHeadModel" in errors
    assert "another architecture" in errors


def test_scale_and_pattern_rules_follow_peft():
    assert lora_scale(16, 4) == 4.0
    assert lora_scale(16, 4, rslora=True) == 8.0
    patterns = {"layers.0.self_attn.q_proj": 2, "v_proj": 3}
    assert pattern_value(patterns, "model.layers.0.self_attn.q_proj", 8) == 2
    assert pattern_value(patterns, "model.layers.10.self_attn.q_proj", 8) == 8
    assert pattern_value(patterns, "model.layers.1.self_attn.v_proj", 8) == 3
    assert pattern_value(patterns, "model.layers.1.self_attn.xv_proj", 8) == 8
