# mypy: disable-error-code="call-arg"
"""The numba loops behind RAM and RAM+ (`ram.RamKernel`), imported lazily (`_method_loops`).

Blocks of `BLOCK` elements in L1 scratch, each step a plain loop that vectorises: δᵢ = xᵢ − base
from the stored inputs (bf16 widened exactly, or float32), never a whole-chunk temporary. Each
value is rounded as the torch path rounds it (the same float32 operations in the same order),
so the results are bit-identical to it; tests/merging/test_methods_ram.py compares them.

Two models (a base and two fine-tunes, the common recipe) take fused loops instead
(`ram_counts2`, `ram_apply2`): every value of an element in registers, one pass over the
inputs, no per-block scratch. They compute the same float32 operations on each element (with
two models a divisor is 1 or 2, and x / 2 = x · 0.5 exactly), so the same values.
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


@_jit
def ram_counts2(base: Any, x0: Any, x1: Any, epsilon: Any, shared: Any, unique: Any) -> None:
    """`ram_counts` for two models in one loop per block: an entry is unique to model i when
    its flag is set and the other's is not (the count is 1 exactly when the flags differ)."""
    n = base.size
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        b, a0, a1 = base[start:stop], x0[start:stop], x1[start:stop]
        alone0, alone1 = np.uint16(0), np.uint16(0)  # (uint16 lanes, as `ram_counts`)
        changed0, changed1 = np.uint16(0), np.uint16(0)
        for j in range(stop - start):
            q = _value(b, j)
            f0 = np.uint16(1) if abs(_value(a0, j) - q) > epsilon else np.uint16(0)
            f1 = np.uint16(1) if abs(_value(a1, j) - q) > epsilon else np.uint16(0)
            alone = f0 ^ f1
            alone0 = np.uint16(alone0 + (f0 & alone))
            alone1 = np.uint16(alone1 + (f1 & alone))
            changed0 = np.uint16(changed0 + f0)
            changed1 = np.uint16(changed1 + f1)
        unique[0] += np.int64(alone0)
        unique[1] += np.int64(alone1)
        shared[0] += np.int64(changed0) - np.int64(alone0)
        shared[1] += np.int64(changed1) - np.int64(alone1)


@_jit
def ram_apply2(
    base: Any, x0: Any, x1: Any, epsilon: Any, plus: bool, lambdas: Any, out: Any
) -> None:  # fmt: skip
    """`ram_apply` for two models, one element at a time: termᵢ = zᵢ·sᵢ with sᵢ = 0.5 where
    both contribute (zᵢ / 2), λᵢ where only one does and ``plus`` (else 1: zᵢ / 1), 1 where
    none does; out = base + ((0 + term₀) + term₁)."""
    zero, one, half = np.float32(0.0), np.float32(1.0), np.float32(0.5)
    lambda0 = lambdas[0] if plus else one
    lambda1 = lambdas[1] if plus else one
    for i in range(out.size):
        q = _value(base, i)
        d0 = _value(x0, i) - q
        d1 = _value(x1, i) - q
        f0 = abs(d0) > epsilon
        f1 = abs(d1) > epsilon
        kept0 = d0 * (one if f0 else zero)
        kept1 = d1 * (one if f1 else zero)
        both, alone = f0 and f1, f0 != f1
        scale0 = half if both else (lambda0 if alone else one)
        scale1 = half if both else (lambda1 if alone else one)
        _store(out, i, ((zero + kept0 * scale0) + kept1 * scale1) + q)


def warm_up() -> None:
    """Compile (or load) the loops for bf16 and float32 inputs and outputs, 1–3 models (and
    the two-model ones)."""
    for dtype in (np.uint16, np.float32):
        base = np.zeros(4, dtype=dtype)
        for models in (1, 2, 3):
            xs = tuple(np.zeros(4, dtype=dtype) for _ in range(models))
            counts = np.zeros(models, dtype=np.int64)
            ram_counts(base, xs, np.float32(1e-5), counts, counts.copy())
            if models == 2:
                ram_counts2(base, xs[0], xs[1], np.float32(1e-5), counts, counts.copy())
            lambdas = np.ones(models, dtype=np.float32)
            for out in (np.empty(4, dtype=np.uint16), np.empty(4, dtype=np.float32)):
                ram_apply(base, xs, np.float32(1e-5), True, lambdas, out)
                if models == 2:
                    ram_apply2(base, xs[0], xs[1], np.float32(1e-5), True, lambdas, out)
