"""The per-vector helpers of the row- and tensor-statistics kernels (`merging.methods._vectors`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.methods._vectors import CutRows, Layout, OrderStatistics, VectorSums, vectors_of


@pytest.mark.parametrize("along", ["flat", "last", "first"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_layout_index_gather_and_vectors_agree(shape, along):
    x = torch.arange(int(torch.tensor(shape).prod()), dtype=torch.float32).reshape(shape)
    layout = Layout(shape, along)
    rows = vectors_of(x, along)
    assert rows.shape == (layout.count, layout.size)
    per_vector = torch.arange(layout.count, dtype=torch.float32) * 10
    for offset, length in [(0, x.numel()), (1, 4), (x.numel() - 3, 3)]:
        gathered = layout.gather(per_vector, offset, length)
        flat = x.reshape(-1)[offset : offset + length]
        # the vector each element sits in, found by looking it up in `rows`
        owner = torch.tensor([int((rows == v).any(dim=1).nonzero()[0]) for v in flat])
        assert torch.equal(gathered, owner.float() * 10)


@pytest.mark.parametrize("along", ["flat", "last", "first"])
def test_vector_sums_over_chunks_equal_row_sums(along):
    x = torch.randn(4, 6)
    layout = Layout(x.shape, along)
    sums = VectorSums(layout, 1)
    flat = x.reshape(-1)
    for offset in range(0, flat.numel(), 5):
        sums.add([flat[offset : offset + 5]], offset)
    expected = vectors_of(x, along).double().sum(-1)
    torch.testing.assert_close(sums.total()[0], expected)


def test_cut_rows_hand_back_whole_rows():
    cut = CutRows(4)
    flat = torch.arange(14, dtype=torch.float32)
    complete = []
    for offset in range(0, 14, 3):
        chunk = flat[offset : offset + 3]
        first, last = cut.complete(offset, chunk.numel())
        complete += list(range(first, last))
        cut.keep(offset, [chunk])
    rows = {row: values[0].tolist() for row, values in cut.rows()}
    assert rows == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7], 2: [8, 9, 10, 11], 3: [12, 13]}
    assert complete == []  # chunks of 3 never hold a whole row of 4


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.integers(0, 40).map(lambda i: i / 8), min_size=1, max_size=60),
    chunk=st.integers(1, 13),
    data=st.data(),
)
def test_order_statistics_are_exact_kth_largest(values, chunk, data):
    x = torch.tensor(values, dtype=torch.float32)
    ks = data.draw(st.lists(st.integers(1, x.numel()), min_size=1, max_size=3))
    stats = OrderStatistics(ks)
    for step in (0, 1):
        for offset in range(0, x.numel(), chunk):
            stats.observe(step, x[offset : offset + chunk])
        stats.end_pass(step)
    ordered = x.sort(descending=True).values
    assert [float(v) for v in stats.values] == [float(ordered[k - 1]) for k in ks]


def test_locate_buckets_is_the_first_pass_end_without_low_histograms():
    torch.manual_seed(2)
    x = torch.rand(5000) * 3
    located, ended = OrderStatistics([1, 2500, 5000]), OrderStatistics([1, 2500, 5000])
    for stats in (located, ended):
        stats.observe(0, x)
    located.locate_buckets()
    ended.end_pass(0)
    assert located.buckets == ended.buckets
    assert not located.low_hists
