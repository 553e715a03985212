"""The bound's output size (`benchmarks/bare_copy._output_sizes`): a slice plan's layers."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from benchmarks.bare_copy import _output_sizes


def test_a_slice_plan_writes_the_layers_its_slices_take(tmp_path) -> None:
    tensors = {
        "model.embed_tokens.weight": torch.zeros(8),
        "model.layers.0.mlp.weight": torch.zeros(4),
        "model.layers.1.mlp.weight": torch.zeros(4),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    size = (tmp_path / "model.safetensors").stat().st_size
    assert _output_sizes(tmp_path, {"models": []}) == [size]
    slices = [
        {"sources": [{"model": "a", "layer_range": [0, 2]}]},
        {"sources": [{"model": "b", "layer_range": [1, 2]}]},
    ]
    # three layers out of two: one more layer's 16 bytes
    assert _output_sizes(tmp_path, {"slices": slices}) == [size + 16]
