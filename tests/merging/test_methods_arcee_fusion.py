"""Arcee Fusion: KL-weighted importance, median + 1.5·IQR threshold, the chunked kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.methods import _compiled
from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import GRID, models
from tests.merging.stored_kernel import same_bits, stored_kernel


def by_hand(base, other):
    """mergekit's steps with torch's softmax and a sort (tensors below 10⁶ elements)."""
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    importance = (other - base).abs() * (p * (p / q).log()).sum(-1, keepdim=True)
    ordered = importance.reshape(-1).sort().values
    n = ordered.numel()
    q1, median, q3 = (ordered[int(q * (n - 1))] for q in (0.25, 0.5, 0.75))
    return base + (other - base) * (importance >= median + 1.5 * (q3 - q1))


def test_matches_the_steps_written_out():
    torch.manual_seed(0)
    base = torch.randn(16, 12)
    other = base + torch.randn(16, 12) * torch.linspace(0.01, 1, 16).unsqueeze(1)
    out = pure("arcee_fusion", base, [other])
    assert torch.equal(out, by_hand(base, other))  # same float32 operations: same rounding
    changed = out != base
    assert 0 < int(changed.sum()) < out.numel()  # some changes taken, not all


def test_vectors_are_one_row():
    base, other = torch.randn(40), torch.randn(40)
    assert torch.equal(pure("arcee_fusion", base, [other]), by_hand(base, other))


def test_rows_longer_than_a_chunk_are_fused_whole():
    torch.manual_seed(3)
    base = torch.randn(5, 40)
    other = base + torch.randn(5, 40) * torch.linspace(0.01, 1, 5).unsqueeze(1)
    expected = pure("arcee_fusion", base, [other])
    for chunk in (7, 40, 63, 200):
        assert torch.equal(chunked("arcee_fusion", base, [other], chunk=chunk), expected)


def test_a_model_with_itself_is_itself():
    base = torch.randn(6, 6)
    assert torch.equal(pure("arcee_fusion", base, [base.clone()]), base)


def test_only_changes_are_taken_from_the_other_model():
    base, other = torch.randn(8, 8), torch.randn(8, 8)
    out = pure("arcee_fusion", base, [other])
    assert torch.all((out == base) | torch.isclose(out, other))


FEW = settings(max_examples=12, deadline=None)  # 3 radix selects × 2 passes × 2¹⁶ buckets a chunk


@FEW
@given(data=models(count=st.just(1)), chunk=st.integers(2, 17), threads=st.sampled_from([None, 3]))
def test_kernel_matches_the_function(data, chunk, threads):
    base, inputs = data
    assert torch.equal(chunked("arcee_fusion", base, inputs, chunk=chunk, threads=threads),
                       pure("arcee_fusion", base, inputs))  # fmt: skip


@FEW
@given(data=models(count=st.just(1), elements=GRID), chunk=st.integers(2, 9))
def test_kernel_matches_the_function_with_tied_importances(data, chunk):
    base, inputs = data
    assert torch.equal(chunked("arcee_fusion", base, inputs, chunk=chunk),
                       pure("arcee_fusion", base, inputs))  # fmt: skip


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(90, 700), (5000,), (3, 40000)])
def test_compiled_passes_equal_the_torch_path(monkeypatch, dtype, shape):
    """Rows within chunks and rows cut by them (longer than a chunk, a vector: one row)."""
    torch.manual_seed(len(shape))
    base = (0.02 * torch.randn(shape)).to(dtype)
    scale = torch.linspace(1e-4, 1e-2, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    other = (base.float() + scale * torch.randn(shape)).to(dtype)
    expected = stored_kernel("arcee_fusion", base, [other], compiled=False,
                             monkeypatch=monkeypatch)  # fmt: skip
    assert not same_bits(expected, base)  # some changes taken
    for chunk, threads in ((1 << 18, None), (999, 3), (4096, 2)):
        got = stored_kernel("arcee_fusion", base, [other], compiled=True,
                            monkeypatch=monkeypatch, chunk=chunk, threads=threads)  # fmt: skip
        assert same_bits(got, expected)
    itself = stored_kernel("arcee_fusion", base, [base.clone()], compiled=True,
                           monkeypatch=monkeypatch, chunk=999, threads=2)  # fmt: skip
    assert same_bits(itself, base)


def test_a_rows_kl_does_not_depend_on_the_rows_beside_it():
    """`row_kl` of a batch of rows is each row's alone (the compiled passes batch any rows)."""
    from merging.methods.arcee_fusion import row_kl

    torch.manual_seed(3)
    a, b = torch.randn(300, 2048), torch.randn(300, 2048)
    whole = row_kl(b, a)
    for batch in (1, 7, 128, 299):
        parts = torch.cat(
            [row_kl(b[i : i + batch], a[i : i + batch]) for i in range(0, 300, batch)]
        )
        assert torch.equal(parts.view(torch.int32), whole.view(torch.int32))


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize("shape", [(400, 5632), (1100, 2048)])
def test_compiled_passes_in_big_chunks_equal_the_torch_path(monkeypatch, shape):
    """Chunks of 1M elements (the kernel's `max_chunk`; rows cut by them or not) give the
    torch path's output in 256K chunks."""
    torch.manual_seed(5)
    base = (0.02 * torch.randn(shape)).bfloat16()
    scale = torch.linspace(1e-4, 1e-2, shape[0]).reshape(-1, 1)
    other = (base.float() + scale * torch.randn(shape)).bfloat16()
    expected = stored_kernel("arcee_fusion", base, [other], compiled=False,
                             monkeypatch=monkeypatch)  # fmt: skip
    for chunk in (1 << 20, 3 << 18):
        got = stored_kernel("arcee_fusion", base, [other], compiled=True,
                            monkeypatch=monkeypatch, chunk=chunk, threads=2)  # fmt: skip
        assert same_bits(got, expected)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5000), (37, 13), (300, 2048), (19, 5632)])
def test_row_kl_in_place_equals_row_kl(shape):
    """`row_kl_in_place` (softmaxes written over its inputs) gives `row_kl`'s bits."""
    from merging.methods.arcee_fusion import row_kl, row_kl_in_place

    torch.manual_seed(shape[-1])
    a = 0.02 * torch.randn(shape)
    b = (a + 1e-3 * torch.randn(shape)).bfloat16().float()
    expected = row_kl(b, a)
    got = row_kl_in_place(b.clone(), a.clone())
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
