"""Shared strategies and helpers for the merge-method tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from merging import METHODS
from merging.methods import random_stream

SETTINGS = settings(max_examples=30, deadline=None)
FINITE = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)
# Multiples of 1/8 in [-8, 8]: sums and differences of a few of them are exact in float32,
# so results that may only differ by summation order must be bit-identical.
GRID = st.integers(-64, 64).map(lambda i: i / 8)
GRID_WEIGHTS = st.integers(-8, 8).map(lambda i: i / 4)
SHAPES = array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=5)

TASK_VECTOR_METHODS = [
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
]
DETERMINISTIC_MULTI = [
    "linear",
    "task_arithmetic",
    "ties",
    "breadcrumbs",
    "breadcrumbs_ties",
]


def call(
    name: str,
    base: torch.Tensor | None,
    inputs: list[torch.Tensor],
    weights: list[float] | None = None,
    *,
    tensor: str = "model.layers.0.mlp.up_proj.weight",
    seed: int = 0,
    **parameters: Any,
) -> torch.Tensor:
    """Run a registered method the way the engine does: params models + seeded generator."""
    method = METHODS.get(name)
    per_source_keys = set(method.source_params.model_fields)
    shared = {k: v for k, v in parameters.items() if k in per_source_keys}
    params = method.params.model_validate(
        {k: v for k, v in parameters.items() if k not in per_source_keys}
    )
    weights = weights if weights is not None else [1.0] * len(inputs)
    sources = [method.source_params.model_validate({**shared, "weight": w}) for w in weights]
    return method.fn(base, inputs, sources, params, random_stream(seed, tensor))


@st.composite
def models(draw, count=None, elements=FINITE):
    """(base, [inputs…]) of one random shape."""
    shape = draw(SHAPES)
    n = draw(count if count is not None else st.integers(1, 4))
    make = arrays(np.float32, shape, elements=elements).map(torch.from_numpy)
    return draw(make), [draw(make) for _ in range(n)]


def method_parameters(name: str) -> dict[str, Any]:
    return {
        "ties": {"density": 0.5},
        "dare_linear": {"density": 0.5},
        "dare_ties": {"density": 0.5},
        "breadcrumbs": {"density": 0.5, "gamma": 0.1},
        "breadcrumbs_ties": {"density": 0.5, "gamma": 0.1},
        "slerp": {"t": 0.3},
        "della": {"density": 0.5, "epsilon": 0.1},
        "della_linear": {"density": 0.5, "epsilon": 0.1},
        "sce": {"select_topk": 0.5},
        "nearswap": {"t": 0.05},
    }.get(name, {})
