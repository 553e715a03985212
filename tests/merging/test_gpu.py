"""The engine on a CUDA device gives the CPU's result (skipped where no GPU is present)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from merging import MergeOptions, merge, parse_recipe
from tests.helpers.tiny import state_dict

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("task_arithmetic", {"lambda": 0.8}),
        ("ties", {"density": 0.4}),
        ("dare_ties", {"density": 0.5}),
        ("slerp", {"t": 0.3}),
        ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.05}),
        ("model_stock", {}),
        ("model_stock", {"filter_wise": True}),
        ("della", {"density": 0.5, "epsilon": 0.1}),
        ("della_linear", {"density": 0.5, "rescale": "probability"}),
        ("sce", {"select_topk": 0.5}),
        ("nuslerp", {"nuslerp_flatten": False}),
        ("multislerp", {}),
        ("karcher", {}),
        ("nearswap", {"t": 0.001}),
        ("arcee_fusion", {}),
        ("ram", {}),
        ("ramplus_tl", {}),
    ],
)
def test_cuda_merge_equals_cpu_merge(
    tiny_models: dict[str, Path], tmp_path: Path, method: str, params: dict[str, float]
) -> None:
    inputs = ["ft1"] if method in ("slerp", "nearswap", "arcee_fusion") else ["ft1", "ft2"]
    recipe = parse_recipe(
        {
            "merge_method": method,
            "base_model": str(tiny_models["base"]),
            "models": [{"model": str(tiny_models[name])} for name in inputs],
            "parameters": params,
        }
    )
    cpu = merge(recipe, tmp_path / "cpu", options=MergeOptions(device="cpu"))
    gpu = merge(recipe, tmp_path / "gpu", options=MergeOptions(device="cuda"))
    expected, got = state_dict(cpu.output), state_dict(gpu.output)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
