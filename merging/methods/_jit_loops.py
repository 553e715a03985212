# mypy: disable-error-code="call-arg"
# (numba intrinsics are called without the typing context their definitions take)
"""The numba loops behind `_compiled` (imported lazily, off the critical path: importing numba
and loading the cached machine code takes a second or more).

Blocks of `BLOCK` elements are widened into float32 scratch, then every step is a plain loop
over the block that LLVM vectorises. No fast-math flags: each value is rounded exactly as the
torch kernels round it.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from merging.methods._streams import _jump

BLOCK = 1024  # elements per inner block: a few KB of scratch per model, in L1
# per-model sparsification modes, and the rescale after a DARE mask (as in `_compiled`)
DENSE, TRIM, MASK = 0, 1, 2
RESCALE_NONE, RESCALE_MUL, RESCALE_DIV = 0, 1, 2

_jit = numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)
PCG_MULTIPLIER = 0xDA942042E4DD58B5  # PCG64DXSM's 64-bit ("cheap") multiplier
RAWS_PER_BLOCK = 1 << 14  # 64-bit draws per 65,536-element mask block (`_ops.BLOCK`)
# the generator's interleaved lanes (`_streams.LANES`); numba caches each caller of
# `_pcg_raws` by its own file: a new layout must touch _jit_dare.py and _jit_della_rows.py too
PCG_LANES = 32
_STEP_A, _STEP_G = _jump(PCG_LANES)  # one lane's step, PCG_LANES draws: s → a·s + g·inc
_STEP_G_HIGH, _STEP_G_LOW = np.uint64(_STEP_G >> 64), np.uint64(_STEP_G & ((1 << 64) - 1))


@intrinsic
def _bits_to_float(typingctx: Any, bits: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _float_to_bits(typingctx: Any, value: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


def fused_multiply_add(kind: Any, llvm_type: Any) -> Any:
    """An intrinsic a·b + c rounded once (LLVM's ``llvm.fma``) in one float type."""

    def fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            function = builder.module.declare_intrinsic(
                "llvm.fma", [llvm_type], ir.FunctionType(llvm_type, [llvm_type] * 3)
            )
            return builder.call(function, args)

        return kind(kind, kind, kind), codegen

    return intrinsic(fma)


# a·b + c in float32, rounded once (torch's vectorised ``add_(x, alpha=...)`` is a fused
# multiply-add)
_fma = fused_multiply_add(types.float32, ir.FloatType())


def _value(array, index):  # type: ignore[no-untyped-def]  # (numba matches signatures)
    """Element ``index`` as float32 (bf16 bit patterns are widened exactly)."""


@overload(_value, inline="always")
def _value_impl(array, index):  # type: ignore[no-untyped-def]
    if array.dtype == types.uint16:
        return lambda array, index: _bits_to_float(np.uint32(array[index]) << np.uint32(16))
    return lambda array, index: np.float32(array[index])


def _store(array, index, value):  # type: ignore[no-untyped-def]
    """Write float32 ``value`` as ``array``'s dtype: bf16 (uint16 bit patterns) is rounded to
    nearest, ties to even, every NaN to 0xFFFF, as torch's float32 → bfloat16 copy does."""


@overload(_store, inline="always")
def _store_impl(array, index, value):  # type: ignore[no-untyped-def]
    if array.dtype == types.uint16:

        def store_bf16(array, index, value):  # type: ignore[no-untyped-def]
            bits = _float_to_bits(value)
            bias = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
            rounded = np.uint16((bits + bias) >> np.uint32(16))
            array[index] = np.uint16(0xFFFF) if value != value else rounded

        return store_bf16

    def store(array, index, value):  # type: ignore[no-untyped-def]
        array[index] = value

    return store


# Loops index views from 0 (an index like ``start + j`` costs a wraparound check per
# element and stops vectorisation).
@_jit
def _decode(source: Any, target: Any) -> None:
    for j in range(source.size):
        target[j] = _value(source, j)


@_jit
def _delta_block(base_block: Any, x: Any, target: Any) -> None:
    """target = x − base over one block (delta_of: the input widened, then subtracted)."""
    for j in range(x.size):
        target[j] = _value(x, j) - base_block[j]


@_jit
def magnitudes(base: Any, x: Any, out: Any) -> None:
    for j in range(out.size):
        out[j] = abs(_value(x, j) - _value(base, j))


# Histograms count into two interleaved sub-histograms: consecutive elements in one
# bucket would otherwise wait on each other's store.
@_jit
def high_histograms(base: Any, xs: Any, active: Any, counts: Any) -> None:
    n = base.size
    base_block = np.empty(BLOCK, dtype=np.float32)
    delta = np.empty(BLOCK, dtype=np.float32)
    mask = np.uint32(0x7FFFFFFF)
    for start in range(0, n, BLOCK):
        count = min(BLOCK, n - start)
        _decode(base[start : start + count], base_block)
        for m in range(len(xs)):
            if active[m]:
                _delta_block(base_block, xs[m][start : start + count], delta)
                even, odd = counts[m, 0], counts[m, 1]
                pairs = count // 2 * 2
                for j in range(0, pairs, 2):
                    even[np.intp((_float_to_bits(delta[j]) & mask) >> 16)] += 1
                    odd[np.intp((_float_to_bits(delta[j + 1]) & mask) >> 16)] += 1
                if pairs < count:
                    even[np.intp((_float_to_bits(delta[pairs]) & mask) >> 16)] += 1


@_jit
def low_histograms(base: Any, xs: Any, active: Any, highs: Any, counts: Any) -> None:
    """Low 16 bits of the |δ| bit patterns in bucket ``highs[m]``: a branch-free loop gathers
    them (a few percent of a block), then a short loop counts them."""
    n = base.size
    base_block = np.empty(BLOCK, dtype=np.float32)
    delta = np.empty(BLOCK, dtype=np.float32)
    found = np.empty(BLOCK, dtype=np.uint32)
    mask = np.uint32(0x7FFFFFFF)
    low = np.uint32(0xFFFF)
    for start in range(0, n, BLOCK):
        count = min(BLOCK, n - start)
        _decode(base[start : start + count], base_block)
        for m in range(len(xs)):
            if active[m]:
                _delta_block(base_block, xs[m][start : start + count], delta)
                row = counts[m, 0]
                high = np.uint32(highs[m])
                k = 0
                for j in range(count):
                    bits = _float_to_bits(delta[j]) & mask
                    found[k] = bits
                    k += 1 if (bits >> 16) == high else 0
                for j in range(k):
                    row[np.intp(found[j] & low)] += 1


@_jit
def _kept_and_votes(
    base_block: Any, x: Any, mode: int, threshold: Any, keep: Any, rescale: int, scale: Any,
    weight: Any, sign_method: int, first: bool, kept: Any, terms: Any, score: Any,
) -> None:  # fmt: skip
    """One input's sᵢ, wᵢ·sᵢ and its vote added to the election score, in one loop. sᵢ is δᵢ
    kept where |δᵢ| ≥ t (TRIM), or masked, then ·scale or ÷scale (MASK: DARE); a dropped
    element is δ·0, a signed zero, as torch's multiply gives."""
    zero, one = np.float32(0.0), np.float32(1.0)
    for j in range(x.size):
        s = _value(x, j) - base_block[j]
        if mode == TRIM:
            s = s * (one if abs(s) >= threshold else zero)
        elif mode == MASK:
            s = s * (one if keep[j] != 0 else zero)
            if rescale == RESCALE_MUL:
                s = s * scale
            elif rescale == RESCALE_DIV:
                s = s / scale
        t = s * weight
        kept[j] = s
        terms[j] = t
        v = s if sign_method == 2 else t
        if sign_method == 1:
            v = one if v > zero else (-one if v < zero else zero)
        score[j] = v if first else score[j] + v


@_jit
def family_apply(
    base: Any,
    xs: Any,
    modes: Any,
    thresholds: Any,
    keeps: Any,
    rescales: Any,
    scales: Any,
    weights: Any,
    divisor_weights: Any,
    sign_method: int,
    normalize: bool,
    lambda_: Any,
    out: Any,
) -> None:
    n = base.size
    models = len(xs)
    base_block = np.empty(BLOCK, dtype=np.float32)
    kept = np.empty((models, BLOCK), dtype=np.float32)  # sᵢ
    terms = np.empty((models, BLOCK), dtype=np.float32)  # wᵢ·sᵢ
    score = np.empty(BLOCK, dtype=np.float32)
    mixed = np.empty(BLOCK, dtype=np.float32)
    divisor = np.empty(BLOCK, dtype=np.float32)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for start in range(0, n, BLOCK):
        count = min(BLOCK, n - start)
        _decode(base[start : start + count], base_block)
        # sᵢ, wᵢsᵢ and the election: the sum of wᵢsᵢ, of sign(wᵢsᵢ) (count) or of sᵢ (total)
        for m in range(models):
            keep = keeps[m][start : start + count] if modes[m] == MASK else keeps[m]
            _kept_and_votes(base_block[:count], xs[m][start : start + count], modes[m],
                            thresholds[m], keep, rescales[m], scales[m], weights[m],
                            sign_method, m == 0, kept[m], terms[m], score)  # fmt: skip
        # an entry takes part when non-zero with the elected sign (+ on a tie); only
        # non-zero terms are added, so the sums equal the torch kernel's, signed zeros too
        for m in range(models):
            v = kept[m] if sign_method == 2 else terms[m]
            t = terms[m]
            dw = divisor_weights[m]
            for j in range(count):
                agree = v[j] < zero if score[j] < zero else v[j] > zero
                previous = zero if m == 0 else mixed[j]
                mixed[j] = previous + (t[j] if agree else zero)
                previous = zero if m == 0 else divisor[j]
                divisor[j] = previous + (dw if agree else zero)
        dest = out[start : start + count]
        for j in range(count):
            value = mixed[j]
            if normalize:
                value = value / (divisor[j] if divisor[j] != zero else one)
            _store(dest, j, value * lambda_ + base_block[j])


@intrinsic
def _mul_high(typingctx: Any, a: Any, b: Any) -> Any:
    """The high 64 bits of the 128-bit product a·b."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        wide = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        return builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen


def _lane_constant(value: int) -> Any:
    return ir.Constant(ir.VectorType(ir.IntType(64), PCG_LANES), [value] * PCG_LANES)


def _lane_splat(builder: Any, value: Any) -> Any:
    lanes = ir.VectorType(ir.IntType(64), PCG_LANES)
    undefined = ir.Constant(lanes, ir.Undefined)
    first = builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), PCG_LANES), [0] * PCG_LANES)
    return builder.shuffle_vector(first, undefined, zeros)


def _lane_dxsm(builder: Any, high: Any, low: Any) -> Any:
    """PCG64DXSM's output of each lane's state (the state before its step)."""
    k = _lane_constant
    x = builder.xor(high, builder.lshr(high, k(32)))
    x = builder.mul(x, k(PCG_MULTIPLIER))
    x = builder.xor(x, builder.lshr(x, k(48)))
    return builder.mul(x, builder.or_(low, k(1)))


def _lane_step(builder: Any, high: Any, low: Any, add_high: Any, add_low: Any) -> Any:
    """Each lane's state → a·s + c (mod 2¹²⁸), a = `_STEP_A`: the high word of low·a_low
    from 32-bit halves (no vector 64×64→128 multiply; each half product is one vpmuludq)."""
    k, half = _lane_constant, (1 << 32) - 1
    a_high, a_low = _STEP_A >> 64, _STEP_A & ((1 << 64) - 1)
    low_lo, low_hi = builder.and_(low, k(half)), builder.lshr(low, k(32))
    p0, p1 = builder.mul(low_lo, k(a_low & half)), builder.mul(low_lo, k(a_low >> 32))
    p2, p3 = builder.mul(low_hi, k(a_low & half)), builder.mul(low_hi, k(a_low >> 32))
    t = builder.add(p2, builder.lshr(p0, k(32)))
    w = builder.add(builder.and_(t, k(half)), p1)
    carried = builder.add(builder.add(p3, builder.lshr(t, k(32))), builder.lshr(w, k(32)))
    product_low = builder.or_(builder.shl(w, k(32)), builder.and_(p0, k(half)))
    cross = builder.add(builder.mul(low, k(a_high)), builder.mul(high, k(a_low)))
    new_low = builder.add(product_low, add_low)
    carry = builder.zext(builder.icmp_unsigned("<", new_low, product_low), new_low.type)
    return builder.add(builder.add(builder.add(carried, cross), add_high), carry), new_low


@intrinsic
def _pcg_lanes(
    typingctx: Any, highs: Any, lows: Any, out: Any, start: Any, add_high: Any, add_low: Any
) -> Any:
    """One draw of every lane, as one vector of `PCG_LANES` words (zmm registers where the
    CPU has them): out[start + r] ← the output of lane r's state (``highs[r]``, ``lows[r]``),
    then the state steps by `PCG_LANES` draws (``add_*``: the step's c = g·inc)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        lanes = ir.VectorType(ir.IntType(64), PCG_LANES).as_pointer()

        def pointer(index: int, offset: Any = None) -> Any:
            data = context.make_array(signature.args[index])(context, builder, args[index]).data
            return builder.bitcast(data if offset is None else builder.gep(data, [offset]), lanes)

        highs_at, lows_at, out_at = pointer(0), pointer(1), pointer(2, args[3])
        high, low = builder.load(highs_at, align=8), builder.load(lows_at, align=8)
        builder.store(_lane_dxsm(builder, high, low), out_at, align=8)
        add_high, add_low = _lane_splat(builder, args[4]), _lane_splat(builder, args[5])
        high, low = _lane_step(builder, high, low, add_high, add_low)
        builder.store(high, highs_at, align=8)
        builder.store(low, lows_at, align=8)
        return context.get_dummy_value()

    if not all(isinstance(a, types.Array) and a.layout == "C" for a in (highs, lows, out)):
        return None  # (the vector loads and stores need contiguous words)
    return types.void(highs, lows, out, types.intp, types.uint64, types.uint64), codegen


@_jit
def _pcg_raws(states: Any, inc: Any, out: Any) -> None:
    """NumPy's PCG64DXSM ``random_raw`` into ``out`` (a multiple of `PCG_LANES` draws) as
    `PCG_LANES` interleaved lanes, vectorised across lanes: lane r draws r, r + PCG_LANES, …
    from ``states[r]`` (the (high, low) state at draw r of the stream); ``inc`` is the
    stream's (high, low) increment."""
    g_high, g_low = _STEP_G_HIGH, _STEP_G_LOW
    add_high = _mul_high(g_low, inc[1]) + g_low * inc[0] + g_high * inc[1]  # c = g·inc
    add_low = g_low * inc[1]
    highs, lows = np.empty(PCG_LANES, dtype=np.uint64), np.empty(PCG_LANES, dtype=np.uint64)
    for r in range(PCG_LANES):
        highs[r], lows[r] = states[r, 0], states[r, 1]
    for i in range(0, out.size, PCG_LANES):
        _pcg_lanes(highs, lows, out, i, add_high, add_low)


@_jit
def keep_mask(states: Any, incs: Any, start: int, threshold: int, out: Any) -> None:
    """DARE's keep-mask over consecutive 65,536-element blocks (``states[b]``, ``incs[b]``:
    block b's stream): element k of ``out`` is 1 when draw ``start + k`` is below
    ``threshold`` (16-bit draws, four per raw draw, in little-endian order)."""
    raws = np.empty(RAWS_PER_BLOCK, dtype=np.uint64)
    draws = raws.view(np.uint16)
    done = 0
    position = start
    for b in range(states.shape[0]):
        _pcg_raws(states[b], incs[b], raws)
        stop = min(draws.size, position + out.size - done)
        target = out[done : done + stop - position]
        source = draws[position:stop]
        for k in range(source.size):
            target[k] = 1 if np.int64(source[k]) < threshold else 0
        done += stop - position
        position = 0
