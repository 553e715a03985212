"""DELLA's ranking and row loops (_jit_della, _jit_della_rows) on rows built to take each of
their paths: the pending elements' scans and grouping, and the exact and four-lane L1 sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from merging.methods import _della_fast
from merging.methods.della import keep_probabilities, keep_thresholds
from tests.merging.method_helpers import SETTINGS

pytestmark = pytest.mark.skipif(
    not _della_fast.available, reason="numba missing or HUBMERGE_NO_JIT set"
)


def _loops():
    from merging.methods import _jit_della, _jit_della_rows

    return _jit_della, _jit_della_rows


def _crowded(n: int, buckets: int, seed: int) -> torch.Tensor:
    """One large magnitude, the rest distinct values crowded into ``buckets`` narrow clusters
    eight binades below it: large buckets of mixed keys, many pending elements."""
    g = np.random.default_rng(seed)
    centres = 1.0 + g.integers(0, buckets, n) * 2.0**-6
    values = centres + g.integers(0, 1 << 10, n) * 2.0**-23
    values[g.integers(0, n)] = 2.0**7
    return torch.from_numpy(values.astype(np.float32))[None]


def _assert_masks_like_the_torch_path(magnitudes: torch.Tensor, density: float, seed: int) -> None:
    """The compiled keep mask of ``magnitudes`` (seeded 16-bit draws, ε = 0.15) equals the
    torch path's: draw < round(pᵢ·2¹⁶) from the ranks' keep probabilities."""
    draw = torch.randint(0, 65536, magnitudes.shape, dtype=torch.int32,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
    expected = draw < (keep_probabilities(magnitudes, density, 0.15) * 65536).round_()
    got = _della_fast.keep_mask(magnitudes, draw, lambda k: keep_thresholds(k, density, 0.15))
    assert got is not None
    assert torch.equal(got, expected)


@SETTINGS
@given(n=st.sampled_from([700, 2500, 6000]), buckets=st.sampled_from([1, 4, 12, 60]),
       density=st.floats(0.2, 0.8), seed=st.integers(0, 99))  # fmt: skip
def test_crowded_rows_rank_like_the_torch_path(n, buckets, density, seed):
    """Many pending elements: a stable sort of a bucket (more than FEW_ASKED in it), counting
    among its members (a few), or scans of the whole row (fewer than n / SCAN_SHARE)."""
    magnitudes = _crowded(n, buckets, seed)
    _assert_masks_like_the_torch_path(magnitudes, density, seed)


def _task_vector_rows(rows: int, n: int, seed: int, odd: float) -> torch.Tensor:
    """|δ| of bf16 weights: even keys (low 16 bits zero) with many ties and zeros, and about
    ``odd`` of them replaced by odd keys (the low bits set), some equal to each other."""
    g = np.random.default_rng(seed)
    base = torch.from_numpy(g.standard_normal((rows, n)).astype(np.float32) * 0.02).bfloat16()
    x = (base.float() + torch.from_numpy(g.standard_normal((rows, n)).astype(np.float32))
         * 2e-3).bfloat16()  # fmt: skip
    keys = (x.float() - base.float()).abs().numpy().view(np.uint32).copy()
    chosen = g.random((rows, n)) < odd
    keys[chosen] |= g.integers(1, 4, int(chosen.sum())).astype(np.uint32) << np.uint32(3)
    return torch.from_numpy(keys.view(np.float32))


@SETTINGS
@given(n=st.sampled_from([1025, 2048, 5632, 9000]), odd=st.sampled_from([0.0, 0.05, 0.5]),
       density=st.floats(0.2, 0.8), seed=st.integers(0, 99))  # fmt: skip
def test_even_key_rows_rank_like_the_torch_path(n, odd, density, seed):
    """Rows whose buckets are at most 2¹⁶ patterns wide take the plain count (`_rank_even`):
    a bucket holding no odd key (other than the first) holds one key, so its members' places
    are their exact ranks; buckets with odd keys, equal or not, stay ranges."""
    jit_della, _ = _loops()
    assert jit_della.bins_log2(n) >= 10  # (8 binades in at most 2¹⁰ buckets: 2¹⁶ wide)
    magnitudes = _task_vector_rows(3, n, seed, odd)
    _assert_masks_like_the_torch_path(magnitudes, density, seed)


@SETTINGS
@given(n=st.sampled_from([2048, 5632]), density=st.floats(0.2, 0.8), seed=st.integers(0, 99))
def test_keys_below_the_bucketed_range_rank_like_the_torch_path(n, density, seed):
    """The first bucket also takes every key more than 8 binades below the row's largest:
    there, even keys differ (zeros and tiny magnitudes, each many times), so its members'
    places are not their ranks."""
    g = np.random.default_rng(seed)
    values = g.choice(np.float32([0.0, 2.0**-30, 2.0**-29, 3 * 2.0**-29, 2.0**-12]), n)
    values[g.integers(0, n)] = 1.0
    magnitudes = torch.from_numpy(values.astype(np.float32))[None]
    _assert_masks_like_the_torch_path(magnitudes, density, seed)


def test_long_rows_take_the_compared_count():
    """Rows longer than EVEN_ROW (indices past 16 bits) rank like the torch path too."""
    jit_della, _ = _loops()
    n = jit_della.EVEN_ROW + 5
    magnitudes = _task_vector_rows(1, n, 3, 0.05)
    _assert_masks_like_the_torch_path(magnitudes, 0.5, 3)


def test_scan_rank_is_the_stable_rank():
    jit_della, _ = _loops()
    keys = np.random.default_rng(1).integers(0, 40, 3001).astype(np.uint32)  # many ties
    order = np.argsort(keys, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(keys.size)
    for j in (0, 1, 17, 1500, 2999, 3000):
        assert jit_della._scan_rank(keys, j) == ranks[j]


def _lanes(values: np.ndarray) -> float:
    """Four interleaved float64 partial sums, added as (a0 + a1) + (a2 + a3)."""
    lanes = [np.float64(0.0)] * 4
    head = values.size - values.size % 4
    for j, v in enumerate(values.astype(np.float64)):
        lane = j % 4 if j < head else 0
        lanes[lane] = lanes[lane] + v
    return float((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))


def _row(kind: str, n: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    if kind == "bf16":  # task vectors of bf16 weights: a few significant bits, many binades
        base = torch.from_numpy(g.standard_normal(n).astype(np.float32) * 0.02).bfloat16()
        x = base.float() + torch.from_numpy(g.standard_normal(n).astype(np.float32)) * 1e-3
        return (x.bfloat16().float() - base.float()).abs().numpy()
    values = np.abs(g.standard_normal(n)).astype(np.float32)
    if kind == "tiny":  # one value far below the rest's units: not exact
        values[g.integers(0, n)] = np.float32(1e-30)
    if kind == "subnormal":
        values *= np.float32(1e-39)
    return values


@SETTINGS
@given(kind=st.sampled_from(["bf16", "float32", "tiny", "subnormal"]),
       n=st.sampled_from([1, 3, 4, 301, 2048, 5632]), seed=st.integers(0, 99))  # fmt: skip
def test_exact_sums_are_the_four_lane_sums(kind, n, seed):
    """Where every key is a multiple of the row's unit, the vectorised integer sums give the
    four-lane float64 sums bit for bit (kept or not); elsewhere they answer not exact."""
    _, rows = _loops()
    values = _row(kind, n, seed)
    keys = values.view(np.uint32)
    keep = np.random.default_rng(seed).random(n) < 0.5
    unit = rows._unit(keys.max(), n)
    exact, total, kept = rows._exact_sums(keys, keep, unit)
    assert rows._lane_sum(keys) == _lanes(values)
    assert rows._kept_sum(keys, keep) == _lanes(np.where(keep, values, 0))
    if kind in ("bf16", "subnormal"):
        assert exact
    if kind == "tiny" and n > 1:
        assert not exact
    if exact:
        assert total == _lanes(values)
        assert kept == _lanes(np.where(keep, values, 0))


@pytest.mark.parametrize("kind", ["bf16", "tiny", "infinite"])
def test_observe_rows_sums_are_the_four_lane_sums_row_by_row(kind):
    """The L1 norms of observe_rows: each row's four-lane sums (exact or not; infinities and
    NaNs never take the integer sums, whose conversion is undefined there), added in row
    order."""
    from merging.methods._jit_loops import RAWS_PER_BLOCK

    jit_della, rows = _loops()
    cols, count = 301, 5
    values = np.concatenate([_row("bf16" if kind == "bf16" else "tiny", cols, s)
                             for s in range(count)])  # fmt: skip
    if kind == "infinite":
        values[cols + 7] = np.inf
    base = np.zeros(values.size, np.float32)
    g = np.random.default_rng(0)
    states = g.integers(0, 2**63, (1, 32, 2), dtype=np.uint64)
    incs = g.integers(0, 2**63, (1, 2), dtype=np.uint64) | np.uint64(1)
    keep = np.empty(values.size, np.bool_)
    table = keep_thresholds(cols, 0.5, 0.15).to(torch.int32).numpy()
    before, after = rows.observe_rows(
        base, values, cols, states, incs, 0, table, keep, np.empty(RAWS_PER_BLOCK, np.uint64),
        np.empty(cols, np.uint32), jit_della.scratch(cols),
    )  # fmt: skip
    want_before, want_after = 0.0, 0.0
    for r in range(count):
        row = values[r * cols : (r + 1) * cols]
        want_before += _lanes(row)
        want_after += _lanes(np.where(keep[r * cols : (r + 1) * cols], row, 0))
    assert (before, after) == (want_before, want_after)
    assert 0 < keep.mean() < 1
