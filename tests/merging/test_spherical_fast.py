"""NuSLERP, Multi-SLERP, Karcher and NearSwap in the compiled loops (`_spherical_fast`) against
their torch path: bit for bit, in bf16 and float32, every layout, with and without a base."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging import METHODS
from merging.errors import IncompatibleModelsError
from merging.methods import _spherical_fast, random_stream
from merging.methods._compiled import as_array
from merging.methods._kernels import SUM_PART
from merging.streaming import CHUNK, run_kernel
from tests.merging.kernel_helpers import pure, validated
from tests.merging.test_compiled import bf16_models

pytestmark = pytest.mark.skipif(
    not _spherical_fast.available, reason="numba is not installed (or HUBMERGE_NO_JIT is set)"
)
POOL = ThreadPoolExecutor(2)
LAYOUTS = {
    "flat": {},
    "rows": {"nuslerp_flatten": False},
    "columns": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
}


def merged(name, base, inputs, *, compiled, out_dtype=torch.float32, chunk=1 << 18,
           pool=None, weights=None, **parameters):  # fmt: skip
    """One tensor through the engine's kernel driver, the compiled loops on or off (and the
    path under test is the one that ran)."""
    weights = weights if weights is not None else [1.0] * len(inputs)
    method = METHODS.get(name)
    params, sources = validated(name, weights, parameters)
    shape = tuple(inputs[0].shape)
    kernel = method.kernel(params, sources, random_stream(0, "t"), shape)
    flats = [x.reshape(-1) for x in ([] if base is None else [base]) + list(inputs)]
    out = torch.empty(inputs[0].numel(), dtype=out_dtype)
    saved, wants, answers = _spherical_fast.available, _spherical_fast.wants, []

    def recorded(*args, **kwargs):
        answers.append(wants(*args, **kwargs))
        return answers[-1]

    if compiled:
        assert _spherical_fast.loaded(wait=True)
    _spherical_fast.available, _spherical_fast.wants = compiled, recorded
    try:
        run_kernel(kernel, flats, out, has_base=base is not None, device=torch.device("cpu"),
                   dtype=torch.float32, chunk=chunk, pool=pool)  # fmt: skip
    finally:
        _spherical_fast.available, _spherical_fast.wants = saved, wants
    assert answers
    assert all(answers) if compiled else not any(answers)
    return out.view(shape)


def assert_bitwise(got: torch.Tensor, expected: torch.Tensor) -> None:
    bits = torch.int32 if got.dtype == torch.float32 else torch.int16
    different = int((got.view(bits) != expected.view(bits)).sum())
    assert different == 0, f"{different} of {got.numel()} elements differ"


CASES = st.sampled_from(
    [("nuslerp", layout, 2) for layout in LAYOUTS]
    + [("multislerp", "flat", k) for k in (2, 3, 4)]
    + [("karcher", "flat", k) for k in (2, 3, 4)]  # 4: the generic Gram loop (flat_sums)
    + [("nearswap", "flat", 1)]
)


@settings(max_examples=40, deadline=None)
@given(
    case=CASES,
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 24),
    cols=st.sampled_from([1, 3, 64, 300, 1031]),
    with_base=st.booleans(),
    levels=st.sampled_from([None, 2]),
    storage=st.sampled_from([torch.bfloat16, torch.float32]),
    out_dtype=st.sampled_from([torch.bfloat16, torch.float32]),
    chunk=st.sampled_from([7, 1000, 1024, 5000, 1 << 18]),
    threads=st.booleans(),
)
def test_compiled_equals_the_torch_path_bit_for_bit(
    case, seed, rows, cols, with_base, levels, storage, out_dtype, chunk, threads
):
    name, layout, count = case
    tensors = [t.to(storage).view(rows, cols) for t in bf16_models(seed, rows * cols, count,
                                                                    levels=levels)]  # fmt: skip
    base, inputs = tensors[0], tensors[1:]
    parameters = {"t": 0.01} if name == "nearswap" else dict(LAYOUTS[layout])
    if name == "karcher" or (name != "nearswap" and not with_base):
        base, inputs = None, tensors[:count] if name != "nuslerp" else tensors[1:]
    weights = [0.3, 0.5, 1.0, 0.2][: len(inputs)]
    run = {"out_dtype": out_dtype, "chunk": chunk, "pool": POOL if threads else None,
           "weights": weights, **parameters}  # fmt: skip
    try:
        expected = merged(name, base, inputs, compiled=False, **run)
    except IncompatibleModelsError:  # antipodal Multi-SLERP inputs: both paths refuse
        with pytest.raises(IncompatibleModelsError):
            merged(name, base, inputs, compiled=True, **run)
        return
    assert_bitwise(merged(name, base, inputs, compiled=True, **run), expected)


@settings(max_examples=20, deadline=None)
@given(
    case=CASES,
    seed=st.integers(0, 10_000),
    shape=st.sampled_from([(40, 300), (3000,), (7, 1031)]),
    with_base=st.booleans(),
)
def test_compiled_kernel_matches_the_function_and_the_chunking_changes_only_rounding(
    case, seed, shape, with_base
):
    name, layout, count = case
    n = 1
    for side in shape:
        n *= side
    tensors = [t.float().view(shape) for t in bf16_models(seed, n, count, levels=None)]
    base, inputs = tensors[0], tensors[1:]
    parameters = {"t": 0.001} if name == "nearswap" else dict(LAYOUTS[layout])
    if name == "karcher" or (name != "nearswap" and not with_base):
        base = None
    weights = [0.3, 0.5, 1.0, 0.2][: len(inputs)]
    expected = pure(name, base, inputs, weights, **parameters)
    for chunk in (1024, 4096, 1 << 18):
        got = merged(name, base, inputs, compiled=True, chunk=chunk, weights=weights,
                     **parameters)  # fmt: skip
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float32])
def test_nuslerp_at_t_0_and_1_is_that_model_and_antipodal_models_agree(layout, storage):
    a, b = (t.to(storage).view(30, 70) for t in bf16_models(3, 2100, 1, levels=None))
    parameters = LAYOUTS[layout]
    for weights, model in (([1.0, 0.0], a), ([0.0, 1.0], b)):
        got = merged("nuslerp", None, [a, b], compiled=True, out_dtype=storage, chunk=1000,
                     weights=weights, **parameters)  # fmt: skip
        assert_bitwise(got, model)
    # antipodal: sin Ω ≈ 0 gives the midpoint, 0, or (cos Ω rounded just above −1) huge
    # coefficients that cancel, whose rounding noise depends on the order of the sums (the
    # function's differs): the same on both paths of the kernel
    opposite = [a, -a]
    got = merged("nuslerp", None, opposite, compiled=True, chunk=1000, **parameters)
    assert_bitwise(got, merged("nuslerp", None, opposite, compiled=False, chunk=1000,
                               **parameters))  # fmt: skip


@pytest.mark.parametrize("name", ["multislerp", "karcher", "nuslerp"])
def test_a_model_with_itself_is_itself(name):
    (a,) = bf16_models(4, 5000, 0, levels=None)
    count = 2 if name == "nuslerp" else 3
    got = merged(name, None, [a.clone() for _ in range(count)], compiled=True, chunk=1024)
    if name == "nuslerp":  # colinear: (1 − t)·a + t·a, exact at t = ½
        assert_bitwise(got, a.float())
    torch.testing.assert_close(got, a.float(), rtol=1e-6, atol=0)


def test_multislerp_of_antipodal_models_is_their_linear_mix():
    base, delta = (t.float() for t in bf16_models(5, 4096, 1, levels=None))
    delta = delta - base  # exact: bf16 values close to each other
    inputs = [base + delta, base - delta]  # task vectors ±δ, exactly
    for with_base in (None, base):
        got = merged("multislerp", with_base, inputs if with_base is not None else [delta, -delta],
                     compiled=True, chunk=1000)  # fmt: skip
        expected = base if with_base is not None else torch.zeros_like(base)
        assert_bitwise(got, expected)


def test_nearswap_at_t_0_is_the_base_and_of_a_model_with_itself_too():
    base, other = bf16_models(6, 5000, 1, levels=2)  # (signed zeros: −0 + 0·x is +0)
    for inputs, t in (([other], 0.0), ([base.clone()], 0.3)):
        got = merged("nearswap", base, inputs, compiled=True, out_dtype=torch.bfloat16, t=t)
        assert torch.equal(got, base)
        assert_bitwise(got, merged("nearswap", base, inputs, compiled=False,
                                   out_dtype=torch.bfloat16, t=t))  # fmt: skip


def test_warm_up_compiles_the_usual_loops():
    _spherical_fast.warm_up()
    assert _spherical_fast.loaded(wait=False)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.sampled_from([1, 300, 5000, 70_000]),
    t=st.floats(0, 1),
    parallel=st.booleans(),
    storage=st.sampled_from([torch.bfloat16, torch.float32]),
    out_dtype=st.sampled_from([torch.bfloat16, torch.float32]),
    chunk=st.sampled_from([7, 1024, 5000, 1 << 18]),
    threads=st.booleans(),
)
def test_slerp_runs_nuslerps_passes_bit_for_bit_and_matches_its_function(
    seed, n, t, parallel, storage, out_dtype, chunk, threads
):
    """SLERP's kernel is NuSLERP's over (base, other): compiled == torch path, and both are
    the function (up to float rounding), the nearly parallel case included."""
    base, other = (x.to(storage) for x in bf16_models(seed, n, 1, levels=None))
    if parallel:
        other = (base.float() * 1.5).to(storage)
    run = {"out_dtype": out_dtype, "chunk": chunk, "pool": POOL if threads else None, "t": t}
    expected = merged("slerp", base, [other], compiled=False, **run)
    assert_bitwise(merged("slerp", base, [other], compiled=True, **run), expected)
    if out_dtype == torch.float32:
        function = pure("slerp", base.float(), [other.float()], [1.0], t=t)
        torch.testing.assert_close(expected, function, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "count", "with_base"), [("karcher", 3, False),
                                                          ("multislerp", 2, True)])  # fmt: skip
def test_big_chunks_sum_each_part_as_the_engines_chunks(monkeypatch, name, count, with_base):
    """A tensor of 8M+ elements: the compiled Gram kernel takes 1M-element chunks and sums each
    256K part apart (`flat_parts`), the torch path takes the engine's 256K chunks: bit for
    bit (with sums per 1M chunk, G and so the coefficients would differ)."""
    tensors = bf16_models(3, (1 << 23) + 12_345, count, levels=None)
    base, inputs = (tensors[0], tensors[1:]) if with_base else (None, tensors[:count])
    lengths = []
    flat_parts = _spherical_fast.flat_parts

    def recorded(base, inputs, *args, **kwargs):
        lengths.append(inputs[0].numel())
        return flat_parts(base, inputs, *args, **kwargs)

    monkeypatch.setattr(_spherical_fast, "flat_parts", recorded)
    run = {"out_dtype": torch.bfloat16, "pool": POOL}
    expected = merged(name, base, inputs, compiled=False, **run)
    assert max(lengths) == SUM_PART
    lengths.clear()
    assert_bitwise(merged(name, base, inputs, compiled=True, **run), expected)
    assert max(lengths) == 4 * SUM_PART


def test_gram_parts_are_the_engines_cpu_chunks():
    assert SUM_PART == CHUNK


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("n", [1, 1023, 4096, 4097, 9000, 20_000])
def test_gram_loops_sum_each_part_as_the_generic_loop(count, with_base, n):
    """`gram2` / `gram3` (panels of rows, parts) against `flat_sums` on each part alone."""
    _spherical_fast.loaded(wait=True)
    loops = _spherical_fast._loops
    tensors = [as_array(t) for t in bf16_models(n, n, count, levels=2 if n % 2 else None)]
    base, xs = tensors[0], tuple(tensors[1 : count + 1])
    pairs = [(i, j) for i in range(count) for j in range(i, count)]
    left = np.asarray([i for i, _ in pairs], dtype=np.int64)
    right = np.asarray([j for _, j in pairs], dtype=np.int64)
    part = 4096
    parts = -(-n // part)
    got = np.empty((parts, len(pairs)))
    loop = loops.gram2 if count == 2 else loops.gram3
    loop(base if with_base else None, *xs, part, got)
    for p in range(parts):
        piece = slice(p * part, (p + 1) * part)
        expected = np.empty(len(pairs))
        loops.flat_sums(base[piece], with_base, tuple(x[piece] for x in xs), left, right,
                        expected)  # fmt: skip
        assert expected.tobytes() == got[p].tobytes()
