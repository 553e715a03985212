"""Permutation specs from configs: supported families, refusals, coverage of every tensor."""

from __future__ import annotations

import pytest

from merging.align.spec import RESIDUAL, model_spec, tensor_axes
from merging.errors import AlignmentError, MergeError

LLAMA = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 64, "tie_word_embeddings": False,
}  # fmt: skip


def shapes_of(spec) -> dict[str, tuple[int, ...]]:
    h, i, d = spec.hidden, spec.intermediate, spec.head_dim
    out = {"model.embed_tokens.weight": (spec.vocab, h), "model.norm.weight": (h,)}
    if not spec.tied:
        out["lm_head.weight"] = (spec.vocab, h)
    for layer in range(spec.layers):
        p = f"model.layers.{layer}."
        out |= {
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (spec.heads * d, h),
            p + "self_attn.k_proj.weight": (spec.kv_heads * d, h),
            p + "self_attn.v_proj.weight": (spec.kv_heads * d, h),
            p + "self_attn.o_proj.weight": (h, spec.heads * d),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }  # fmt: skip
    return out


def test_llama_spec_reads_gqa_and_head_dim() -> None:
    spec = model_spec({**LLAMA, "head_dim": 16})
    assert (spec.heads, spec.kv_heads, spec.group, spec.head_dim) == (4, 2, 2, 16)
    assert not spec.tied
    assert "GQA 4/2" in spec.describe()


def test_defaults_mha_and_head_dim_from_hidden() -> None:
    config = {k: v for k, v in LLAMA.items() if k != "num_key_value_heads"}
    spec = model_spec({**config, "model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    assert (spec.kv_heads, spec.head_dim, spec.family) == (4, 8, "mistral")


def test_every_tensor_gets_axes_and_residual_is_everywhere() -> None:
    spec = model_spec(LLAMA)
    axes = tensor_axes(spec, shapes_of(spec))
    assert axes["model.embed_tokens.weight"] == (None, RESIDUAL)
    assert axes["model.layers.1.self_attn.o_proj.weight"] == (RESIDUAL, ("o", 1))
    assert axes["model.layers.0.mlp.down_proj.weight"] == (RESIDUAL, ("mlp", 0))
    assert all(RESIDUAL in dims or name.endswith(".bias") for name, dims in axes.items())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "'gpt2'"),
        ({**LLAMA, "architectures": ["LlamaForSequenceClassification"]}, "llama"),
        ({}, "no model_type"),
    ],
)
def test_other_architectures_are_refused(config: dict, message: str) -> None:
    with pytest.raises(AlignmentError, match="supports Llama, Mistral and Qwen2") as info:
        model_spec(config)
    assert message in str(info.value)
    assert isinstance(info.value, MergeError)
    assert isinstance(info.value, ValueError)


def test_unknown_tensor_is_refused() -> None:
    spec = model_spec(LLAMA)
    shapes = shapes_of(spec) | {"model.layers.0.self_attn.rotary.extra": (4,)}
    with pytest.raises(AlignmentError, match="not covered by the llama permutation spec"):
        tensor_axes(spec, shapes)


def test_shape_that_does_not_fit_the_config_is_refused() -> None:
    spec = model_spec(LLAMA)
    shapes = shapes_of(spec) | {"model.layers.0.mlp.up_proj.weight": (63, 32)}
    with pytest.raises(AlignmentError, match=r"up_proj\.weight: shape"):
        tensor_axes(spec, shapes)


def test_missing_lm_head_without_tied_embeddings_is_refused() -> None:
    spec = model_spec(LLAMA)
    shapes = shapes_of(spec)
    del shapes["lm_head.weight"]
    with pytest.raises(AlignmentError, match=r"lm_head\.weight is missing"):
        tensor_axes(spec, shapes)
