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


def float64_kl(other, base):
    """The KL's formula evaluated in float64, rounded once to float32."""
    p = F.softmax(other.double(), dim=-1) + 1e-8
    q = F.softmax(base.double(), dim=-1) + 1e-8
    return (p * (p / q).log()).sum(-1, keepdim=True).float()


def mergekit_kl(other, base):
    """mergekit's float32 operations (`merge_methods/arcee_fusion.py`)."""
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    return (p * (p / q).log()).sum(-1)


def by_hand(base, other):
    """mergekit's steps with the KL in float64 and a sort (tensors below 10⁶ elements)."""
    importance = (other - base).abs() * float64_kl(other, base)
    ordered = importance.reshape(-1).sort().values
    n = ordered.numel()
    q1, median, q3 = (ordered[int(q * (n - 1))] for q in (0.25, 0.5, 0.75))
    return base + (other - base) * (importance >= median + 1.5 * (q3 - q1))


def test_matches_the_steps_written_out():
    torch.manual_seed(0)
    base = torch.randn(16, 12)
    other = base + torch.randn(16, 12) * torch.linspace(0.01, 1, 16).unsqueeze(1)
    out = pure("arcee_fusion", base, [other])
    assert torch.equal(out, by_hand(base, other))  # same operations: same rounding
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


def fine_tune_rows(rows, cols, change, dtype=torch.float32, seed=0):
    """Rows of a base (~0.02 a weight) and of a fine-tune ``change`` away, in ``dtype``."""
    torch.manual_seed(seed)
    base = 0.02 * torch.randn(rows, cols)
    other = base + change * torch.randn(rows, cols)
    return base.to(dtype), other.to(dtype)


@pytest.mark.parametrize("change", [1e-4, 1e-3, 1e-2, 0.3])
@pytest.mark.parametrize("cols", [13, 2048, 5632])
def test_mergekits_float32_kl_is_within_rounding_of_row_kl(cols, change):
    """mergekit's float32 KL differs from the float64 one by float32 rounding at the scale of
    the probabilities it sums (Σp = 1): a few ε₃₂ absolute, however small the KL (fine-tunes'
    rows: ~10⁻⁶, so mergekit's KL has only its leading digit or two)."""
    from merging.methods.arcee_fusion import row_kl

    base, other = fine_tune_rows(100, cols, change, seed=cols)
    p, q = F.softmax(other, dim=-1) + 1e-8, F.softmax(base, dim=-1) + 1e-8
    terms = (p * (p / q).log()).abs().sum(-1)  # Σ|pⱼ·log(pⱼ/qⱼ)|
    gap = (mergekit_kl(other, base) - row_kl(other, base)).abs()
    assert torch.all(gap <= 8 * torch.finfo(torch.float32).eps * (1 + terms))


def test_row_kl_is_the_float64_formula_rounded_once():
    from merging.methods.arcee_fusion import row_kl

    base, other = fine_tune_rows(50, 700, 1e-3, torch.bfloat16)
    base, other = base.float(), other.float()
    assert torch.equal(row_kl(other, base), float64_kl(other, base).squeeze(-1))


def compiled_kl(base, other):
    """The compiled pass 0's KL per row (`_jit_fusion.kl_gather`)."""
    import numpy as np

    from merging.methods import _method_loops

    kl = np.empty(base.shape[0], dtype=np.float32)
    rows = [_method_loops.as_array(x.reshape(-1)) for x in (base, other)]
    none = np.array([[1] * 3, [0] * 3], dtype=np.uint32)  # (empty ranges: nothing gathered)
    below, ends = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    found = np.empty((3, 1), dtype=np.uint32)
    _method_loops.loops("_jit_fusion").kl_gather(*rows, base.shape[-1], kl, none, below, found,
                                                 ends)  # fmt: skip
    return torch.from_numpy(kl)


def ulps_apart(x, y):
    """|x − y| in float32 ulps (NaN equal NaN; both non-negative)."""
    x, y = torch.nan_to_num(x, nan=1.0), torch.nan_to_num(y, nan=1.0)
    return (x.view(torch.int32).long() - y.view(torch.int32).long()).abs()


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cols", [1, 7, 700, 2048, 5632])
@pytest.mark.parametrize("change", [1e-4, 1e-3, 1e-2, 0.1])
def test_compiled_row_kl_is_within_rounding_of_row_kl(dtype, cols, change):
    """The compiled KL (float32 vectors of an algebra without cancellation, float64 sums) is
    within 2 float32 ulps of the KL plus float64's rounding of the softmaxes (which
    `row_kl` itself carries, ~1e-16 absolute: an ulp where the KL is ~10⁻⁹), and rounds as
    `row_kl` does in most rows; rows with changes above 1/32 or under 64 elements take its
    float64 loop."""
    from merging.methods.arcee_fusion import row_kl

    base, other = fine_tune_rows(64, cols, change, dtype, seed=cols)
    expected = row_kl(other.float(), base.float())
    got = compiled_kl(base, other)
    tolerance = 2 * torch.finfo(torch.float32).eps * expected + 16 * torch.finfo(torch.float64).eps
    assert torch.all((got - expected).abs() <= tolerance)
    if change >= 1e-3:
        assert int(ulps_apart(got, expected).max()) <= 1
        assert float((got == expected).float().mean()) >= 0.5


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
def test_compiled_row_kl_of_rows_outside_its_bounds():
    """Large values, infinities and NaNs (the float64 loop): row_kl's values, NaN for NaN."""
    from merging.methods.arcee_fusion import row_kl

    base, other = fine_tune_rows(6, 300, 1e-3)
    base[0] *= 5000  # |base| > 64
    other[0] = base[0] + 1e-3
    base[1, 3] = float("inf")
    other[2, 7] = float("nan")
    base[3, :5] = -float("inf")
    other[3, :5] = -float("inf")
    other[4, 9] = 1.0  # a change above 1/32
    expected = row_kl(other, base)
    got = compiled_kl(base, other)
    assert torch.equal(got.isnan(), expected.isnan())
    assert expected[1:3].isnan().all()
    assert int(ulps_apart(got, expected).max()) <= 1


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize(("rows", "margin", "passes"), [(64, 0.015, 1), (1, 0.0, 3)])
def test_compiled_passes_with_predicted_ranges_or_not(monkeypatch, rows, margin, passes):
    """The quantiles' ranges predicted from a sample of rows (pass 0 gathers them: one
    reduction pass) or not (a one-row sample, no margin: pass 1 histograms, pass 2 gathers
    the right buckets): the torch path's output either way."""
    from merging.methods import arcee_fusion

    base, other = fine_tune_rows(600, 700, 1e-2, torch.bfloat16, seed=9)
    other[::7] = (other[::7].float() * 3).bfloat16()  # rows whose KL stands out
    expected = stored_kernel("arcee_fusion", base, [other], compiled=False,
                             monkeypatch=monkeypatch)  # fmt: skip
    monkeypatch.setattr(arcee_fusion, "SAMPLE_ROWS", rows)
    monkeypatch.setattr(arcee_fusion, "MARGIN", margin)
    seen = []
    end_pass = arcee_fusion._FastFusion.end_pass

    def counted(self, step):
        seen.append(step)
        end_pass(self, step)

    monkeypatch.setattr(arcee_fusion._FastFusion, "end_pass", counted)
    got = stored_kernel("arcee_fusion", base, [other], compiled=True, monkeypatch=monkeypatch,
                        chunk=5000, threads=2)  # fmt: skip
    assert same_bits(got, expected)
    assert seen == list(range(passes))


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
def test_gathered_ranges_and_counts_below_them():
    import numpy as np

    from merging.methods import _method_loops

    loops = _method_loops.loops("_jit_fusion")
    base, other = fine_tune_rows(6, 3000, 1e-2, torch.bfloat16, seed=3)
    a, b = (_method_loops.as_array(x.reshape(-1)) for x in (base, other))
    kl = np.linspace(0.5, 2.0, 6).astype(np.float32)
    importance = (other.float() - base.float()).abs() * torch.from_numpy(kl)[:, None]
    bits = importance.reshape(-1).view(torch.int32).numpy().view(np.uint32)
    ranges = np.array([np.quantile(bits, [0.2, 0.5, 0.7]), np.quantile(bits, [0.3, 0.5, 0.8])],
                      dtype=np.uint32)  # fmt: skip
    column = 1234
    rest = bits[column:]
    below, ends = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    out = np.empty((3, rest.size + 1), dtype=np.uint32)
    for part in (slice(column, 5000), slice(5000, None)):  # (two calls append to the ranges)
        loops.gather_ranges(a[part], b[part], kl[part.start // 3000 :], part.start % 3000, 3000,
                            ranges, below, out, ends)  # fmt: skip
    for i, (low, high) in enumerate(zip(*ranges, strict=True)):
        assert below[i] == np.count_nonzero(rest < low)
        assert np.array_equal(out[i, : ends[i]], rest[(rest >= low) & (rest <= high)])
    counts = np.zeros(1 << 15, dtype=np.int64)
    loops.high_counts(a[column:], b[column:], kl, column, 3000, counts)
    assert np.array_equal(counts, np.bincount(rest >> 16, minlength=1 << 15))
