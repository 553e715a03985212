"""Run a registered method's chunked kernel on whole tensors, as the engine's driver does."""

from __future__ import annotations

from typing import Any

import torch

from merging import METHODS
from merging.methods import random_stream
from merging.streaming import run_kernel


def validated(name: str, weights: list[float], parameters: dict[str, Any]) -> tuple[Any, Any]:
    """(global params, per-source params) of a method from one flat parameter dict."""
    method = METHODS.get(name)
    per_source = set(method.source_params.model_fields)
    shared = {k: v for k, v in parameters.items() if k in per_source}
    params = method.params.model_validate(
        {k: v for k, v in parameters.items() if k not in per_source}
    )
    sources = [method.source_params.model_validate({**shared, "weight": w}) for w in weights]
    return params, sources


def pure(name, base, inputs, weights=None, *, seed=0, tensor="w", **parameters):
    """The method's reference function."""
    weights = weights if weights is not None else [1.0] * len(inputs)
    params, sources = validated(name, weights, parameters)
    return METHODS.get(name).fn(base, inputs, sources, params, random_stream(seed, tensor))


def chunked(name, base, inputs, weights=None, *, chunk=7, seed=0, tensor="w", threads=None,
            **parameters):  # fmt: skip
    """The method's kernel over flat chunks of ``chunk`` elements (``base`` may be None)."""
    from concurrent.futures import ThreadPoolExecutor

    weights = weights if weights is not None else [1.0] * len(inputs)
    params, sources = validated(name, weights, parameters)
    method = METHODS.get(name)
    shape = tuple(inputs[0].shape)
    kernel = method.kernel(params, sources, random_stream(seed, tensor), shape)
    assert kernel is not None, f"{name} declined a kernel for shape {shape}"
    flats = [t.reshape(-1) for t in ([base] if base is not None else []) + list(inputs)]
    out = torch.empty(inputs[0].numel())
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        run_kernel(kernel, flats, out, has_base=base is not None, device=torch.device("cpu"),
                   dtype=torch.float32, chunk=chunk, pool=pool)  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown()
    return out.view(shape)
