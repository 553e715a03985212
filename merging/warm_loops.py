"""Compile (or load) the numba merge loops for the usual kinds of inputs, and exit.

``python -m merging.warm_loops`` fills numba's cache ahead of time (the Dockerfile
runs it at build time), so that no merge waits for a compiler.
"""

from __future__ import annotations

import time

import torch

from merging.methods import (
    METHODS,
    _compiled,
    _della_fast,
    _method_loops,
    _spherical_fast,
    random_stream,
)
from merging.streaming import run_kernel


def _warm_della() -> None:
    """DELLA's fused kernel (`_della_fused`): both variants, 1–3 models, bf16 and float32
    inputs, into bf16 and float32 outputs."""
    for name in ("della", "della_linear"):
        method = METHODS.get(name)
        for dtype in (torch.bfloat16, torch.float32):
            for models in (1, 2, 3):
                sources = [method.source_params(density=0.5) for _ in range(models)]
                flats = [torch.zeros(8, dtype=dtype) for _ in range(models + 1)]
                for out_dtype in (torch.bfloat16, torch.float32):
                    assert method.kernel is not None
                    kernel = method.kernel(method.params(), sources, random_stream(0, "w"), (2, 4))
                    run_kernel(kernel, flats, torch.empty(8, dtype=out_dtype), has_base=True,
                               device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip


def main() -> None:
    if not _compiled.available:
        print("numba is not installed (or HUBMERGE_NO_JIT is set): nothing to compile")
        return
    started = time.perf_counter()
    for base, inputs in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)):
        for models in (1, 2, 3):
            _compiled.prepare(base, inputs, models, wait=True)
    magnitudes = torch.rand(2, 8)  # DELLA's ranked keep masks
    _della_fast.keep_mask(magnitudes, torch.zeros(2, 8, dtype=torch.int32),
                          lambda n: torch.arange(n, dtype=torch.int32))  # fmt: skip
    _spherical_fast.warm_up()  # NuSLERP, Multi-SLERP, Karcher, NearSwap
    _warm_della()
    _method_loops.warm_up()  # single methods' loops: RAM / RAM+, SCE
    print(f"merge loops ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
