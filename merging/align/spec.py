"""Which axes of which tensors a permutation may move, per architecture family (from config).

On a Llama-style decoder (Llama, Mistral, Qwen2) these permutations leave the function exactly
unchanged (in exact arithmetic):

* one **residual** permutation for the whole model: embedding columns, every RMSNorm weight,
  the input columns of q/k/v/gate/up, the output rows of o/down (and o/down biases), LM-head
  columns (a tied LM head is the embedding, so it stays tied);
* per layer one **MLP** permutation: rows of gate and up (the same one), columns of down;
* per layer one **attention** permutation: of the KV groups (a KV head moves together with its
  query heads), of the query heads inside each group, and of the value dimensions inside each
  KV head (mirrored in o_proj's columns for every query head of the group). q/k/v biases
  (Qwen2) move with their rows.

Never inside a head on q or k: under rotary embeddings each dimension pair has its own
frequency, so moving q/k dimensions (even pairs together) changes the logits.

Every tensor of the checkpoint must be described here; anything else is refused, so an
unexpected tensor can never be silently left in the wrong basis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from merging.errors import AlignmentError

SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

RESIDUAL = "residual"
# axis kinds: RESIDUAL, or (kind, layer) with kind in "mlp", "q", "k", "v", "o"; None: fixed
Axis = str | tuple[str, int] | None


@dataclass(frozen=True)
class ModelSpec:
    """The shapes alignment needs, read from a model's ``config.json``."""

    family: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads

    def describe(self) -> str:
        kind = "MHA" if self.heads == self.kv_heads else f"GQA {self.heads}/{self.kv_heads}"
        tied = ", tied embeddings" if self.tied else ""
        return (
            f"{self.family}: hidden {self.hidden}, MLP {self.intermediate}, {self.layers} layers, "
            f"{kind} heads of {self.head_dim}{tied}"
        )


def _family(config: dict[str, Any]) -> str:
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures") or []]
    if model_type in SUPPORTED and all(a == SUPPORTED[model_type] for a in architectures):
        return model_type
    found = model_type or ", ".join(architectures) or "no model_type in config.json"
    raise AlignmentError(
        f"alignment supports Llama, Mistral and Qwen2 decoders "
        f"({', '.join(SUPPORTED.values())}); this model is {found!r}. Its permutation symmetries "
        "are not described, so it cannot be aligned without risking a changed function."
    )


def model_spec(config: dict[str, Any]) -> ModelSpec:
    """Read the permutation-relevant shapes from a config.

    Raises:
        `AlignmentError`: the architecture is not a supported Llama-style decoder, or the
            config is missing a size.
    """
    family = _family(config)
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        spec = ModelSpec(
            family=family,
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise AlignmentError(f"config.json lacks a size alignment needs: {err}") from None
    if spec.heads % spec.kv_heads:
        raise AlignmentError(f"{spec.heads} query heads do not split into {spec.kv_heads} groups")
    return spec


def _layer_axes(spec: ModelSpec, layer: int) -> dict[str, tuple[Axis, ...]]:
    q, k, v, o, mlp = (("q", layer), ("k", layer), ("v", layer), ("o", layer), ("mlp", layer))
    p = f"model.layers.{layer}."
    return {
        p + "input_layernorm.weight": (RESIDUAL,),
        p + "post_attention_layernorm.weight": (RESIDUAL,),
        p + "self_attn.q_proj.weight": (q, RESIDUAL),
        p + "self_attn.q_proj.bias": (q,),
        p + "self_attn.k_proj.weight": (k, RESIDUAL),
        p + "self_attn.k_proj.bias": (k,),
        p + "self_attn.v_proj.weight": (v, RESIDUAL),
        p + "self_attn.v_proj.bias": (v,),
        p + "self_attn.o_proj.weight": (RESIDUAL, o),
        p + "self_attn.o_proj.bias": (RESIDUAL,),
        p + "mlp.gate_proj.weight": (mlp, RESIDUAL),
        p + "mlp.gate_proj.bias": (mlp,),
        p + "mlp.up_proj.weight": (mlp, RESIDUAL),
        p + "mlp.up_proj.bias": (mlp,),
        p + "mlp.down_proj.weight": (RESIDUAL, mlp),
        p + "mlp.down_proj.bias": (RESIDUAL,),
    }


def tensor_axes(spec: ModelSpec, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[Axis, ...]]:
    """For every tensor of a checkpoint, which permutation acts on each of its dimensions.

    Args:
        spec (`ModelSpec`): the model's shapes.
        shapes (`dict[str, tuple[int, ...]]`): tensor name → shape, from the headers.

    Raises:
        `AlignmentError`: a tensor the spec does not describe, or a shape that does not fit.
    """
    known: dict[str, tuple[Axis, ...]] = {
        "model.embed_tokens.weight": (None, RESIDUAL),
        "model.norm.weight": (RESIDUAL,),
        "lm_head.weight": (None, RESIDUAL),
    }
    for layer in range(spec.layers):
        known.update(_layer_axes(spec, layer))
    unknown = sorted(set(shapes) - set(known))
    if unknown:
        raise AlignmentError(
            f"{len(unknown)} tensors are not covered by the {spec.family} permutation spec "
            f"(e.g. {unknown[:3]}); refusing to align a checkpoint whose layout is not understood"
        )
    if "lm_head.weight" not in shapes and not spec.tied:
        raise AlignmentError("lm_head.weight is missing but the config does not tie embeddings")
    axes = {name: known[name] for name in shapes}
    for name, dims in axes.items():
        expected = tuple(axis_size(spec, a) for a in dims)
        got = shapes[name]
        if len(got) != len(dims) or any(e and e != g for e, g in zip(expected, got, strict=False)):
            raise AlignmentError(f"{name}: shape {list(got)} does not fit the config ({spec})")
    return axes


def axis_size(spec: ModelSpec, axis: Axis) -> int:
    """Length of an axis kind (0 for a fixed axis such as the vocabulary)."""
    if axis is None:
        return 0
    if axis == RESIDUAL:
        return spec.hidden
    kind = axis[0]
    if kind == "mlp":
        return spec.intermediate
    if kind in ("q", "o"):
        return spec.heads * spec.head_dim
    return spec.kv_heads * spec.head_dim


def permutation_keys(spec: ModelSpec) -> list[str | tuple[str, int]]:
    """The independent permutations: the residual one, then per layer attention and MLP."""
    keys: list[str | tuple[str, int]] = [RESIDUAL]
    for layer in range(spec.layers):
        keys += [("attention", layer), ("mlp", layer)]
    return keys
