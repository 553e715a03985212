"""RAM and RAM+ (tensor-local): unique changes kept whole, shared ones averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from merging.methods import _compiled, _method_loops
from merging.methods._compiled import as_array
from merging.methods.ram import contributions, decode, encode
from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import GRID, SETTINGS, models
from tests.merging.stored_kernel import same_bits, stored_kernel


def test_ram_keeps_unique_changes_and_averages_shared_ones():
    base = torch.zeros(4)
    first = torch.tensor([1.0, 0.0, 2.0, 1e-6])
    second = torch.tensor([0.0, 3.0, 4.0, 0.0])
    out = pure("ram", base, [first, second])
    # |δ| ≤ ε = 1e-5 does not contribute
    assert out.tolist() == [1.0, 3.0, 3.0, 0.0]


def test_ramplus_scales_each_models_unique_entries():
    base = torch.zeros(5)
    first = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0])  # 2 unique, 1 shared: ρ = 0.5
    second = torch.tensor([0.0, 0.0, 4.0, 3.0, 0.0])  # 1 unique, 1 shared: ρ = 1
    out = pure("ramplus_tl", base, [first, second], r=0.5, alpha=0.8)
    lam_first, lam_second = 1 + 0.5 * 0.5, 1 + 0.5 * 0.8
    torch.testing.assert_close(out, torch.tensor([lam_first, lam_first, 3.0, 3 * lam_second, 0]))


def test_ramplus_without_unique_entries_clamps_rho_at_alpha():
    base = torch.zeros(3)
    x = torch.tensor([1.0, 2.0, 3.0])
    out = pure("ramplus_tl", base, [x, x.clone()])  # shared everywhere: averaged
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
def test_a_model_with_itself_is_itself(name):
    base = torch.randn(4, 6)
    model = base + torch.randn(4, 6)
    torch.testing.assert_close(pure(name, base, [model, model.clone()]), model)
    assert torch.equal(pure(name, base, [base.clone()]), base)


@SETTINGS
@given(
    data=models(count=st.integers(1, 3), elements=GRID),
    name=st.sampled_from(["ram", "ramplus_tl"]),
    chunk=st.integers(1, 17),
    threads=st.sampled_from([None, 3]),
)
def test_kernel_matches_the_function(data, name, chunk, threads):
    base, inputs = data
    assert torch.equal(chunked(name, base, inputs, chunk=chunk, threads=threads),
                       pure(name, base, inputs))  # fmt: skip


@pytest.mark.parametrize("count", [1, 3, 8])
def test_kept_contribution_bytes_give_back_the_masks_and_counts(count):
    torch.manual_seed(count)
    deltas = [torch.where(torch.rand(500) < 0.5, 0.0, torch.randn(500)) for _ in range(count)]
    masks, counts = contributions(deltas, 1e-5)
    again, again_counts = decode(encode(masks), count)
    assert all(torch.equal(a, m) for a, m in zip(again, masks, strict=True))
    assert torch.equal(again_counts.int(), counts)


@pytest.mark.parametrize("count", [2, 9])  # 9 models: more than a byte holds, recomputed
def test_ramplus_kernel_with_kept_bytes_is_the_function_bit_for_bit(count):
    torch.manual_seed(count)
    base = torch.randn(40, 33)
    inputs = [base + torch.where(torch.rand(40, 33) < 0.4, 0.0, 0.01 * torch.randn(40, 33))
              for _ in range(count)]  # fmt: skip
    expected = pure("ramplus_tl", base, inputs, r=0.3, alpha=0.9)
    got = chunked("ramplus_tl", base, inputs, chunk=101, threads=3, r=0.3, alpha=0.9)
    assert torch.equal(got, expected)


def _stored_models(count: int, seed: int, shape=(37, 129)):
    """bf16 fine-tunes of a bf16 base: small changes, exact zeros and changes near ε."""
    torch.manual_seed(seed)
    base = (0.02 * torch.randn(shape)).bfloat16()
    inputs = []
    for _ in range(count):
        change = 0.002 * torch.randn(shape)
        change = torch.where(torch.rand(shape) < 0.3, 0.0, change)
        change = torch.where(torch.rand(shape) < 0.05, 1e-5 * torch.randn(shape), change)
        inputs.append((base.float() + change).bfloat16())
    return base, inputs


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
@pytest.mark.parametrize("count", [1, 2, 3, 9])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_compiled_loops_equal_the_torch_path(monkeypatch, name, count, out_dtype):
    base, inputs = _stored_models(count, count)
    extra = {"r": 0.3, "alpha": 0.9} if name == "ramplus_tl" else {}
    expected = stored_kernel(name, base, inputs, compiled=False, monkeypatch=monkeypatch,
                             out_dtype=out_dtype, epsilon=1e-5, **extra)  # fmt: skip
    for chunk, threads in ((1 << 18, None), (1000, 3), (4096, 2)):  # chunking changes nothing
        got = stored_kernel(name, base, inputs, compiled=True, monkeypatch=monkeypatch,
                            chunk=chunk, threads=threads, out_dtype=out_dtype, epsilon=1e-5,
                            **extra)  # fmt: skip
        assert same_bits(got, expected)


def _stored_arrays(seed: int, n: int, dtype):
    """A base and two inputs as the loops read them (bf16 as uint16 bit patterns): changes
    near ε, exact zeros, ±0, subnormals; with ``special``, infinities and NaNs too."""
    base, inputs = _stored_models(2, seed, shape=(n,))
    tensors = [base, *inputs] if dtype == "bf16" else [base.float(), *(x.float() for x in inputs)]
    arrays = [as_array(t).copy() for t in tensors]
    rng = np.random.default_rng(seed)
    odd = np.array([0.0, -0.0, 1e-40, -1e-40, 1e-5, -1e-5], dtype=np.float32)
    for a in arrays:
        picks = rng.random(n) < 0.05
        values = rng.choice(odd, n)
        a[picks] = (values if dtype == "f32" else (values.view(np.uint32) >> 16))[picks]
    return arrays


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("n", [1, 1023, 1024, 5000])
def test_two_model_loops_equal_the_generic_ones(dtype, n):
    loops = _method_loops.loops("_jit_ram")
    base, x0, x1 = _stored_arrays(n, n, dtype)
    epsilon, lambdas = np.float32(1e-5), np.asarray([1.03, 1.2], dtype=np.float32)
    counts = [np.zeros(2, dtype=np.int64) for _ in range(4)]
    loops.ram_counts(base, (x0, x1), epsilon, counts[0], counts[1])
    loops.ram_counts2(base, x0, x1, epsilon, counts[2], counts[3])
    assert np.array_equal(counts[0], counts[2])
    assert np.array_equal(counts[1], counts[3])
    for plus in (False, True):
        for out_dtype in (np.uint16, np.float32):
            expected, got = np.empty(n, dtype=out_dtype), np.empty(n, dtype=out_dtype)
            loops.ram_apply(base, (x0, x1), epsilon, plus, lambdas, expected)
            loops.ram_apply2(base, x0, x1, epsilon, plus, lambdas, got)
            assert expected.tobytes() == got.tobytes()


@pytest.mark.skipif(not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set")
def test_two_model_loops_store_infinities_and_nans_as_the_generic_ones():
    """Infinite and NaN inputs (bf16 out: every NaN is 0xFFFF; the sign of a NaN made from
    two NaNs in float32 is the compiler's choice in either loop)."""
    loops = _method_loops.loops("_jit_ram")
    special = np.array([0x7F80, 0xFF80, 0x7FC0, 0x3F80, 0x0000, 0x8000], dtype=np.uint16)
    rng = np.random.default_rng(5)
    base, x0, x1 = (rng.choice(special, 4096) for _ in range(3))
    epsilon, lambdas = np.float32(1e-5), np.asarray([1.03, 1.2], dtype=np.float32)
    for plus in (False, True):
        expected, got = np.empty(4096, dtype=np.uint16), np.empty(4096, dtype=np.uint16)
        loops.ram_apply(base, (x0, x1), epsilon, plus, lambdas, expected)
        loops.ram_apply2(base, x0, x1, epsilon, plus, lambdas, got)
        assert np.array_equal(expected, got)
