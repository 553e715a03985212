"""Streaming: the engine holds a bounded number of tensors, whatever the model's depth."""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
import yaml

from merging import MergeOptions, load_recipe, merge
from merging.io.headers import TensorHeader
from tests.merging.method_helpers import method_parameters


class CountingSource:
    """A TensorSource test double: fresh float32 tensors on demand, counting the live ones."""

    live = 0
    peak = 0
    lock = threading.Lock()

    def __init__(self, label: str, layers: int, seed: int) -> None:
        self.label = label
        self.seed = seed
        self.config = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers}
        shapes = {"model.embed_tokens.weight": (16, 8)}
        for i in range(layers):
            for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"):
                shapes[f"model.layers.{i}.{part}.weight"] = (8, 8)
        shapes |= {"model.norm.weight": (8,), "lm_head.weight": (16, 8)}
        self.headers = {n: TensorHeader(n, s, "F32") for n, s in shapes.items()}

    @classmethod
    def _released(cls) -> None:
        with cls.lock:
            cls.live -= 1

    def get(self, name: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1000 + len(name))
        tensor = torch.randn(self.headers[name].shape, generator=generator)
        with CountingSource.lock:
            CountingSource.live += 1
            CountingSource.peak = max(CountingSource.peak, CountingSource.live)
        weakref.finalize(tensor, CountingSource._released)
        return tensor


def _streaming_peak(layers: int, method: str, tmp_path: Path, monkeypatch) -> int:
    import merging.engine

    seeds = {"/fake/base": 0, "/fake/a": 1, "/fake/b": 2}

    def open_source(spec, resolved, adapter, *, allow_pickle):
        label = spec if isinstance(spec, str) else spec.model
        return CountingSource(label, layers, seeds[label])

    monkeypatch.setattr(merging.engine, "open_source", open_source)
    CountingSource.live = CountingSource.peak = 0
    recipe = load_recipe(
        yaml.safe_dump(
            {
                "merge_method": method,
                "base_model": "/fake/base",
                "models": [{"model": "/fake/a"}, {"model": "/fake/b"}],
                "parameters": method_parameters(method),
            }
        )
    )
    options = MergeOptions(device="cpu", progress=lambda e: time.sleep(0.003))
    result = merge(recipe, tmp_path / f"out{layers}", options=options)
    assert result.tensors == 4 * layers + 3
    assert CountingSource.live == 0  # everything handed out was released
    return CountingSource.peak


@pytest.mark.parametrize("method", ["ties", "linear", "dare_linear"])
def test_peak_live_tensors_does_not_grow_with_layers(method, tmp_path, monkeypatch):
    small = _streaming_peak(4, method, tmp_path, monkeypatch)
    large = _streaming_peak(16, method, tmp_path, monkeypatch)
    options = MergeOptions()
    sources = 2 if method == "linear" else 3  # linear takes no base
    # reads in flight + tensors in the compute pipeline (two computing, one being written)
    bound = sources * (options.readers * options.prefetch + 3)
    assert small <= bound
    assert large <= bound
    # the 16-layer merge reads 67 tensors per source: if reads piled up, the peak would track
    # that, not the constant bound (exact peaks vary by a tensor or two with thread timing)
    assert (4 * 16 + 3) * sources > 5 * bound
