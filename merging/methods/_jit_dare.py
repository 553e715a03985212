# mypy: disable-error-code="call-arg"
"""The numba loops behind DARE's compiled passes: the reduction step (`_compiled.dare_observe`:
the chunk's keep-mask, |δ| and the mask as 0/1 floats in one call, for torch's own sum and
dot), and the seeding of each mask block's generator stream as NumPy seeds it.

Like `_jit_loops` (whose generator and element helpers it uses), imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._jit_loops import RAWS_PER_BLOCK, _jit, _mul_high, _pcg_raws, _value


@_jit
def dare_observe(
    states: Any, incs: Any, start: int, threshold: int, base: Any, x: Any, keep: Any,
    magnitudes: Any, kept: Any,
) -> None:  # fmt: skip
    """keep: the mask bytes (`keep_mask`'s); magnitudes = |x − base|; kept = keep as 0.0 / 1.0:
    one loop per 65,536-element block, right after its draws (while they are in cache)."""
    raws = np.empty(RAWS_PER_BLOCK, dtype=np.uint64)
    draws = raws.view(np.uint16)
    one, zero = np.float32(1.0), np.float32(0.0)
    limit = np.int32(threshold)
    done, position = 0, start
    for b in range(states.shape[0]):
        _pcg_raws(states[b], incs[b], raws)
        count = min(draws.size, position + keep.size - done) - position
        source = draws[position : position + count]
        end = done + count  # (zero-based views: no wraparound checks, the loop vectorises)
        keep_b, mags_b, kept_b = keep[done:end], magnitudes[done:end], kept[done:end]
        x_b, base_b = x[done:end], base[done:end]
        for j in range(count):
            drawn = np.int32(source[j]) < limit
            keep_b[j] = drawn
            kept_b[j] = one if drawn else zero
            mags_b[j] = abs(_value(x_b, j) - _value(base_b, j))
        done += count
        position = 0


_M32 = np.uint64(0xFFFFFFFF)
_INIT_A, _MULT_A = np.uint64(0x43B0D7E5), np.uint64(0x931E8875)
_INIT_B, _MULT_B = np.uint64(0x8B51F9DD), np.uint64(0x58F38DED)
_MIX_L, _MIX_R = np.uint64(0xCA01F9DD), np.uint64(0x4973F715)
# PCG's 128-bit multiplier (NumPy seeds every PCG64 variant with it)
_SEED_HIGH, _SEED_LOW = np.uint64(2549297995355413924), np.uint64(4865540595714422341)


@_jit
def _mul128(ah: Any, al: Any, bh: Any, bl: Any) -> Any:
    return _mul_high(al, bl) + al * bh + ah * bl, al * bl


@_jit
def _add128(ah: Any, al: Any, bh: Any, bl: Any) -> Any:
    low = al + bl
    return ah + bh + (np.uint64(1) if low < al else np.uint64(0)), low


@_jit
def _hashmix(value: Any, constant: Any) -> Any:
    """NumPy SeedSequence's hashmix on 32-bit words (held in uint64): (value, new constant)."""
    value = value ^ constant
    constant = (constant * _MULT_A) & _M32
    value = (value * constant) & _M32
    return value ^ (value >> np.uint64(16)), constant


@_jit
def _mix(x: Any, y: Any) -> Any:
    result = (_MIX_L * x - _MIX_R * y) & _M32
    return result ^ (result >> np.uint64(16))


@_jit
def seed_streams(words: Any, lengths: Any, jumps: Any, states: Any, incs: Any) -> None:
    """NumPy's ``PCG64DXSM(seed).state`` for each block's 128-bit seed (its little-endian
    32-bit ``words``, ``lengths`` of them: NumPy drops high zero words), computed as NumPy's
    SeedSequence (pool of 4, hashmix / mix) and PCG seeding do, then each block's lanes:
    states[b, q] = a_q·s + g_q·inc (mod 2¹²⁸) for jumps[q] = (a_q high, low, g_q high, low)."""
    pool = np.empty(4, dtype=np.uint64)
    state = np.empty(8, dtype=np.uint64)
    for b in range(words.shape[0]):
        count = lengths[b]
        constant = _INIT_A
        for i in range(4):
            pool[i], constant = _hashmix(words[b, i] if i < count else np.uint64(0), constant)
        for source in range(4):
            for target in range(4):
                if source != target:
                    mixed, constant = _hashmix(pool[source], constant)
                    pool[target] = _mix(pool[target], mixed)
        constant = _INIT_B
        for i in range(8):
            value = pool[i % 4] ^ constant
            constant = (constant * _MULT_B) & _M32
            value = (value * constant) & _M32
            state[i] = value ^ (value >> np.uint64(16))
        s32 = np.uint64(32)
        seed_high, seed_low = state[0] | (state[1] << s32), state[2] | (state[3] << s32)
        seq_high, seq_low = state[4] | (state[5] << s32), state[6] | (state[7] << s32)
        inc_high = (seq_high << np.uint64(1)) | (seq_low >> np.uint64(63))
        inc_low = (seq_low << np.uint64(1)) | np.uint64(1)
        # s = 0; step; s += initstate; step (step: s·m + inc)
        high, low = _add128(inc_high, inc_low, seed_high, seed_low)
        high, low = _mul128(high, low, _SEED_HIGH, _SEED_LOW)
        high, low = _add128(high, low, inc_high, inc_low)
        incs[b, 0], incs[b, 1] = inc_high, inc_low
        for q in range(jumps.shape[0]):
            ah, al = _mul128(jumps[q, 0], jumps[q, 1], high, low)
            gh, gl = _mul128(jumps[q, 2], jumps[q, 3], inc_high, inc_low)
            states[b, q, 0], states[b, q, 1] = _add128(ah, al, gh, gl)
