# mypy: disable-error-code="call-arg, var-annotated"
"""The numba loops behind SCE's compiled path (`sce.SceKernel`), imported lazily
(`_method_loops`).

One loop per element computes the task vectors δᵢ = xᵢ − base from the stored inputs (bf16
widened exactly, or float32), their mean and variance (`sce.variance`'s float32 operations in
its order, so the same bits; `_variance_at`), then the counts, the merged output or the values
gathered, all in registers (LLVM vectorises it across elements; the loops index with unsigned
integers, which need no wraparound check). The float64 sums of δᵢ² go through L1 scratch of
`BLOCK` elements into eight lanes kept in vector registers (`_lane_squares`). Nothing
chunk-sized is written but the output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from merging.methods._jit_loops import BLOCK, _float_to_bits, _fma, _jit, _store, _value

LANES = 8  # float64 sums: element j of a chunk goes to lane j mod 8; lanes added in order

_U0 = np.uint32(0)


@_jit
def _variance_at(base: Any, xs: Any, j: int) -> Any:
    """Var = (1/k)·Σₘ (δₘ − δ̄)² at element j, as `sce.variance` computes it (δ̄ = (δ₀ + δ₁ +
    …)/k, then (0 + (δ₀ − δ̄)² + …)/k, float32), the δₘ = xₘ − base recomputed from the stored
    values for each sum (cheaper than keeping them)."""
    models = len(xs)
    k = np.float32(models)
    b = _value(base, j)
    total = np.float32(0.0)
    for m in range(models):
        d = _value(xs[m], j) - b
        total = d if m == 0 else total + d
    mean = total / k
    spread = np.float32(0.0)
    for m in range(models):
        d = (_value(xs[m], j) - b) - mean
        spread = spread + d * d
    return spread / k


@intrinsic
def _lane_squares(typingctx: Any, row: Any, groups: Any, lane: Any) -> Any:
    """lane[q] += Σ float64(row[j])² over j < 8·``groups`` with j mod 8 = q, each lane's terms
    in order (`LANES` = 8): one vector of eight float64 sums held in registers through the
    loop (numba keeps ``lane`` in memory, so each add of a plain loop waits on the last
    store). Squares of float32 values are exact in float64; each lane's adds are the scalar
    adds in the same order, so the sums are bit for bit those of a plain loop."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        floats = ir.VectorType(ir.FloatType(), LANES)
        doubles = ir.VectorType(ir.DoubleType(), LANES)
        row_at = context.make_array(signature.args[0])(context, builder, args[0]).data
        lane_at = context.make_array(signature.args[2])(context, builder, args[2]).data
        row_at = builder.bitcast(row_at, floats.as_pointer())
        lane_at = builder.bitcast(lane_at, doubles.as_pointer())
        entry = builder.block
        loop, body, done = (builder.append_basic_block(name) for name in ("loop", "body", "done"))
        start = builder.load(lane_at, align=8)
        builder.branch(loop)
        builder.position_at_end(loop)
        index = builder.phi(args[1].type)
        total = builder.phi(doubles)
        index.add_incoming(ir.Constant(args[1].type, 0), entry)
        total.add_incoming(start, entry)
        builder.cbranch(builder.icmp_signed("<", index, args[1]), body, done)
        builder.position_at_end(body)
        wide = builder.fpext(builder.load(builder.gep(row_at, [index]), align=4), doubles)
        index.add_incoming(builder.add(index, ir.Constant(args[1].type, 1)), body)
        total.add_incoming(builder.fadd(total, builder.fmul(wide, wide)), body)
        builder.branch(loop)
        builder.position_at_end(done)
        builder.store(total, lane_at, align=8)
        return context.get_dummy_value()

    ok = (row, types.float32, 1), (lane, types.float64, 1)
    if not all(isinstance(a, types.Array) and a.layout == "C" and (a.dtype, a.ndim) == (d, k)
               for a, d, k in ok):  # fmt: skip
        return None  # (vector loads and stores need contiguous elements)
    return types.void(row, types.intp, lane), codegen


@_jit
def sce_observe(base: Any, xs: Any, bounds: Any, counts: Any, sum_from: int, part: int,
                sums: Any) -> int:  # fmt: skip
    """Over one chunk: counts[c] += #(Var bits ≥ bounds[c]) for the four bounds; sums[p, m] =
    Σ δₘ² (float64) over the elements of the p-th run of ``part`` elements with Var bits ≥
    ``sum_from`` (lane by lane, see `LANES`: the sums of a chunking into runs of ``part``);
    returns the number of zero variances. Per block: one loop for the variances, the counts
    and the selected δₘ (float32, zero where not selected), then each model's lane sums."""
    n, models = base.size, len(xs)
    chosen = np.empty((models, BLOCK), dtype=np.float32)
    lanes = np.zeros((models, LANES), dtype=np.float64)
    zero = np.float32(0.0)
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
            at = np.uint64(start)  # (unsigned indices: no wraparound check per element)
            t0, t1, t2, t3, tz = _U0, _U0, _U0, _U0, _U0
            for j in range(size):  # (uint32 casts: numba would widen the sums to int64 lanes)
                i = at + np.uint64(j)
                v = _float_to_bits(_variance_at(base, xs, i))
                t0 = np.uint32(t0 + np.uint32(v >= b0))
                t1 = np.uint32(t1 + np.uint32(v >= b1))
                t2 = np.uint32(t2 + np.uint32(v >= b2))
                t3 = np.uint32(t3 + np.uint32(v >= b3))
                tz = np.uint32(tz + np.uint32(v == 0))
                keep = v >= low
                b = _value(base, i)
                for m in range(models):
                    chosen[m, j] = (_value(xs[m], i) - b) if keep else zero
            counts[0] += t0
            counts[1] += t1
            counts[2] += t2
            counts[3] += t3
            zeros += tz
            whole = size - size % LANES
            for m in range(models):
                row, lane = chosen[m], lanes[m]
                _lane_squares(row, whole // LANES, lane)
                for j in range(whole, size):
                    d = np.float64(row[j])
                    lane[j - whole] += d * d
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
    n = base.size
    bits = np.empty(BLOCK, dtype=np.uint32)
    lo, hi = np.int64(low), np.int64(high)
    k = 0
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        at = np.uint64(start)
        for j in range(size):  # (vectorised; the appends below are not)
            bits[j] = _float_to_bits(_variance_at(base, xs, at + np.uint64(j)))
        for j in range(size):
            v = bits[j]
            wide = np.int64(v)
            if wide >= lo and wide < hi:
                out[k] = v
                k += 1
    return k


@_jit
def _erase(s: Any, sign: Any, weight: Any) -> Any:
    """eᵢ = max(sign(sᵢ)·sign, 0)·wᵢ (sign(0) = 0; a −0 product stays −0, as ``clamp``)."""
    zero, one = np.float32(0.0), np.float32(1.0)
    vote = one if s > zero else (-one if s < zero else zero)
    agree = vote * sign
    return (zero if agree < zero else agree) * weight


@_jit
def sce_apply(base: Any, xs: Any, select: bool, threshold: int, weights: Any, out: Any) -> None:
    """`sce.erase_and_mix` of the selected task vectors (Var bits ≥ ``threshold`` with
    ``select``, else all), per element: sᵢ = δᵢ·[kept], the sign of Σ sᵢ (+ at 0), eᵢ
    (`_erase`), θ = Σ sᵢ·eᵢ (fused multiply-adds, as ``addcmul_``) / max(Σ eᵢ, 1e-6) + base."""
    zero, one = np.float32(0.0), np.float32(1.0)
    floor = np.float32(1e-6)
    cut = np.uint32(threshold)
    for j in range(np.uint64(base.size)):  # (unsigned indices: no wraparound check)
        b = _value(base, j)
        keep = one if (not select or _float_to_bits(_variance_at(base, xs, j)) >= cut) else zero
        score = zero
        for m in range(len(xs)):
            s = (_value(xs[m], j) - b) * keep
            score = s if m == 0 else score + s
        sign = -one if score < zero else one
        merged, divisor = zero, zero
        for m in range(len(xs)):
            s = (_value(xs[m], j) - b) * keep
            erased = _erase(s, sign, weights[m])
            merged = _fma(s, erased, merged)
            divisor = divisor + erased
        _store(out, j, merged / (divisor if divisor >= floor else floor) + b)


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
