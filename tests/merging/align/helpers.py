"""Tiny seeded Llama / Qwen2 / Mistral models for the alignment tests (built locally)."""

from __future__ import annotations

from pathlib import Path

import torch

from merging.align.perms import Permutations
from merging.align.spec import model_spec, tensor_axes
from tests.helpers.tiny import state_dict, train_tokenizer

FAMILIES = ("llama", "llama_tied", "qwen2", "mistral_mha")


def tiny_config(family: str, *, hidden: int = 32, layers: int = 2, vocab: int = 64) -> object:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "llama_tied":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    if family == "mistral_mha":
        return MistralConfig(**{**common, "num_key_value_heads": 4}, tie_word_embeddings=False)
    raise ValueError(family)


def build(
    path: Path, family: str, *, seed: int, dtype: torch.dtype = torch.float32,
    tokenizer: bool = False,
) -> Path:  # fmt: skip
    """A randomly initialised model whose norms and biases are random too (so every
    permutation family is visible in the logits); with ``tokenizer``, vocabulary 384 and a
    locally trained tokenizer (for the probe)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab=384 if tokenizer else 64))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", ".bias")):
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    model.to(dtype).save_pretrained(path, max_shard_size="40KB")
    if tokenizer:
        train_tokenizer(path)
    return path


def permute_folder(source: Path, destination: Path, perms: Permutations) -> Path:
    """Save ``source`` with ``perms`` applied to every tensor (via transformers' save)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    spec = model_spec(model.config.to_dict())
    tensors = state_dict(source)
    axes = tensor_axes(spec, {n: tuple(t.shape) for n, t in tensors.items()})
    permuted = {n: perms.apply(t, axes[n]) for n, t in tensors.items()}
    missing = model.load_state_dict(permuted, strict=False)
    assert not missing.unexpected_keys
    model.save_pretrained(destination)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            (destination / name).write_bytes((source / name).read_bytes())
    return destination


def logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def build_trained(path: Path, *, seed: int, steps: int = 40) -> Path:
    """A tiny Llama (vocabulary 384, local tokenizer) trained for a few steps on the demo
    corpus, so that interpolating it with a shuffled copy of itself climbs a real barrier."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from app.demo import CORPUS, train_lm

    path.mkdir(parents=True, exist_ok=True)
    train_tokenizer(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab=len(tokenizer)))
    train_lm(model, tokenizer, CORPUS[::4], seed=seed, steps=steps)
    model.save_pretrained(path)
    return path
