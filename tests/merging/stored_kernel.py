"""Run a method's kernel on stored (bf16 or float32) flat inputs into an output buffer of the
stored dtype, as the engine does, with the compiled loops or with the torch path."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from merging import METHODS
from merging.methods import _compiled, random_stream
from merging.streaming import run_kernel
from tests.merging.kernel_helpers import validated


def stored_kernel(
    name, base, inputs, *, compiled, monkeypatch: pytest.MonkeyPatch, chunk=1 << 18,
    threads=None, out_dtype=None, **parameters,
):  # fmt: skip
    """The kernel's output (``out_dtype``, default the inputs' dtype) over chunks of ``chunk``;
    ``compiled=False`` runs the torch path (as ``HUBMERGE_NO_JIT=1`` would)."""
    with monkeypatch.context() as patch:
        if not compiled:
            patch.setattr(_compiled, "available", False)
        params, sources = validated(name, [1.0] * len(inputs), parameters)
        shape = tuple(inputs[0].shape)
        kernel = METHODS.get(name).kernel(params, sources, random_stream(0, "w"), shape)
        flats = [t.reshape(-1) for t in (base, *inputs)]
        out = torch.empty(flats[1].numel(), dtype=out_dtype or inputs[0].dtype)
        pool = ThreadPoolExecutor(threads) if threads else None
        try:
            run_kernel(kernel, flats, out, has_base=True, device=torch.device("cpu"),
                       dtype=torch.float32, chunk=chunk, pool=pool)  # fmt: skip
        finally:
            if pool is not None:
                pool.shutdown()
    return out.view(shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (signed zeros and NaN payloads included)."""
    ints = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
    return a.dtype == b.dtype and torch.equal(a.reshape(-1).view(ints[a.dtype]),
                                              b.reshape(-1).view(ints[b.dtype]))  # fmt: skip
