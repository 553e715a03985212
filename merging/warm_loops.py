"""Compile (or load) the numba merge loops for the usual kinds of inputs, and exit.

``python -m merging.warm_loops`` fills numba's cache ahead of time (the Dockerfile
runs it at build time), so that no merge waits for a compiler.
"""

from __future__ import annotations

import time

import torch

from merging.methods import _compiled, _della_fast, _method_loops, _spherical_fast


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
    _method_loops.warm_up()  # single methods' loops: RAM / RAM+, SCE
    print(f"merge loops ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
