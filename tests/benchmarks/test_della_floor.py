"""The floor `benchmarks/della_floor.py` prints counts every element of every row once."""

from __future__ import annotations

import numpy as np

from benchmarks.della_floor import _histogram


def test_the_histogram_floor_counts_each_element_of_each_row_once() -> None:
    rng = np.random.default_rng(0)
    cols = 2048
    magnitudes = np.abs(rng.normal(0, 1e-3, 3 * cols)).astype(np.float32)
    magnitudes[5] = 0.0  # below the bucketed range: the first bucket
    keys = magnitudes.view(np.uint32)
    counts = np.zeros(1 << 13, np.int32)
    first_bucket = _histogram(keys, cols, counts)
    assert counts.sum() == cols  # the last row's counts
    assert counts[:1024].sum() == cols  # rows of 2,048: 1,024 buckets
    assert first_bucket >= 1  # the zero of row 0 (and whatever else fell below the range)
    assert (counts > 0).sum() > 100  # spread over the buckets, not piled into a few
