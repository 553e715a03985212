"""The reused whole-tensor buffers (`merging.methods._spare`) and their use by DELLA's loops."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from merging import METHODS
from merging.methods import _compiled, _della_fast, _della_fused, _spare, random_stream
from merging.methods._della_fused import FusedDella
from merging.methods._spare import SparePool
from tests.merging.kernel_helpers import validated


def test_a_given_back_buffer_is_handed_out_again_smallest_fit_first() -> None:
    pool = SparePool(np.bool_, kept=4)
    owned: list[np.ndarray] = []
    big = pool.take(1000, owned)
    pool.take(100, owned)
    big_whole, small_whole = owned
    pool.give(owned)
    assert owned == []
    assert pool.spare_bytes() == 1100
    again: list[np.ndarray] = []
    part = pool.take(50, again)  # the 100-element buffer fits best
    assert part.size == 50
    assert np.shares_memory(part, small_whole)
    assert not np.shares_memory(part, big_whole)
    other = pool.take(500, again)
    assert other.size == 500
    assert np.shares_memory(other, big_whole)
    fresh = pool.take(2000, again)  # nothing spare fits: a new buffer
    assert fresh.size == 2000
    assert not np.shares_memory(fresh, big)
    assert len(again) == 3
    assert pool.spare_bytes() == 0


def test_the_pool_keeps_only_its_largest_buffers_and_release_drops_them() -> None:
    pool = SparePool(np.bool_, kept=2)
    owned: list[np.ndarray] = []
    for length in (10, 30, 20):
        pool.take(length, owned)
    pool.give(owned)
    assert pool.spare_bytes() == 50  # 30 + 20: the smallest was dropped
    pool.release()
    assert pool.spare_bytes() == 0


def test_buffers_come_back_when_their_holder_is_collected() -> None:
    class Holder:
        pass

    pool = SparePool(np.bool_, kept=4)
    holder, owned = Holder(), []
    pool.take(64, owned)
    pool.give_when_gone(holder, owned)
    assert pool.spare_bytes() == 0
    del holder
    gc.collect()
    assert pool.spare_bytes() == 64


@pytest.mark.skipif(not _della_fast.available, reason="numba missing or HUBMERGE_NO_JIT set")
def test_della_reuses_its_mask_buffers_and_keep_outlives_them() -> None:
    """Two DELLA tensors in a row: the second's masks live in the first's buffers, and the
    first's mask read through `keep` is unchanged by the second's draws (`keep` copies)."""
    _compiled.prepare(torch.bfloat16, torch.bfloat16, 2, wait=True)
    assert _della_fused.LOOPS.ready(wait=True)  # (small tensors: torch while they load)
    _spare.MASKS.release()
    params, sources = validated("della", [1.0, 1.0], {"density": 0.5, "epsilon": 0.1})
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(64, 256, generator=g) * 0.02).to(torch.bfloat16)
    inputs = [(base + torch.randn(64, 256, generator=g) * 0.002).to(torch.bfloat16)] * 2
    flats = [t.reshape(-1) for t in (base, *inputs)]

    def observed(tensor_name: str) -> FusedDella:
        rng = random_stream(0, tensor_name)
        kernel = METHODS.get("della").kernel(params, sources, rng, tuple(base.shape))
        kernel.prepare(flats[0], flats[1:])
        assert kernel.fused is not None, "the compiled path did not apply"
        for index in range(2):
            kernel.fused.observe(index, 0, base.numel())
        return kernel.fused

    def addresses(fused: FusedDella) -> list[int]:
        return sorted(m.__array_interface__["data"][0] for m in fused.masks if m is not None)

    first = observed("a.weight")
    kept = first.keep(0, 0, base.numel())
    before, buffers = kept.clone(), addresses(first)
    del first
    gc.collect()
    assert _spare.MASKS.spare_bytes() >= 2 * base.numel()
    second = observed("b.weight")
    assert addresses(second) == buffers
    assert torch.equal(kept, before)
    assert not torch.equal(second.keep(0, 0, base.numel()), before)  # its own draws
