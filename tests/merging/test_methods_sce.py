"""SCE: variance top-k selection, squared-delta weights, sign erase; kernel against function."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging.methods import _compiled
from merging.methods.sce import SceKernel, SceParams
from merging.streaming import run_kernel
from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import GRID, SETTINGS, models
from tests.merging.stored_kernel import same_bits, stored_kernel


def by_hand(base, inputs, select_topk):
    """SCE written out with torch's own var / topk (distinct variances: no ties)."""
    deltas = torch.stack([x - base for x in inputs])
    if select_topk < 1:
        var = deltas.var(dim=0, unbiased=False).reshape(-1)
        k = int(int((var != 0).sum()) * select_topk)
        mask = torch.zeros_like(var)
        mask[var.topk(k).indices] = 1
        deltas = deltas * mask.reshape(base.shape)
    means = deltas.square().reshape(len(inputs), -1).mean(1)
    weights = means / means.sum()
    sign = torch.where(deltas.sum(0) >= 0, 1.0, -1.0)
    erase = (deltas.sign() == sign).float() * weights.reshape(-1, *[1] * base.dim())
    return base + (deltas * erase).sum(0) / erase.sum(0).clamp(min=1e-6)


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1])
def test_matches_the_steps_written_out(select_topk):
    torch.manual_seed(0)
    base = torch.randn(7, 9)
    inputs = [base + torch.randn(7, 9) * s for s in (0.5, 1.0, 2.0)]
    torch.testing.assert_close(
        pure("sce", base, inputs, select_topk=select_topk), by_hand(base, inputs, select_topk)
    )


def test_a_model_with_itself_is_itself_and_one_model_is_that_model():
    base = torch.randn(5, 6)
    model = base + torch.randn(5, 6)
    assert torch.equal(pure("sce", base, [base.clone(), base.clone()]), base)
    torch.testing.assert_close(pure("sce", base, [model]), model)


def test_select_nothing_returns_the_base():
    base = torch.randn(4, 4)
    inputs = [base + 1, base - 2]
    assert torch.equal(pure("sce", base, inputs, select_topk=0.0), base)
    assert torch.equal(chunked("sce", base, inputs, select_topk=0.0, chunk=3), base)


def test_per_model_weights_are_not_used():
    base = torch.randn(3, 5)
    inputs = [base + torch.randn(3, 5), base + torch.randn(3, 5)]
    assert torch.equal(
        pure("sce", base, inputs, [1.0, 1.0]), pure("sce", base, inputs, [5.0, -2.0])
    )


@SETTINGS
@given(
    data=models(count=st.integers(2, 4), elements=GRID),
    order=st.permutations(range(4)),
    select_topk=st.sampled_from([1.0, 0.6, 0.2]),
)
def test_permuting_models_changes_nothing(data, order, select_topk):
    base, inputs = data
    order = [i for i in order if i < len(inputs)]
    first = pure("sce", base, inputs, select_topk=select_topk)
    second = pure("sce", base, [inputs[i] for i in order], select_topk=select_topk)
    # the float32 sums over the models are added in another order: their rounding is bounded
    # by the size of the terms, which may cancel to a much smaller result
    terms = sum((x - base).abs() for x in inputs)
    bound = 1e-6 + 4 * len(inputs) * torch.finfo(torch.float32).eps * terms
    assert bool(((first - second).abs() <= bound).all()), (first - second).abs().max()


@settings(max_examples=20, deadline=None)
@given(
    data=models(count=st.integers(1, 3)),
    chunk=st.integers(2, 17),
    select_topk=st.floats(0.0, 1.0),
    threads=st.sampled_from([None, 3]),
)
def test_kernel_matches_the_function(data, chunk, select_topk, threads):
    base, inputs = data
    expected = pure("sce", base, inputs, select_topk=select_topk)
    got = chunked("sce", base, inputs, chunk=chunk, threads=threads, select_topk=select_topk)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None)  # each radix pass bincounts 2¹⁶ buckets per chunk
@given(data=models(count=st.integers(2, 3), elements=GRID), chunk=st.integers(2, 9),
       select_topk=st.floats(0.05, 0.95))  # fmt: skip
def test_kernel_selection_is_exact_with_tied_variances(data, chunk, select_topk):
    """The radix-selected threshold keeps every tie at the k-th variance, as the function."""
    base, inputs = data
    expected = pure("sce", base, inputs, select_topk=select_topk)
    got = chunked("sce", base, inputs, chunk=chunk, select_topk=select_topk)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(got == base, expected == base)


@pytest.mark.parametrize("select_topk", [0.37, 0.9, 0.001])
def test_kernel_threshold_bucket_is_resolved_by_its_low_bits(select_topk):
    """Variances in a narrow range share their high 16 bits: the threshold is then decided by
    the low bits of the few gathered candidates, exactly as the function's k-th value."""
    torch.manual_seed(7)
    base = torch.randn(80, 50)
    inputs = [base + 0.01 * (1 + 1e-3 * torch.rand(80, 50)) * torch.sign(torch.randn(80, 50))
              for _ in range(2)]  # fmt: skip
    expected = pure("sce", base, inputs, select_topk=select_topk)
    got = chunked("sce", base, inputs, chunk=333, threads=3, select_topk=select_topk)
    assert torch.equal(got == base, expected == base)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def _fine_tunes(dtype, count, seed, shape=(300, 400)):
    """A base and ``count`` fine-tunes (small changes, some exact zeros) stored as ``dtype``;
    300 × 400 elements: the compiled path samples the variance (bf16: ties, found at once;
    float32: distinct variances, gathered near the threshold)."""
    torch.manual_seed(seed)
    base = (0.02 * torch.randn(shape)).to(dtype)
    inputs = []
    for _ in range(count):
        change = torch.where(torch.rand(shape) < 0.1, 0.0, 0.002 * torch.randn(shape))
        inputs.append((base.float() + change).to(dtype))
    return base, inputs


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("select_topk", [0.5, 0.1, 1.0, 0.0])
def test_compiled_path_equals_the_torch_path(monkeypatch, dtype, count, select_topk):
    base, inputs = _fine_tunes(dtype, count, seed=count)
    expected = stored_kernel("sce", base, inputs, compiled=False, monkeypatch=monkeypatch,
                             select_topk=select_topk)  # fmt: skip
    for chunk, threads in ((1 << 18, None), (5000, 3), (1 << 14, 2)):  # chunking: the same
        got = stored_kernel("sce", base, inputs, compiled=True, monkeypatch=monkeypatch,
                            chunk=chunk, threads=threads, select_topk=select_topk)  # fmt: skip
        assert same_bits(got, expected)


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
def test_compiled_path_of_a_model_with_itself_and_small_tensors(monkeypatch):
    base, (model,) = _fine_tunes(torch.bfloat16, 1, seed=5)
    for topk in (1.0, 0.5):  # no selection: the model; zero variance everywhere: the base
        got = stored_kernel("sce", base, [model, model.clone()], compiled=True,
                            monkeypatch=monkeypatch, select_topk=topk)  # fmt: skip
        assert same_bits(got, model if topk == 1.0 else base)
    small, inputs = _fine_tunes(torch.bfloat16, 2, seed=6, shape=(7, 33))  # selected whole
    expected = stored_kernel("sce", small, inputs, compiled=False, monkeypatch=monkeypatch,
                             select_topk=0.3)  # fmt: skip
    got = stored_kernel("sce", small, inputs, compiled=True, monkeypatch=monkeypatch, chunk=10,
                        threads=2, select_topk=0.3)  # fmt: skip
    assert same_bits(got, expected)


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("select_topk", [0.5, 1.0])
def test_compiled_path_does_not_depend_on_chunks_of_whole_parts(monkeypatch, dtype, select_topk):
    """Chunks of 1M elements (the kernel's `max_chunk`) sum each 256K-element part apart: the
    same weights, hence the same output, as 256K chunks (~2.1M elements, a short last part)."""
    base, inputs = _fine_tunes(dtype, 2, seed=11, shape=(1000, 2100))
    got = {chunk: stored_kernel("sce", base, inputs, compiled=True, monkeypatch=monkeypatch,
                                chunk=chunk, threads=2, select_topk=select_topk)
           for chunk in (1 << 18, 1 << 20, 3 << 18)}  # fmt: skip
    assert same_bits(got[1 << 20], got[1 << 18])
    assert same_bits(got[3 << 18], got[1 << 18])
    assert not same_bits(got[1 << 18], base)
    weights = {chunk: _compiled_weights(base, inputs, chunk, select_topk)
               for chunk in (1 << 18, 1 << 20)}  # fmt: skip
    assert weights[1 << 20] == weights[1 << 18]  # (the float64 sums, bit for bit)


def _compiled_weights(base, inputs, chunk, select_topk):
    """The weights (Python floats from the float64 sums) of the compiled path in ``chunk``s."""
    kernel = SceKernel(SceParams(select_topk=select_topk), len(inputs), base.numel())
    flats = [t.reshape(-1) for t in (base, *inputs)]
    out = torch.empty(base.numel(), dtype=base.dtype)
    run_kernel(kernel, flats, out, has_base=True, device=torch.device("cpu"),
               dtype=torch.float32, chunk=chunk)  # fmt: skip
    assert kernel.fast is not None
    return kernel.weights
