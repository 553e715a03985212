"""Where each DARE mask block's generator stream starts, for the compiled draws
(`_compiled.keep_mask`): NumPy's PCG64DXSM seeding per 65,536-element block, then the jumps
that split each block's 16,384 raw draws into `LANES` interleaved lanes (lane r draws raws
r, r + LANES, …; the compiled generator steps all lanes as one vector)."""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._ops import BLOCK

_MASK128 = (1 << 128) - 1
_MASK64 = (1 << 64) - 1


def _jump(steps: int) -> tuple[int, int]:
    """(a, g) with `steps` PCG steps s → s·m + inc equal to s → a·s + g·inc (mod 2¹²⁸)."""
    a, g = 1, 0
    a_power, g_power = 0xDA942042E4DD58B5, 1  # one step: s·m + 1·inc
    while steps:  # binary powering of the affine map
        if steps & 1:
            a, g = (a * a_power) & _MASK128, (g * a_power + g_power) & _MASK128
        a_power, g_power = (a_power * a_power) & _MASK128, (g_power * (a_power + 1)) & _MASK128
        steps >>= 1
    return a, g


LANES = 32  # the generator's lanes (`_jit_loops.PCG_LANES`)
_JUMPS = [_jump(lane) for lane in range(LANES)]  # lane r starts r draws into the stream


_JUMP_WORDS = np.array(
    [[a >> 64, a & _MASK64, g >> 64, g & _MASK64] for a, g in _JUMPS], dtype=np.uint64
)


def block_streams(
    rng: Any, source: int, offset: int, length: int, seeder: Any = None
) -> tuple[Any, Any]:
    """The generator states (`LANES` lanes per block) and increments of the mask blocks that
    elements [offset, offset + length) fall in: where NumPy's seeding puts each stream.
    ``seeder`` (`_jit_dare.seed_streams`) computes NumPy's seeding in compiled code; without
    it NumPy seeds each block (the same states, ~20 µs a block)."""
    first, last = offset // BLOCK, (offset + length - 1) // BLOCK
    states = np.empty((last - first + 1, LANES, 2), dtype=np.uint64)
    incs = np.empty((last - first + 1, 2), dtype=np.uint64)
    if seeder is not None:
        digests = b"".join(rng.block_digest(source, b) for b in range(first, last + 1))
        words = np.frombuffer(digests, dtype="<u4").reshape(-1, 4).astype(np.uint64)
        lengths = 4 - (words[:, ::-1] != 0).argmax(axis=1)  # NumPy drops high zero words
        lengths[(words == 0).all(axis=1)] = 1
        seeder(words, lengths, _JUMP_WORDS, states, incs)
        return states, incs
    for row, block in enumerate(range(first, last + 1)):
        state = np.random.PCG64DXSM(rng.block_seed(source, block)).state["state"]
        start, inc = state["state"], state["inc"]
        incs[row] = (inc >> 64, inc & _MASK64)
        for lane, (a, g) in enumerate(_JUMPS):
            s = (a * start + g * inc) & _MASK128
            states[row, lane] = (s >> 64, s & _MASK64)
    return states, incs
