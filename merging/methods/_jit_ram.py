# mypy: disable-error-code="call-arg"
"""The numba loops behind RAM and RAM+ (`ram.RamKernel`), imported lazily (`_method_loops`).

Blocks of `BLOCK` elements in L1 scratch, each step a plain loop that vectorises: δᵢ = xᵢ − base
from the stored inputs (bf16 widened exactly, or float32), never a whole-chunk temporary. Each
value is rounded as the torch path rounds it (the same float32 operations in the same order),
so the results are bit-identical to it; tests/merging/test_methods_ram.py compares them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._jit_loops import BLOCK, _decode, _jit, _store, _value


@_jit
def _flags_block(
    base_block: Any, x: Any, epsilon: Any, flags: Any, count: Any, first: bool
) -> None:
    """flags = [|x − base| > ε] over one block; added into ``count`` (set by the first model)."""
    for j in range(x.size):
        flag = np.uint8(1) if abs(_value(x, j) - base_block[j]) > epsilon else np.uint8(0)
        flags[j] = flag
        count[j] = flag if first else count[j] + flag


@_jit
def _block_flags(
    base: Any, xs: Any, start: int, size: int, epsilon: Any, base_block: Any, flags: Any,
    count: Any,
) -> None:  # fmt: skip
    """One block of both passes: the base widened into ``base_block``, each model's flags and
    their count (`_flags_block`)."""
    _decode(base[start : start + size], base_block)
    for m in range(len(xs)):
        _flags_block(base_block[:size], xs[m][start : start + size], epsilon, flags[m], count,
                     m == 0)  # fmt: skip


@_jit
def ram_counts(base: Any, xs: Any, epsilon: Any, shared: Any, unique: Any) -> None:
    """shared[i] += #entries where model i and another contribute (|δ| > ε), unique[i] +=
    #entries only model i changes, over this chunk (exact integer counts)."""
    n, models = base.size, len(xs)
    base_block = np.empty(BLOCK, dtype=np.float32)
    flags = np.empty((models, BLOCK), dtype=np.uint8)
    count = np.empty(BLOCK, dtype=np.uint8)
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        _block_flags(base, xs, start, size, epsilon, base_block, flags, count)
        for m in range(models):
            flag = flags[m]
            # uint16 sums (a block has BLOCK = 1024 < 2¹⁶ elements): numba would widen them to
            # int64 lanes, a quarter of the vector width
            alone, changed = np.uint16(0), np.uint16(0)
            for j in range(size):
                alone = np.uint16(alone + np.uint16(flag[j] & (count[j] == 1)))
                changed = np.uint16(changed + np.uint16(flag[j]))
            unique[m] += np.int64(alone)
            shared[m] += np.int64(changed) - np.int64(alone)


@_jit
def ram_apply(base: Any, xs: Any, epsilon: Any, plus: bool, lambdas: Any, out: Any) -> None:
    """out = base + Σᵢ termᵢ, termᵢ = zᵢ/max(c, 1) (or zᵢ·λᵢ where c = 1 with ``plus``),
    zᵢ = δᵢ·[|δᵢ| > ε]: `ram.ram_mix` then ``add_(base)``, per block of elements."""
    n, models = base.size, len(xs)
    zero, one = np.float32(0.0), np.float32(1.0)
    base_block = np.empty(BLOCK, dtype=np.float32)
    flags = np.empty((models, BLOCK), dtype=np.uint8)
    count = np.empty(BLOCK, dtype=np.uint8)
    divisor = np.empty(BLOCK, dtype=np.float32)
    total = np.empty(BLOCK, dtype=np.float32)
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        _block_flags(base, xs, start, size, epsilon, base_block, flags, count)
        for j in range(size):
            divisor[j] = np.float32(max(count[j], np.uint8(1)))
        for m in range(models):
            x, flag, lam = xs[m][start : start + size], flags[m], lambdas[m]
            first = m == 0
            for j in range(size):
                kept = (_value(x, j) - base_block[j]) * (one if flag[j] != 0 else zero)
                scaled, shared = kept * lam, kept / divisor[j]
                term = scaled if plus and count[j] == 1 else shared
                total[j] = (zero if first else total[j]) + term
        dest = out[start : start + size]
        for j in range(size):
            _store(dest, j, total[j] + base_block[j])


def warm_up() -> None:
    """Compile (or load) the loops for bf16 and float32 inputs and outputs, 1–3 models."""
    for dtype in (np.uint16, np.float32):
        base = np.zeros(4, dtype=dtype)
        for models in (1, 2, 3):
            xs = tuple(np.zeros(4, dtype=dtype) for _ in range(models))
            counts = np.zeros(models, dtype=np.int64)
            ram_counts(base, xs, np.float32(1e-5), counts, counts.copy())
            lambdas = np.ones(models, dtype=np.float32)
            for out in (np.empty(4, dtype=np.uint16), np.empty(4, dtype=np.float32)):
                ram_apply(base, xs, np.float32(1e-5), True, lambdas, out)
