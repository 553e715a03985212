# mypy: disable-error-code="call-arg"
"""The numba loops behind SCE's compiled path (`sce.SceKernel`), imported lazily
(`_method_loops`).

Blocks of `BLOCK` elements in L1 scratch, each step a plain loop over the block: the task
vectors δᵢ = xᵢ − base from the stored inputs (bf16 widened exactly, or float32), their mean and
variance (`sce.variance`'s float32 operations in its order, so the same bits), then counts,
sums or the merged output. Nothing chunk-sized is written but the output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._jit_loops import BLOCK, _decode, _float_to_bits, _fma, _jit, _store, _value

LANES = 8  # float64 sums: element j of a chunk goes to lane j mod 8; lanes added in order

_U0 = np.uint32(0)


@_jit
def _variance_block(base: Any, xs: Any, start: int, size: int, base_block: Any, deltas: Any,
                    mean: Any, bits: Any) -> None:  # fmt: skip
    """deltas[m] = δₘ, and bits = the bit pattern of Var = (1/k)·Σₘ (δₘ − δ̄)² (as `variance`:
    δ̄ = (δ₀ + δ₁ + …)/k, then (0 + (δ₀ − δ̄)² + …)/k), over one block."""
    models = len(xs)
    k = np.float32(models)
    _decode(base[start : start + size], base_block)
    for m in range(models):
        x, delta = xs[m][start : start + size], deltas[m]
        for j in range(size):
            d = _value(x, j) - base_block[j]
            delta[j] = d
            mean[j] = d if m == 0 else mean[j] + d
    for j in range(size):
        mean[j] = mean[j] / k
    spread = base_block  # (the base is not needed again in this block)
    for m in range(models):
        delta = deltas[m]
        for j in range(size):
            d = delta[j] - mean[j]
            spread[j] = (np.float32(0.0) if m == 0 else spread[j]) + d * d
    for j in range(size):
        bits[j] = _float_to_bits(spread[j] / k)


@_jit
def sce_observe(base: Any, xs: Any, bounds: Any, counts: Any, sum_from: int, part: int,
                sums: Any) -> int:  # fmt: skip
    """Over one chunk: counts[c] += #(Var bits ≥ bounds[c]) for the four bounds; sums[p, m] =
    Σ δₘ² (float64) over the elements of the p-th run of ``part`` elements with Var bits ≥
    ``sum_from`` (lane by lane, see `LANES`: the sums of a chunking into runs of ``part``);
    returns the number of zero variances."""
    n, models = base.size, len(xs)
    base_block = np.empty(BLOCK, dtype=np.float32)
    deltas = np.empty((models, BLOCK), dtype=np.float32)
    mean = np.empty(BLOCK, dtype=np.float32)
    bits = np.empty(BLOCK, dtype=np.uint32)
    squares = np.empty(BLOCK, dtype=np.float64)
    lanes = np.zeros((models, LANES), dtype=np.float64)
    b0, b1, b2, b3 = (
        np.uint32(bounds[0]),
        np.uint32(bounds[1]),
        np.uint32(bounds[2]),
        np.uint32(bounds[3]),
    )
    low = np.uint32(sum_from)
    zeros = 0
    for first in range(0, n, part):
        end = min(n, first + part)
        for start in range(first, end, BLOCK):  # lanes follow j mod 8 within the run
            size = min(BLOCK, end - start)
            _variance_block(base, xs, start, size, base_block, deltas, mean, bits)
            t0, t1, t2, t3, tz = _U0, _U0, _U0, _U0, _U0
            for j in range(size):  # (uint32 casts: numba would widen the sums to int64 lanes)
                v = bits[j]
                t0 = np.uint32(t0 + np.uint32(v >= b0))
                t1 = np.uint32(t1 + np.uint32(v >= b1))
                t2 = np.uint32(t2 + np.uint32(v >= b2))
                t3 = np.uint32(t3 + np.uint32(v >= b3))
                tz = np.uint32(tz + np.uint32(v == 0))
            counts[0] += t0
            counts[1] += t1
            counts[2] += t2
            counts[3] += t3
            zeros += tz
            whole = size - size % LANES
            for m in range(models):
                delta, lane = deltas[m], lanes[m]
                for j in range(size):
                    d = np.float64(delta[j])
                    squares[j] = d * d if bits[j] >= low else 0.0
                for j in range(0, whole, LANES):
                    for q in range(LANES):
                        lane[q] += squares[j + q]
                for j in range(whole, size):
                    lane[j - whole] += squares[j]
        for m in range(models):
            total = lanes[m, 0]
            for q in range(1, LANES):
                total += lanes[m, q]
            sums[first // part, m] = total
            lanes[m, :] = 0.0
    return zeros


@_jit
def sce_gather(base: Any, xs: Any, low: int, high: int, out: Any) -> int:
    """Write the Var bit patterns of this chunk in [low, high) to ``out`` (element order);
    return how many."""
    n, models = base.size, len(xs)
    base_block = np.empty(BLOCK, dtype=np.float32)
    deltas = np.empty((models, BLOCK), dtype=np.float32)
    mean = np.empty(BLOCK, dtype=np.float32)
    bits = np.empty(BLOCK, dtype=np.uint32)
    lo, hi = np.int64(low), np.int64(high)
    k = 0
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        _variance_block(base, xs, start, size, base_block, deltas, mean, bits)
        for j in range(size):
            v = bits[j]
            wide = np.int64(v)
            if wide >= lo and wide < hi:
                out[k] = v
                k += 1
    return k


@_jit
def sce_apply(base: Any, xs: Any, select: bool, threshold: int, weights: Any, out: Any) -> None:
    """`sce.erase_and_mix` of the selected task vectors (Var bits ≥ ``threshold`` with
    ``select``, else all), per element: sᵢ = δᵢ·[kept], the sign of Σ sᵢ (+ at 0), eᵢ =
    max(sign(sᵢ)·sign, 0)·wᵢ, θ = Σ sᵢ·eᵢ (fused multiply-adds, as ``addcmul_``) /
    max(Σ eᵢ, 1e-6) + base."""
    n, models = base.size, len(xs)
    zero, one, half = np.float32(0.0), np.float32(1.0), np.float32(0.5)
    floor = np.float32(1e-6)
    base_block = np.empty(BLOCK, dtype=np.float32)
    saved = np.empty(BLOCK, dtype=np.float32)
    deltas = np.empty((models, BLOCK), dtype=np.float32)
    mean = np.empty(BLOCK, dtype=np.float32)
    bits = np.empty(BLOCK, dtype=np.uint32)
    cut = np.uint32(threshold)
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        _variance_block(base, xs, start, size, base_block, deltas, mean, bits)
        _decode(base[start : start + size], saved)  # (the variance overwrote base_block)
        dest = out[start : start + size]
        for j in range(size):
            keep = one if (not select or bits[j] >= cut) else zero
            score = zero
            for m in range(models):
                s = deltas[m, j] * keep
                deltas[m, j] = s
                score = s if m == 0 else score + s
            sign = one if score > zero else (-one if score < zero else zero)
            sign = sign + half
            sign = one if sign > zero else (-one if sign < zero else sign)
            merged, divisor = zero, zero
            for m in range(models):
                s = deltas[m, j]
                vote = one if s > zero else (-one if s < zero else zero)
                agree = vote * sign
                agree = zero if agree < zero else agree  # clamp(min=0): −0 stays −0
                erased = agree * weights[m]
                merged = _fma(s, erased, merged)
                divisor = divisor + erased
            divisor = divisor if divisor >= floor else floor
            _store(dest, j, merged / divisor + saved[j])


def warm_up() -> None:
    """Compile (or load) the loops for bf16 and float32 inputs and outputs, 2–3 models."""
    bounds = np.zeros(4, dtype=np.int64)
    for dtype in (np.uint16, np.float32):
        base = np.zeros(4, dtype=dtype)
        for models in (2, 3):
            xs = tuple(np.zeros(4, dtype=dtype) for _ in range(models))
            sce_observe(base, xs, bounds, np.zeros(4, dtype=np.int64), 0, 4,
                        np.zeros((1, models), dtype=np.float64))  # fmt: skip
            sce_gather(base, xs, 0, 1, np.zeros(5, dtype=np.uint32))
            weights = np.ones(models, dtype=np.float32)
            for out in (np.empty(4, dtype=np.uint16), np.empty(4, dtype=np.float32)):
                sce_apply(base, xs, True, 0, weights, out)
