"""The sampled TIES threshold (`_select.SampledSelect`): the k-th largest |δ|, whatever the
sample proposes, and the compiled path that uses it bit-identical to the torch kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging import METHODS
from merging.methods import _compiled, random_stream
from merging.methods._select import SampledSelect
from merging.streaming import run_kernel
from tests.merging.kernel_helpers import validated
from tests.merging.test_compiled import POOL, assert_bitwise, bf16_models


def kth_largest(bits: np.ndarray, k: int) -> int:
    return int(np.sort(bits)[::-1][k - 1])


def select(bits: np.ndarray, k: int, chunk: int, *, pair: bool = False) -> SampledSelect:
    """SampledSelect driven by plain NumPy counting over chunks (what the loops compute; with
    ``pair`` the loops count only bounds 1 and 2, so the others are left at 0 here)."""
    selector = SampledSelect(k, bits.size, pair=pair)
    index = SampledSelect.sample_index(bits.size)
    sample = bits if index is None else bits[index.numpy()]
    selector.propose(sample, whole=index is None)
    offsets = range(0, bits.size, chunk)
    for step in (0, 1):  # the count, and (a pair that missed) the count of all four bounds
        if not selector.pending or (step and not selector.recount):
            break
        pair = selector.pair
        for offset in offsets:
            part = bits[offset : offset + chunk]
            counts = np.array([(part >= b).sum() for b in selector.bounds], dtype=np.int64)
            if pair:
                counts[[0, 3]] = 0
            selector.add_chunk(offset, part.size, counts)
        selector.decide(step)
    if selector.pending and selector.radix is None:
        low, high = selector.interval
        for offset in offsets:
            part = bits[offset : offset + chunk]
            found = part[(part >= low) & (part < high)]
            assert found.size == selector.chunk_inside(offset)
            selector.gathered[offset] = found
        selector.finish_gather()
    elif selector.pending:
        for step in (0, 1):
            for offset in offsets:
                part = torch.from_numpy(bits[offset : offset + chunk].view(np.float32))
                selector.radix.observe(step, part)
            selector.radix.end_pass(step)
        selector.threshold = selector.radix.threshold
    return selector


def as_bits(selector: SampledSelect) -> int:
    return int(selector.threshold.view(torch.int32))


def magnitudes(values: np.ndarray) -> np.ndarray:
    return np.abs(values.astype(np.float32)).view(np.uint32)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300_000),
    density=st.floats(0.0, 1.0),
    kind=st.sampled_from(["gaussian", "levels", "sorted", "hidden"]),
    pair=st.booleans(),
)
def test_threshold_is_the_kth_largest_whatever_the_sample(seed, n, density, kind, pair):
    rng = np.random.default_rng(seed)
    if kind == "levels":  # bf16-like: a few magnitudes repeated many times
        values = rng.integers(-4, 5, n) / 64
    elif kind == "sorted":  # the sample's runs see a skewed part of the tensor
        values = np.sort(rng.standard_normal(n))
    elif kind == "hidden":  # large values only between the sample's runs
        values = np.zeros(n)
        values[rng.integers(0, n, max(1, n // 3))] = rng.standard_normal(max(1, n // 3))
    else:
        values = rng.standard_normal(n) * 0.002
    bits = magnitudes(values)
    k = max(1, int(density * n))
    assert as_bits(select(bits, k, chunk=1 << 14, pair=pair)) == kth_largest(bits, k)


def test_each_way_to_the_threshold_is_taken():
    """Ties at the candidate end the search after the count; a continuous tensor gathers an
    interval; a sample that misses the tensor's structure falls back to the radix passes."""
    rng = np.random.default_rng(0)
    n = 1 << 19
    ties = select(magnitudes(rng.integers(-3, 4, n) / 64), n // 2, chunk=1 << 16)
    assert ties.pending == 0
    assert ties.radix is None
    assert not hasattr(ties, "gathered")
    smooth = select(magnitudes(rng.standard_normal(n)), n // 2, chunk=1 << 16)
    assert smooth.radix is None
    assert smooth.gathered
    skewed = np.zeros(n)
    index = SampledSelect.sample_index(n).numpy()
    outside = np.setdiff1d(np.arange(n), index)
    skewed[outside[: n // 2]] = rng.standard_normal(n // 2) + 10  # half the tensor, unsampled
    fallback = select(magnitudes(skewed), n // 4, chunk=1 << 16)
    assert fallback.radix is not None
    assert as_bits(fallback) == kth_largest(magnitudes(skewed), n // 4)
    # counting the candidate and its successor only: ties end the search as before; else the
    # four bounds are counted in one more pass, and the interval is gathered as before
    paired_ties = select(magnitudes(rng.integers(-3, 4, n) / 64), n // 2, 1 << 16, pair=True)
    assert paired_ties.pending == 0
    assert not hasattr(paired_ties, "gathered")
    smooth_bits = magnitudes(rng.standard_normal(n))
    paired = select(smooth_bits, n // 2, 1 << 16, pair=True)
    assert paired.radix is None
    assert paired.gathered
    assert as_bits(paired) == kth_largest(smooth_bits, n // 2)


needs_loops = pytest.mark.skipif(
    not _compiled.available, reason="numba is not installed (or HUBMERGE_NO_JIT is set)"
)


def run(name, tensors, *, compiled, out_dtype=torch.float32, chunk=1 << 18, **parameters):
    """One tensor through the engine's driver; returns the output and the kernel."""
    method = METHODS.get(name)
    params, sources = validated(name, parameters.pop("weights"), parameters)
    kernel = method.kernel(params, sources, random_stream(0, "t"), tuple(tensors[0].shape))
    out = torch.empty(tensors[0].numel(), dtype=out_dtype)
    saved = _compiled.available
    if compiled:
        _compiled.prepare(tensors[0].dtype, tensors[1].dtype, len(tensors) - 1, wait=True)
    _compiled.available = compiled
    try:
        run_kernel(kernel, tensors, out, has_base=True, device=torch.device("cpu"),
                   dtype=torch.float32, chunk=chunk, pool=POOL)  # fmt: skip
    finally:
        _compiled.available = saved
    return out, kernel


@needs_loops
@pytest.mark.parametrize(
    ("regime", "paths"),
    [("ties", ["count", "count"]), ("levels", ["gather", "gather"]),
     ("levels-float32", ["gather", "gather"]), ("smooth", ["radix", "count"]),
     ("skewed", ["radix", "radix"])],
)  # fmt: skip
def test_compiled_ties_is_bit_identical_on_every_path(regime, paths):
    """Every way to the threshold on the compiled path gives the torch kernels' output: on
    bf16 the count of the candidate and its successor proves it (ties at the threshold), or
    the four bounds are counted in one more pass and the interval is gathered (or, a sample
    blind to the tensor, radix-selected); on float32 the four are counted at once."""
    n = 3 * (1 << 18) + 5
    if regime == "ties":  # δ = x − 0: a few magnitudes, each repeated many times
        g = torch.Generator().manual_seed(1)
        levels = [torch.randint(-3, 4, (n,), generator=g) / 64 for _ in range(2)]
        tensors = [torch.zeros(n).bfloat16(), *(x.bfloat16() for x in levels)]
    elif regime.startswith("levels"):
        tensors = bf16_models(1, n, 2, levels=2)
    else:
        tensors = bf16_models(2, n, 2, levels=None)
    if regime.endswith("float32"):
        tensors = [x.float() for x in tensors]
    if regime == "skewed":  # the second model changes only where the sample does not look
        index = SampledSelect.sample_index(n)
        delta = torch.randn(n) * 0.05
        delta[index] = 0
        tensors[2] = (tensors[0].float() + delta).bfloat16()
    args = {"weights": [0.6, 0.4], "density": 0.3}
    expected, _ = run("ties", tensors, compiled=False, **dict(args))
    got, kernel = run("ties", tensors, compiled=True, **dict(args))
    assert kernel.sampled
    assert kernel.max_chunk > 0
    assert_bitwise(got, expected)
    taken = [
        "radix" if s.radix else "gather" if hasattr(s, "gathered") else "count"
        for s in kernel.selectors
    ]
    assert taken == paths
    assert kernel.sampled.pair == (not regime.endswith("float32"))


@needs_loops
@pytest.mark.parametrize("name", ["ties", "dare_ties"])
def test_bf16_output_is_written_as_torch_rounds_it(name):
    """The compiled loop's own bf16 store equals torch's float32 → bf16 copy, specials too
    (a NaN in the base gives NaN: torch writes 0xFFFF for every NaN). (A NaN in a fine-tune
    is elected differently by the two paths: their sameness is for finite task vectors.)"""
    n = (1 << 17) + 77
    tensors = bf16_models(4, n, 2, levels=None)
    specials = [1e-40, -0.0, 1e-38]
    if name == "ties":  # (in DARE a huge δ overflows the L1 norm: NaN for every element)
        specials += [float("inf"), -float("inf"), 3.0e38]
        tensors[0][100] = float("nan")
    tensors[1][: len(specials)] = torch.tensor(specials).bfloat16()
    tensors[0][10:20] = torch.tensor(1.00390625, dtype=torch.bfloat16)  # halfway cases nearby
    args = {"weights": [1.0, 0.7], "density": 0.5}
    expected, _ = run(name, tensors, compiled=False, out_dtype=torch.bfloat16, **dict(args))
    got, _ = run(name, tensors, compiled=True, out_dtype=torch.bfloat16, **dict(args))
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))
