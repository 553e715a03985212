"""SCE's compiled loops (`_jit_sce`): the first pass's sums per run of elements."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from merging.methods import _compiled, _method_loops
from merging.methods._compiled import as_array

pytestmark = pytest.mark.skipif(
    not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set"
)


def _inputs(dtype, count, length, seed):
    """A base and ``count`` fine-tunes as the loops read them (some exact zeros of δ)."""
    torch.manual_seed(seed)
    base = 0.02 * torch.randn(length)
    xs = [torch.where(torch.rand(length) < 0.1, base, base + 0.002 * torch.randn(length))
          for _ in range(count)]  # fmt: skip
    return as_array(base.to(dtype)), tuple(as_array(x.to(dtype)) for x in xs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize(
    ("length", "part"),
    [(1, 8), (7, 8), (20_000, 1024), (20_000, 3000), (9_999, 4096), (5000, 5000), (4096, 10_000)],
)
def test_sums_per_run_equal_the_runs_observed_apart(dtype, count, length, part):
    """One call over a chunk of several runs of ``part`` elements: each run's float64 sums as
    a call on that run alone gives them (bit for bit), the same counts and zeros."""
    loops = _method_loops.loops("_jit_sce")
    base, xs = _inputs(dtype, count, length, seed=length + part)
    bits = np.array([1e-6, 2e-6, 4e-6, 8e-6], dtype=np.float32).view(np.uint32)
    bounds, sum_from = bits.astype(np.int64), int(bits[1])  # (Var ~ 4e-6: some of each)
    runs = -(-length // part)
    counts, sums = np.zeros(4, dtype=np.int64), np.zeros((runs, count))
    zeros = loops.sce_observe(base, xs, bounds, counts, sum_from, part, sums)
    apart_counts, apart_zeros = np.zeros(4, dtype=np.int64), 0
    for run, start in enumerate(range(0, length, part)):
        piece = slice(start, start + part)
        alone = np.zeros((1, count))
        apart_zeros += loops.sce_observe(base[piece], tuple(x[piece] for x in xs), bounds,
                                         apart_counts, sum_from, part, alone)  # fmt: skip
        assert sums[run].tobytes() == alone[0].tobytes()
    assert (zeros, counts.tolist()) == (apart_zeros, apart_counts.tolist())
    assert length < 100 or np.all(sums > 0)  # (a few sums below ``sum_from`` in short runs)


def _lane_sums(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Eight running float64 sums of squares, element j into lane j mod 8, in order
    (``np.cumsum`` adds sequentially)."""
    squares = values.astype(np.float64) ** 2
    return np.array([np.cumsum(np.concatenate([[start[q]], squares[q::8]]))[-1]
                     for q in range(8)])  # fmt: skip


@pytest.mark.parametrize("groups", [0, 1, 3, 128])
def test_lane_squares_are_eight_sequential_sums(groups):
    """`_lane_squares` (vector registers) adds each lane's squares in order onto its start."""
    import numba

    lane_squares = _method_loops.loops("_jit_sce")._lane_squares  # (an intrinsic: jit only)
    call = numba.njit(lambda row, groups, lane: lane_squares(row, groups, lane))
    rng = np.random.default_rng(groups)
    row = rng.standard_normal(8 * groups + 5) * 10.0 ** rng.integers(-6, 3, 8 * groups + 5)
    row = row.astype(np.float32)
    lane = rng.standard_normal(8)
    expected = _lane_sums(row[: 8 * groups], lane)
    call(row, groups, lane)
    assert lane.tobytes() == expected.tobytes()


@pytest.mark.parametrize("count", [2, 3])
def test_observe_equals_written_out_counts_and_lane_sums(count):
    """The first pass against its definition: counts of Var bits ≥ each bound and the zero
    variances from `sce.variance`, each run's sum of δₘ² over Var bits ≥ ``sum_from`` as the
    eight lanes (element j of the run into lane j mod 8) added in order."""
    from merging.methods.sce import variance

    loops = _method_loops.loops("_jit_sce")
    base, xs = _inputs(torch.bfloat16, count, 5000, seed=count)
    wide = torch.from_numpy(base.astype(np.uint32) << 16).view(torch.float32)
    deltas = [torch.from_numpy(x.astype(np.uint32) << 16).view(torch.float32) - wide for x in xs]
    bits = variance(deltas).view(torch.int32).numpy().view(np.uint32)
    bounds = np.array([1e-6, 2e-6, 4e-6, 8e-6], dtype=np.float32).view(np.uint32)
    counts, sums = np.zeros(4, dtype=np.int64), np.zeros((3, count))
    zeros = loops.sce_observe(base, xs, bounds.astype(np.int64), counts, int(bounds[1]), 2048,
                              sums)  # fmt: skip
    assert counts.tolist() == [int(np.sum(bits >= b)) for b in bounds]
    assert zeros == int(np.sum(bits == 0))
    for run, start in enumerate(range(0, 5000, 2048)):
        for m, delta in enumerate(deltas):
            piece = slice(start, start + 2048)
            chosen = np.where(bits[piece] >= bounds[1], delta.numpy()[piece], np.float32(0))
            lanes = _lane_sums(chosen, np.zeros(8))
            total = lanes[0]
            for q in range(1, 8):
                total += lanes[q]
            assert sums[run, m] == total
