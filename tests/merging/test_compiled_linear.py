"""Task arithmetic and linear in the compiled loop (`_compiled.linear_apply`) against the torch
kernels they replace on CPU: bit for bit, in float32 and bf16 outputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging import METHODS
from merging.methods import _compiled, random_stream
from merging.streaming import run_kernel
from tests.merging.kernel_helpers import validated
from tests.merging.test_compiled import POOL, bf16_models

pytestmark = pytest.mark.skipif(
    not _compiled.available, reason="numba is not installed (or HUBMERGE_NO_JIT is set)"
)


def merged(name, tensors, *, compiled, has_base, out_dtype, chunk, weights, **parameters):
    method = METHODS.get(name)
    params, sources = validated(name, weights, parameters)
    kernel = method.kernel(params, sources, random_stream(0, "t"), tuple(tensors[0].shape))
    out = torch.empty(tensors[0].numel(), dtype=out_dtype)
    saved, calls = _compiled.linear_apply, []

    def counted(*args, **kwargs):
        calls.append(1)
        return saved(*args, **kwargs)

    if compiled:
        kinds = {t.dtype for t in tensors}
        _compiled.prepare(tensors[0].dtype, tensors[1].dtype, len(tensors) - 1, wait=True)
        assert len(kinds) == 1
    available, _compiled.available, _compiled.linear_apply = _compiled.available, compiled, counted
    try:
        run_kernel(kernel, tensors, out, has_base=has_base, device=torch.device("cpu"),
                   dtype=torch.float32, chunk=chunk, pool=POOL)  # fmt: skip
    finally:
        _compiled.available, _compiled.linear_apply = available, saved
    assert bool(calls) == compiled  # the path under test is the one that ran
    return out


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(["task_arithmetic", "linear"]),
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5000),
    models=st.integers(1, 3),
    weights=st.lists(st.sampled_from([1.0, 0.5, 0.3, -0.7, 2.0, 1e-9]), min_size=4, max_size=4),
    normalize=st.booleans(),
    lambda_=st.sampled_from([1.0, 0.7, -1.3]),
    storage=st.sampled_from([torch.bfloat16, torch.float32]),
    out_dtype=st.sampled_from([torch.bfloat16, torch.float32]),
    chunk=st.sampled_from([7, 1024, 1 << 18]),
)
def test_linear_loop_equals_the_torch_kernels_bit_for_bit(
    name, seed, n, models, weights, normalize, lambda_, storage, out_dtype, chunk
):
    tensors = [t.to(storage) for t in bf16_models(seed, n, models, levels=None)]
    has_base = name == "task_arithmetic"  # linear: the first tensor is one more model
    parameters = {"weights": weights[: models + (0 if has_base else 1)], "normalize": normalize}
    if has_base:
        parameters["lambda"] = lambda_
    args = {"has_base": has_base, "out_dtype": out_dtype, "chunk": chunk, **parameters}
    expected = merged(name, tensors, compiled=False, **dict(args))
    got = merged(name, tensors, compiled=True, **dict(args))
    bits = torch.int32 if out_dtype == torch.float32 else torch.int16
    assert torch.equal(got.view(bits), expected.view(bits))
