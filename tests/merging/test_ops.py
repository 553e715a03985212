"""Properties and written-out checks of the pure helpers in `merging.methods._ops`."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from merging.methods import random_stream
from merging.methods._ops import (
    BLOCK,
    agreement,
    combine_deltas,
    elect_sign,
    keep_count,
    keep_threshold,
    magnitude_threshold,
    prune_magnitude,
    prune_magnitude_outliers,
    prune_random,
    rescale_kept,
    task_vectors,
)

SETTINGS = settings(max_examples=40, deadline=None)
FINITE = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32)
SHAPES = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
DENSITY = st.floats(0.05, 0.95)
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=30)


def tensors(shape=SHAPES, elements=FINITE, **kwargs):
    return arrays(np.float32, shape, elements=elements, **kwargs).map(torch.from_numpy)


def distinct_magnitudes(array: np.ndarray) -> bool:
    return len(np.unique(np.abs(array))) == array.size and bool(np.all(array != 0))


NONZERO = st.floats(2**-10, 100, width=32).flatmap(lambda x: st.sampled_from([x, -x]))
DISTINCT = (
    arrays(np.float32, SHAPES, elements=NONZERO, unique=True)
    .filter(distinct_magnitudes)
    .map(torch.from_numpy)
)


# ---------------------------------------------------------------- magnitude trim


@SETTINGS
@given(delta=tensors())
def test_prune_magnitude_density_one_is_identity(delta):
    assert torch.equal(prune_magnitude(delta, 1.0), delta)


@SETTINGS
@given(
    delta=DISTINCT,
    density=DENSITY,
)
def test_prune_magnitude_keeps_exactly_k_largest_without_ties(delta, density):
    n = delta.numel()
    k = max(1, math.floor(density * n))
    pruned = prune_magnitude(delta, density)
    assert int((pruned != 0).sum()) == k
    largest = set(delta.abs().reshape(-1).argsort(descending=True)[:k].tolist())
    for i, (before, after) in enumerate(zip(delta.reshape(-1), pruned.reshape(-1), strict=True)):
        assert after == (before if i in largest else 0)


@SETTINGS
@given(
    delta=tensors(elements=st.integers(-6, 6).map(lambda i: float(i) / 4)),
    density=DENSITY,
)
def test_prune_magnitude_keeps_every_tie_at_the_threshold(delta, density):
    """bf16-like deltas share few values: every element tied with the k-th largest survives."""
    delta = delta.to(torch.bfloat16)
    flat = delta.reshape(-1).float()
    k = max(1, math.floor(density * flat.numel()))
    threshold = float(flat.abs().sort(descending=True).values[k - 1])
    pruned = prune_magnitude(delta, density)
    assert pruned.dtype == torch.bfloat16
    for before, after in zip(flat.tolist(), pruned.reshape(-1).float().tolist(), strict=True):
        assert after == (before if abs(before) >= threshold else 0.0)
    survivors = int((flat.abs() >= threshold).sum())
    assert survivors >= k
    assert float(magnitude_threshold(delta, density)) == threshold


def test_prune_magnitude_tie_example():
    delta = torch.tensor([0.5, -0.5, 0.5, 0.25, -1.0, 0.125], dtype=torch.bfloat16)
    # k = ⌊0.5·6⌋ = 3 → threshold 0.5, tied three times: 4 survivors
    pruned = prune_magnitude(delta, 0.5)
    assert pruned.tolist() == [0.5, -0.5, 0.5, 0.0, -1.0, 0.0]


@SETTINGS
@given(delta=tensors(), density=DENSITY)
def test_prune_magnitude_does_not_mutate(delta, density):
    before = delta.clone()
    prune_magnitude(delta, density)
    assert torch.equal(delta, before)


def test_keep_count_floor_and_minimum():
    assert keep_count(10, 0.35) == 3
    assert keep_count(10, 0.01) == 1
    assert keep_count(7, 1.0) == 7


# ---------------------------------------------------------------- breadcrumbs


@SETTINGS
@given(
    delta=DISTINCT,
    density=DENSITY,
    gamma=st.floats(0, 0.5),
)
def test_breadcrumbs_keeps_the_band_below_the_outliers(delta, density, gamma):
    n = delta.numel()
    keep = max(1, math.floor(density * n))
    top = min(math.floor(gamma * n), n - keep)
    order = delta.abs().reshape(-1).argsort(descending=True).tolist()
    band = set(order[top : top + keep])
    pruned = prune_magnitude_outliers(delta, density, gamma)
    for i, (before, after) in enumerate(zip(delta.reshape(-1), pruned.reshape(-1), strict=True)):
        assert after == (before if i in band else 0)


@SETTINGS
@given(delta=tensors(), gamma=st.floats(0, 0.5))
def test_breadcrumbs_density_one_is_identity(delta, gamma):
    assert torch.equal(prune_magnitude_outliers(delta, 1.0, gamma), delta)


# ---------------------------------------------------------------- DARE


@SETTINGS
@given(delta=tensors(), rescale=st.sampled_from(["none", "l1", "density"]))
def test_prune_random_density_one_is_identity(delta, rescale):
    assert torch.equal(prune_random(delta, 1.0, random_stream(0, "x"), rescale), delta)


@SETTINGS
@given(
    delta=tensors(),
    density=DENSITY,
    seed=st.integers(0, 2**31),
    name=NAMES,
    rescale=st.sampled_from(["none", "l1", "density"]),
)
def test_prune_random_same_seed_and_name_is_identical(delta, density, seed, name, rescale):
    first = prune_random(delta, density, random_stream(seed, name), rescale)
    second = prune_random(delta, density, random_stream(seed, name), rescale)
    assert torch.equal(first, second)


@SETTINGS
@given(seed=st.integers(0, 2**31), name=NAMES)
def test_prune_random_other_tensor_name_gives_other_mask(seed, name):
    delta = torch.arange(1, 257, dtype=torch.float32).reshape(16, 16)  # no zeros: mask visible
    first = prune_random(delta, 0.5, random_stream(seed, name), "none") != 0
    second = prune_random(delta, 0.5, random_stream(seed, name + ".bias"), "none") != 0
    assert not torch.equal(first, second)  # equal with probability 2**-256
    other_seed = prune_random(delta, 0.5, random_stream(seed + 1, name), "none") != 0
    assert not torch.equal(first, other_seed)


def _nonzero_delta(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(delta == 0, 1.0, delta)


@pytest.mark.parametrize("density", [0.3, 0.5, 0.8])
def test_dare_rescale_density_written_out(density):
    """Paper/PEFT rule: survivors are δ / density, the rest 0 (element by element)."""
    delta = _nonzero_delta((3, 4), 1)
    out = prune_random(delta, density, random_stream(7, "w"), "density")
    for i in range(3):
        for j in range(4):
            if out[i, j] != 0:
                assert out[i, j].item() == pytest.approx(delta[i, j].item() / density, rel=1e-6)


@pytest.mark.parametrize("density", [0.3, 0.5, 0.8])
def test_dare_rescale_l1_written_out(density):
    """mergekit rule: survivors scaled by Σ|δ| / Σ_kept|δ| so the L1 norm is unchanged."""
    delta = _nonzero_delta((3, 4), 2)
    out = prune_random(delta, density, random_stream(3, "w"), "l1")
    kept = [(i, j) for i in range(3) for j in range(4) if out[i, j] != 0]
    assert kept  # seed chosen so something survives
    l1_all = sum(abs(delta[i, j].item()) for i in range(3) for j in range(4))
    l1_kept = sum(abs(delta[i, j].item()) for i, j in kept)
    for i in range(3):
        for j in range(4):
            expected = delta[i, j].item() * l1_all / l1_kept if (i, j) in kept else 0.0
            assert out[i, j].item() == pytest.approx(expected, rel=1e-5)
    assert out.abs().sum().item() == pytest.approx(l1_all, rel=1e-5)


def test_dare_rescale_none_keeps_values():
    delta = _nonzero_delta((3, 4), 3)
    out = prune_random(delta, 0.5, random_stream(0, "w"), "none")
    survivors = out != 0
    assert torch.equal(out[survivors], delta[survivors])


def test_dare_l1_rescale_of_nothing_kept_stays_zero():
    delta = torch.tensor([1.0, -2.0])
    assert torch.equal(rescale_kept(delta, torch.zeros(2), "l1", 0.5), torch.zeros(2))


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_keep_rate_matches_density(density):
    n = 200_000
    delta = torch.ones(n)
    kept = int((prune_random(delta, density, random_stream(11, "big"), "none") != 0).sum())
    sigma = math.sqrt(n * density * (1 - density))
    assert abs(kept - n * density) < 5 * sigma


def test_keep_threshold_rounds_density_to_sixteen_bits():
    assert keep_threshold(0.5) == 32768
    assert keep_threshold(0.1) == 6554  # round(6553.6)
    assert keep_threshold(1e-9) == 1  # never zero: a positive density keeps something
    assert keep_threshold(0.999999) == 65536  # every 16-bit draw is below it: all kept


def test_random_mask_keeps_exactly_the_draws_below_the_threshold():
    stream = random_stream(3, "w")
    draws = stream._draws(1, 0)
    assert draws.dtype == np.dtype("<u2")
    assert draws.size == BLOCK
    mask = stream.mask(1, 0, BLOCK, 0.3).numpy()
    assert np.array_equal(mask, draws < keep_threshold(0.3))
    assert stream.mask(1, 0, BLOCK, 0.999999).all()


def test_prune_random_uses_no_global_rng():
    delta = torch.randn(64)
    torch.manual_seed(0)
    first = prune_random(delta, 0.5, random_stream(1, "a"), "density")
    torch.manual_seed(12345)
    torch.rand(10)
    second = prune_random(delta, 0.5, random_stream(1, "a"), "density")
    assert torch.equal(first, second)


def test_random_stream_depends_on_seed_name_and_source_only():
    name = "model.layers.0.mlp.up_proj.weight"
    a = random_stream(5, name).mask(0, 0, 256, 0.5)
    assert torch.equal(a, random_stream(5, name).mask(0, 0, 256, 0.5))
    assert not torch.equal(a, random_stream(5, name.replace("0", "1")).mask(0, 0, 256, 0.5))
    assert not torch.equal(a, random_stream(6, name).mask(0, 0, 256, 0.5))
    assert not torch.equal(a, random_stream(5, name).mask(1, 0, 256, 0.5))


@settings(max_examples=15, deadline=None)
@given(
    length=st.integers(1, 3 * BLOCK // 2),
    cuts=st.lists(st.floats(0, 1), max_size=3),
    density=DENSITY,
)
def test_random_mask_does_not_depend_on_chunking(length, cuts, density):
    """A mask drawn in pieces equals the mask drawn at once (block-keyed generators)."""
    stream = random_stream(3, "w")
    whole = stream.mask(2, 0, length, density)
    bounds = sorted({0, length, *(int(c * length) for c in cuts)})
    pieces = [stream.mask(2, a, b - a, density) for a, b in itertools.pairwise(bounds)]
    assert torch.equal(torch.cat(pieces), whole)


def test_prune_random_sources_get_independent_masks():
    delta = torch.arange(1, 257, dtype=torch.float32)
    stream = random_stream(0, "w")
    first = prune_random(delta, 0.5, stream, "none", source=0) != 0
    second = prune_random(delta, 0.5, stream, "none", source=1) != 0
    assert not torch.equal(first, second)
    assert torch.equal(first, prune_random(delta, 0.5, stream, "none", source=0) != 0)


# ---------------------------------------------------------------- signs


def test_elect_sign_sum_and_count_with_ties_electing_plus():
    votes = torch.tensor(
        [
            [3.0, 1.0, 0.0, -1.0, 0.0],
            [-1.0, 1.0, 0.0, -1.0, 2.0],
            [-1.0, -5.0, 0.0, 2.0, -1.0],
        ]
    )
    # sums:   1, -3, 0, 0, 1     → +, −, + (tie), + (tie), +
    # counts: −1, 1, 0, −1, 0    → −, +, + (tie), −, + (tie)
    assert elect_sign(votes, "sum").tolist() == [1, -1, 1, 1, 1]
    assert elect_sign(votes, "count").tolist() == [-1, 1, 1, -1, 1]


def test_agreement_zeros_never_agree():
    votes = torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.0, 3.0]])
    sign = torch.tensor([1.0, 1.0, -1.0])
    assert agreement(votes, sign).tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def _ties_written_out(deltas, weights, sign_method, divide_by):
    """The consensus merge with comparisons and torch.where, straight from the definitions."""
    weighted = [d * w for d, w in zip(deltas, weights, strict=True)]
    votes = deltas if sign_method == "total" else weighted
    if sign_method == "count":
        score = sum(v.sign() for v in votes)
    else:
        score = votes[0].clone()
        for v in votes[1:]:
            score = score + v
    elected = torch.where(score >= 0, 1.0, -1.0)
    mixed = torch.zeros_like(score)
    divisor = torch.zeros_like(score)
    for vote, term, w in zip(votes, weighted, weights, strict=True):
        takes_part = (vote != 0) & (vote.sign() == elected)
        mixed = mixed + torch.where(takes_part, term, 0.0)
        divisor = divisor + torch.where(takes_part, w if divide_by == "weights" else 1.0, 0.0)
    return mixed / torch.where(divisor == 0, 1.0, divisor)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-3, 3), min_size=12, max_size=12), min_size=1, max_size=4),
    weights=st.lists(st.sampled_from([-1.0, -0.5, 0, 0.3, 0.5, 1.0, 2.0]), min_size=4, max_size=4),
    sign_method=st.sampled_from(["sum", "count", "total"]),
    divide_by=st.sampled_from(["weights", "count"]),
)
def test_combine_deltas_equals_the_written_out_consensus(rows, weights, sign_method, divide_by):
    """Exact equality, ties and zero votes included (small integers make ties common)."""
    deltas = [torch.tensor(r, dtype=torch.float32) / 4 for r in rows]
    weights = weights[: len(deltas)]
    got = combine_deltas(deltas, weights, consensus=True, normalize=True,
                         divide_by=divide_by, sign_method=sign_method)  # fmt: skip
    expected = _ties_written_out(deltas, weights, sign_method, divide_by)
    assert torch.equal(got, expected)


def test_task_vectors_are_differences():
    base = torch.tensor([1.0, 2.0])
    assert [t.tolist() for t in task_vectors(base, [torch.tensor([2.0, 2.0]), base])] == [
        [1.0, 0.0],
        [0.0, 0.0],
    ]
