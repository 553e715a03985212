"""Tiny, seeded, locally built models for tests: no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    f"{a} plus {b} is {a + b}. the {w} jumps over the {v}."
    for a in range(20)
    for b in range(10)
    for w, v in [("fox", "dog"), ("cat", "mat")]
]


def train_tokenizer(path: Path, vocab_size: int = 96) -> None:
    """A byte-level BPE tokenizer trained on a small synthetic corpus, saved HF-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="</s>",
    )  # fmt: skip
    fast.save_pretrained(path)


def llama_config(layers: int = 2, hidden: int = 32, vocab: int = 384, tie: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def build_llama(
    path: Path,
    *,
    seed: int,
    base: Path | None = None,
    scale: float = 0.02,
    layers: int = 2,
    hidden: int = 32,
    vocab: int = 384,
    dtype: torch.dtype = torch.float32,
    shard_size: str = "20KB",
    tokenizer: bool = True,
) -> Path:
    """Save a tiny LlamaForCausalLM: random (seeded), or ``base`` plus seeded noise.

    A small ``shard_size`` makes save_pretrained write several shards and an index.
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    if base is not None:
        model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    else:
        model = LlamaForCausalLM(llama_config(layers, hidden, vocab))
    model.to(dtype).save_pretrained(path, max_shard_size=shard_size, safe_serialization=True)
    if tokenizer:
        train_tokenizer(path)
    return path


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model folder (sharded or not)."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for name in files:
        out.update(load_file(path / name))
    return out
