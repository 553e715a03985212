"""Each DARE mask block's generator stream: the compiled seeding equals NumPy's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.methods import _compiled, _streams
from merging.methods._streams import block_streams

pytestmark = pytest.mark.skipif(
    not _compiled.available, reason="numba is not installed (or HUBMERGE_NO_JIT is set)"
)


class Seeds:
    """A stream whose block seeds are given (high zero words included: NumPy drops them)."""

    def __init__(self, seeds: list[int]) -> None:
        self.seeds = seeds

    def block_seed(self, source: int, block: int) -> int:
        return self.seeds[block]

    def block_digest(self, source: int, block: int) -> bytes:
        return self.seeds[block].to_bytes(16, "little")


@settings(max_examples=30, deadline=None)
@given(
    seeds=st.lists(
        st.one_of(
            st.integers(0, 2**128 - 1),
            st.integers(0, 2**64),
            st.sampled_from([0, 1, 2**32, 2**96 - 1, 2**127]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_compiled_seeding_gives_numpys_states(seeds):
    _compiled.prepare(torch.bfloat16, torch.bfloat16, 1, wait=True)
    stream, length = Seeds(seeds), len(seeds) * (1 << 16)
    expected = block_streams(stream, 0, 0, length)
    got = block_streams(stream, 0, 0, length, _compiled._dare_loops.seed_streams)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_generator_lanes_match_the_jump_table():
    _compiled.prepare(torch.bfloat16, torch.bfloat16, 1, wait=True)
    loops = _compiled._loops
    assert loops.PCG_LANES == _streams.LANES
    assert _streams._jump(loops.PCG_LANES) == (loops._STEP_A, loops._STEP_G)


@settings(max_examples=20, deadline=None)
@given(
    seeds=st.lists(
        st.one_of(st.integers(0, 2**128 - 1), st.sampled_from([0, 1, 2**64 - 1, 2**128 - 1])),
        min_size=1,
        max_size=4,
    ),
    draws=st.sampled_from([_streams.LANES, 5 * _streams.LANES, 1 << 14]),
)
def test_compiled_lanes_draw_numpys_raws(seeds, draws):
    """Each block's raws from the vectorised lanes equal NumPy's ``random_raw``, whole blocks
    and their first draws (lane r draws r, r + LANES, …)."""
    _compiled.prepare(torch.bfloat16, torch.bfloat16, 1, wait=True)
    states, incs = block_streams(
        Seeds(seeds), 0, 0, len(seeds) << 16, _compiled._dare_loops.seed_streams
    )
    assert states.shape == (len(seeds), _streams.LANES, 2)
    for block, seed in enumerate(seeds):
        raws = np.empty(draws, dtype=np.uint64)
        _compiled._loops._pcg_raws(states[block], incs[block], raws)
        np.testing.assert_array_equal(raws, np.random.PCG64DXSM(seed).random_raw(draws))
