"""The chunked kernels against the pure reference functions."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from merging import METHODS
from merging.methods import random_stream
from tests.merging.method_helpers import (
    call,
    method_parameters,
    models,
)

# ---------------------------------------------------------------- chunked kernels


# The methods added for mergekit parity test their kernels in test_methods_<family>.py,
# with the parameter ranges they accept (DELLA's density ± epsilon window, Multi-SLERP's weights).
OWN_KERNEL_TESTS = {"arcee_fusion", "della", "della_linear", "karcher", "multislerp", "nearswap",
                    "nuslerp", "ram", "ramplus_tl", "sce"}  # fmt: skip
KERNEL_METHODS = sorted(
    n for n in METHODS.names() if METHODS.get(n).kernel is not None and n not in OWN_KERNEL_TESTS
)


def run_chunked(name, base, inputs, weights, chunk, *, seed=0, tensor="w", **parameters):
    """The engine's chunked path for one tensor, with a tiny chunk size."""
    from merging.engine import run_kernel

    method = METHODS.get(name)
    per_source_keys = set(method.source_params.model_fields)
    shared = {k: v for k, v in parameters.items() if k in per_source_keys}
    params = method.params.model_validate(
        {k: v for k, v in parameters.items() if k not in per_source_keys}
    )
    sources = [method.source_params.model_validate({**shared, "weight": w}) for w in weights]
    numel = inputs[0].numel()
    kernel = method.kernel(params, sources, random_stream(seed, tensor), tuple(inputs[0].shape))
    tensors = ([base] if method.needs_base else []) + list(inputs)
    out = torch.empty(numel)
    run_kernel(
        kernel,
        [t.reshape(-1) for t in tensors],
        out,
        has_base=method.needs_base,
        device=torch.device("cpu"),
        dtype=torch.float32,
        chunk=chunk,
    )
    return out.view(inputs[0].shape)


@settings(max_examples=40, deadline=None)
@given(
    data=models(count=st.integers(1, 3)),
    weights=st.lists(st.floats(-2, 2, width=32), min_size=3, max_size=3),
    name=st.sampled_from(KERNEL_METHODS),
    chunk=st.integers(1, 17),
    density=st.floats(0.1, 1.0),
    rescale=st.sampled_from(["none", "l1", "density"]),
    seed=st.integers(0, 99),
)
def test_chunked_kernel_matches_the_pure_function(
    data, weights, name, chunk, density, rescale, seed
):
    base, inputs = data
    method = METHODS.get(name)
    if method.max_inputs is not None:
        inputs = inputs[: method.max_inputs]
    assume(len(inputs) >= method.min_inputs)
    weights = weights[: len(inputs)]
    parameters: dict[str, Any] = dict(method_parameters(name))
    if "density" in method.source_params.model_fields:
        parameters["density"] = density
    if "rescale" in method.params.model_fields:
        parameters["rescale"] = rescale
    expected = call(name, base if method.needs_base else None, inputs, weights, tensor="w",
                    seed=seed, **parameters)  # fmt: skip
    got = run_chunked(name, base, inputs, weights, chunk, seed=seed, **parameters)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    data=models(count=st.integers(1, 3), elements=st.integers(-6, 6).map(lambda i: i / 4)),
    chunk=st.integers(1, 9),
    density=st.floats(0.05, 0.95),
)
def test_ties_kernel_threshold_is_exact_with_ties(data, chunk, density):
    """The radix-select threshold keeps exactly the elements the pure trim keeps."""
    base, inputs = data
    weights = [1.0] * len(inputs)
    expected = call("ties", base, inputs, weights, density=density)
    got = run_chunked("ties", base, inputs, weights, chunk, density=density)
    assert torch.equal(got, expected)


@settings(max_examples=60, deadline=None)
@given(
    data=models(count=st.integers(1, 3), elements=st.integers(-3, 3).map(lambda i: i / 4)),
    chunk=st.integers(1, 9),
    density=st.floats(0.05, 0.95),
    gamma=st.floats(0.0, 0.5),
    name=st.sampled_from(["breadcrumbs", "breadcrumbs_ties"]),
)
def test_breadcrumbs_kernel_band_is_exact_with_ties(data, chunk, density, gamma, name):
    """Few distinct values: most band edges fall inside runs of ties, which the kernel must
    split exactly where the stable argsort of the pure function does (by element order)."""
    base, inputs = data
    weights = [1.0] * len(inputs)
    expected = call(name, base, inputs, weights, density=density, gamma=gamma)
    got = run_chunked(name, base, inputs, weights, chunk, density=density, gamma=gamma)
    assert torch.equal(got, expected)
