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
