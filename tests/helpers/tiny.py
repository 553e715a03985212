"""Tiny, seeded, locally built models for tests: no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from app.demo import CORPUS, llama_config, train_tokenizer

__all__ = ["CORPUS", "build_llama", "llama_config", "state_dict", "train_tokenizer"]


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
