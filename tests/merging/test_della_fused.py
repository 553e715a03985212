"""DELLA's fused compiled kernel path (`_della_fused`) against its torch kernel, bit for bit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from merging import METHODS
from merging.methods import _compiled, _della_fast, _della_fused, random_stream
from merging.streaming import run_kernel
from tests.merging.kernel_helpers import validated
from tests.merging.method_helpers import SETTINGS

pytestmark = pytest.mark.skipif(
    not _della_fast.available, reason="numba missing or HUBMERGE_NO_JIT set"
)
NAMES = ["della", "della_linear"]
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


@pytest.fixture(scope="module", autouse=True)
def _loops_loaded():
    for dtype in DTYPES.values():
        for models in (1, 2, 3):
            _compiled.prepare(dtype, dtype, models, wait=True)
    assert _della_fused.LOOPS.ready(wait=True)  # (small tensors: torch while they load)


def merged(name, base, inputs, weights, *, chunk, compiled=True, threads=None, out_dtype=None,
           **parameters):  # fmt: skip
    """The kernel's output (in ``out_dtype``, default the inputs'), and whether it was fused."""
    params, sources = validated(name, weights, parameters)
    kernel = METHODS.get(name).kernel(params, sources, random_stream(4, "w"), tuple(base.shape))
    flats = [t.reshape(-1) for t in (base, *inputs)]
    out = torch.empty(base.numel(), dtype=out_dtype or base.dtype)
    available = _della_fast.available
    _della_fast.available = compiled
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        run_kernel(kernel, flats, out, has_base=True, device=torch.device("cpu"),
                   dtype=torch.float32, chunk=chunk, pool=pool)  # fmt: skip
    finally:
        _della_fast.available = available
        if pool is not None:
            pool.shutdown()
    return out.view(base.shape), kernel.fused is not None


def _models(seed, shape, count, dtype):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    inputs = [base + torch.randn(shape, generator=g) * 0.002 for _ in range(count)]
    return base.to(dtype), [x.to(dtype) for x in inputs]


@SETTINGS
@given(
    name=st.sampled_from(NAMES),
    dtype=st.sampled_from(sorted(DTYPES)),
    shape=st.sampled_from([(5, 301), (33, 64), (3, 2500), (700,), (1,)]),
    count=st.integers(1, 3),
    chunk=st.sampled_from([7, 1000, 1 << 18]),
    density=st.floats(0.2, 0.8),
    rescale=st.sampled_from(["l1", "none"]),
    threads=st.sampled_from([None, 3]),
    seed=st.integers(0, 99),
)
def test_fused_kernel_is_the_torch_kernel_bit_for_bit(name, dtype, shape, count, chunk,
                                                      density, rescale, threads, seed):  # fmt: skip
    base, inputs = _models(seed, shape, count, DTYPES[dtype])
    weights = [0.7, -0.4, 1.1][:count]
    kwargs = {"density": density, "epsilon": 0.15, "rescale": rescale}
    got, fused = merged(name, base, inputs, weights, chunk=chunk, threads=threads, **kwargs)
    expected, slow = merged(name, base, inputs, weights, chunk=chunk, compiled=False, **kwargs)
    assert fused
    assert not slow
    assert torch.equal(got.view(torch.int16 if dtype == "bf16" else torch.int32),
                       expected.view(torch.int16 if dtype == "bf16" else torch.int32))  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_fused_kernel_does_not_depend_on_the_chunking(name):
    base, inputs = _models(1, (40, 777), 2, torch.bfloat16)
    outputs = [merged(name, base, inputs, [0.5, 0.5], chunk=c, density=0.5)[0]
               for c in (13, 4096, 1 << 18)]  # fmt: skip
    assert all(torch.equal(o, outputs[0]) for o in outputs[1:])


@pytest.mark.parametrize("name", NAMES)
def test_fused_kernel_with_a_dense_source(name):
    """density 1 for one source: it is taken whole, the other one masked."""
    base, inputs = _models(2, (16, 300), 2, torch.bfloat16)
    params = {"chunk": 1000, "out_dtype": torch.float32}
    dense, fused = merged(name, base, inputs[:1], [1.0], density=1.0, **params)
    if name == "della_linear":  # θ_base + δ: the fine-tune itself (up to float32 rounding)
        torch.testing.assert_close(dense, inputs[0].float(), rtol=0, atol=1e-6)
    mixed, fused = merged(name, base, inputs, [1.0, 1.0], density=0.5, **params)
    expected, _ = merged(name, base, inputs, [1.0, 1.0], density=0.5, compiled=False, **params)
    assert fused
    assert torch.equal(mixed, expected)


@pytest.mark.parametrize("name", NAMES)
def test_a_model_merged_with_itself_is_the_model(name):
    base, _ = _models(3, (8, 500), 0, torch.bfloat16)
    out, fused = merged(name, base, [base.clone(), base.clone()], [0.5, 0.5], chunk=1000,
                        density=0.5)  # fmt: skip
    assert fused
    assert torch.equal(out, base)


def test_probability_rescale_keeps_the_torch_path():
    base, inputs = _models(4, (4, 100), 1, torch.float32)
    _, fused = merged("della", base, inputs, [1.0], chunk=64, density=0.5, rescale="probability")
    assert not fused


def test_block_streams_seeded_once_are_each_chunks_own():
    """The generator states of the whole tensor, seeded at the first chunk, sliced per chunk:
    the states block_streams seeds for that chunk alone."""
    from merging.methods._streams import block_streams

    params, sources = validated("della", [0.5, 0.5], {"density": 0.5})
    shape = (3, 100_000)
    kernel = METHODS.get("della").kernel(params, sources, random_stream(4, "w"), shape)
    base = torch.zeros(shape).reshape(-1)
    fused = _della_fused.FusedDella.create(kernel, base, [base + 1, base - 1])
    assert fused is not None
    seeder = _della_fused._modules()[2].seed_streams
    for index, start, stop in [(1, 100_000, 200_000), (0, 0, 300_000), (1, 0, 65_536)]:
        states, incs = fused._streams(index, start // 65_536, (stop - 1) // 65_536 + 1)
        want = block_streams(fused.keys, index, start, stop - start, seeder)
        assert np.array_equal(states, want[0])
        assert np.array_equal(incs, want[1])
