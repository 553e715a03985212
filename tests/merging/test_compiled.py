"""The compiled TIES / DARE loops against the torch kernels they replace: bit for bit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merging import METHODS
from merging.methods import _compiled, random_stream
from merging.streaming import run_kernel
from tests.merging.kernel_helpers import validated

pytestmark = pytest.mark.skipif(
    not _compiled.available, reason="numba is not installed (or HUBMERGE_NO_JIT is set)"
)

FUSED = ["ties", "dare_ties"]
# the compiled loops that write output chunks (TIES's counting pass may write them itself)
OUTPUT_LOOPS = ("family_apply", "count_trim_apply")
POOL = ThreadPoolExecutor(2)


def chunked(
    name, base, inputs, *, compiled, chunk, pool=None, seed=0, weights, record=None, **parameters
):
    """One tensor through the engine's kernel driver, compiled loops on or off (``record``
    gets the names of the compiled output loops that ran, one per chunk)."""
    method = METHODS.get(name)
    params, sources = validated(name, weights, parameters)
    kernel = method.kernel(params, sources, random_stream(seed, "t"), tuple(base.shape))
    out = torch.empty(base.numel())
    saved = _compiled.available
    loops = {name: getattr(_compiled, name) for name in OUTPUT_LOOPS}
    calls = [] if record is None else record

    def counted(loop):
        def call(*args, **kwargs):
            calls.append(loop.__name__)
            return loop(*args, **kwargs)

        return call

    if compiled and {base.dtype, *(x.dtype for x in inputs)} <= {torch.bfloat16, torch.float32}:
        _compiled.prepare(base.dtype, inputs[0].dtype, len(inputs), wait=True)
    _compiled.available = compiled
    for name, loop in loops.items():
        setattr(_compiled, name, counted(loop))
    try:
        run_kernel(
            kernel,
            [base, *inputs],
            out,
            has_base=True,
            device=torch.device("cpu"),
            dtype=torch.float32,
            chunk=chunk,
            pool=pool,
        )
    finally:
        _compiled.available = saved
        for name, loop in loops.items():
            setattr(_compiled, name, loop)
    takes = _compiled.wants(base, inputs, torch.float32) if saved else False
    assert bool(calls) == (compiled and takes)  # the path under test is the one that ran
    return out


def bf16_models(seed: int, n: int, models: int, *, levels: int | None) -> list[torch.Tensor]:
    """bf16 base and fine-tunes. With ``levels``, deltas take few distinct values (long runs
    of ties at the threshold, exact zeros, signed zeros); else Llama-like Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 0.02).bfloat16()
    tensors = [base]
    for _ in range(models):
        if levels is None:
            noise = torch.randn(n, generator=g) * 0.002
        else:
            noise = torch.randint(-levels, levels + 1, (n,), generator=g) / 64
        tensors.append((base.float() + noise).bfloat16())
    if levels is not None:
        base[: n // 8] = -0.0  # x − (−0) and −0 − 0: signed zeros through every step
        tensors[1][: n // 16] = 0.0
    return tensors


def assert_bitwise(got: torch.Tensor, expected: torch.Tensor) -> None:
    different = (got.view(torch.int32) != expected.view(torch.int32)).sum()
    assert int(different) == 0, f"{int(different)} of {got.numel()} elements differ"


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(FUSED),
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5000),
    models=st.integers(1, 5),  # from 3 on the loops once fell off a cliff (a scratch array)
    levels=st.sampled_from([None, 1, 3]),
    density=st.floats(0.05, 1.0),
    weights=st.lists(st.sampled_from([1.0, 0.5, 0.3, -0.7, 2.0]), min_size=5, max_size=5),
    sign_method=st.sampled_from(["sum", "count", "total"]),
    normalize=st.booleans(),
    divide_by=st.sampled_from(["weights", "count"]),
    rescale=st.sampled_from(["l1", "density", "none"]),
    lambda_=st.sampled_from([1.0, 0.7, -1.3]),
    chunk=st.sampled_from([3, 64, 1024, 1 << 18]),
    threaded=st.booleans(),
)
def test_compiled_loops_equal_the_torch_kernels_bit_for_bit(
    name,
    seed,
    n,
    models,
    levels,
    density,
    weights,
    sign_method,
    normalize,
    divide_by,
    rescale,
    lambda_,
    chunk,
    threaded,
):
    tensors = bf16_models(seed, n, models, levels=levels)
    parameters = {
        "density": density,
        "sign_method": sign_method,
        "normalize": normalize,
        "divide_by": divide_by,
        "lambda": lambda_,
        "weights": weights[:models],
    }
    if name == "dare_ties":
        parameters["rescale"] = rescale
    pool = POOL if threaded else None
    expected = chunked(
        name, tensors[0], tensors[1:], compiled=False, chunk=chunk, seed=seed, **parameters
    )
    got = chunked(
        name,
        tensors[0],
        tensors[1:],
        compiled=True,
        chunk=chunk,
        pool=pool,
        seed=seed,
        **parameters,
    )
    assert_bitwise(got, expected)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float32])
def test_one_llama_sized_chunk_is_bit_identical(name, storage):
    """A full 256K-element chunk split across threads, as the engine runs a 1B model."""
    tensors = [t.to(storage) for t in bf16_models(7, 3 * (1 << 18) + 123, 2, levels=None)]
    args = {"weights": [0.5, 0.5], "density": 0.5, "chunk": 1 << 18}
    expected = chunked(name, tensors[0], tensors[1:], compiled=False, **args)
    got = chunked(name, tensors[0], tensors[1:], compiled=True, pool=POOL, **args)
    assert_bitwise(got, expected)


def test_dare_l1_norms_do_not_depend_on_the_chunking():
    """Compiled DARE takes 1M-element chunks; its L1 norms are still sums over the runs of
    256K elements the torch kernels sum over, so the output is the same bit for bit."""
    tensors = bf16_models(5, 9 * (1 << 18) + 321, 2, levels=None)
    args = {"weights": [0.6, 0.5], "density": 0.4, "rescale": "l1"}
    expected = chunked("dare_ties", tensors[0], tensors[1:], compiled=False, chunk=1 << 18, **args)
    got = chunked("dare_ties", tensors[0], tensors[1:], compiled=True, chunk=1 << 20, pool=POOL,
                  **args)  # fmt: skip
    assert_bitwise(got, expected)


@pytest.mark.parametrize("speculated", [True, False])
def test_ties_counting_pass_writes_the_output_when_its_guess_is_the_threshold(speculated):
    """bf16 task vectors (Llama-like noise) repeat their magnitudes: the sample's candidate is
    the exact threshold, so the counting pass's output stands and no output pass runs.
    float32 weights with fine noise have distinct magnitudes: the guess fails, and the output
    pass writes every chunk again."""
    tensors = bf16_models(3, 5 * (1 << 18) + 77, 2, levels=None)
    if not speculated:
        g = torch.Generator().manual_seed(4)
        tensors = [t.float() + torch.randn(t.shape, generator=g) * 1e-5 for t in tensors]
    args = {"weights": [0.7, 0.4], "density": 0.3, "chunk": 1 << 18}
    expected = chunked("ties", tensors[0], tensors[1:], compiled=False, **args)
    calls = []
    got = chunked("ties", tensors[0], tensors[1:], compiled=True, pool=POOL, record=calls, **args)
    assert_bitwise(got, expected)
    assert "count_trim_apply" in calls
    assert ("family_apply" in calls) is not speculated


def test_ties_threshold_runs_of_ties_are_all_kept():
    """Every element equal to the k-th largest |δ| survives the trim, compiled or not."""
    base = torch.zeros(1000, dtype=torch.bfloat16)
    x = torch.full((1000,), 0.25, dtype=torch.bfloat16)
    x[:300] = 0.5  # k = 500 falls inside the run of 0.25s: all 1000 are kept
    got = chunked("ties", base, [x], compiled=True, chunk=64, weights=[1.0], density=0.5)
    assert torch.equal(got, x.float())


def test_declines_what_it_cannot_take():
    """float16 inputs, mixed input dtypes and non-float32 compute go to the torch kernels."""
    bf16 = torch.zeros(8, dtype=torch.bfloat16)
    f32 = torch.zeros(8)
    _compiled.prepare(torch.bfloat16, torch.bfloat16, 2, wait=True)
    _compiled.prepare(torch.float32, torch.bfloat16, 1, wait=True)
    assert _compiled.wants(bf16, [bf16, bf16], torch.float32)
    assert _compiled.wants(f32, [bf16], torch.float32)
    assert not _compiled.wants(bf16, [bf16.half()], torch.float32)
    assert not _compiled.wants(bf16, [bf16, f32], torch.float32)
    assert not _compiled.wants(bf16, [bf16], torch.float64)


def test_float16_inputs_fall_back_with_the_same_result():
    tensors = [t.half() for t in bf16_models(3, 999, 2, levels=3)]
    args = {"weights": [1.0, 0.5], "density": 0.3, "chunk": 100}
    expected = chunked("ties", tensors[0], tensors[1:], compiled=False, **args)
    got = chunked("ties", tensors[0], tensors[1:], compiled=True, **args)
    assert_bitwise(got, expected)


def test_loops_load_in_the_background_and_chunks_wait_for_nothing():
    """The first ask for a new kind of chunk answers no (torch runs it) and starts loading;
    once loaded, the same kind is taken."""
    kind = (torch.float32, torch.bfloat16, 1)  # (a kind other tests use: no extra compile)
    base = torch.zeros(3)
    inputs = [torch.zeros(3, dtype=torch.bfloat16)]
    _compiled.LOOPS._ready.discard(kind)
    _compiled.LOOPS._queued.discard(kind)
    assert not _compiled.wants(base, inputs, torch.float32)
    _compiled.prepare(*kind, wait=True)
    assert _compiled.wants(base, inputs, torch.float32)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    source=st.integers(0, 3),
    offset=st.integers(0, 300_000),
    length=st.integers(1, 140_000),
    density=st.sampled_from([1e-6, 0.1, 0.5, 0.9, 0.9999999, 1.0]),
)
def test_compiled_generator_draws_numpys_masks(seed, source, offset, length, density):
    """DARE masks from the compiled PCG64DXSM runs equal NumPy's, across block edges."""
    _compiled.prepare(torch.bfloat16, torch.bfloat16, 1, wait=True)
    rng = random_stream(seed, "model.layers.0.mlp.up_proj.weight")
    expected = rng.mask(source, offset, length, density)
    assert torch.equal(_compiled.keep_mask(rng, source, offset, length, density), expected)
