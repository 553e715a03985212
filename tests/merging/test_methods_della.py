"""DELLA and linear DELLA: MagPrune's rank-dependent keep probabilities, rescaling, seeding,
and the chunked kernel against the reference function."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from merging.errors import RecipeError
from merging.methods import _della_fast, random_stream
from merging.methods.della import DellaParams, draws, keep_probabilities, keep_thresholds
from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import GRID, SETTINGS, call, models

NAMES = ["della", "della_linear"]


def test_keep_probabilities_grow_linearly_with_the_rank_in_each_row():
    rows = torch.tensor([[0.5, -3.0, 1.0, 0.1, -2.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    probs = keep_probabilities(rows, 0.5, 0.2)
    # ranks of |x| in row 0: 0.1 < 0.5 < 1 < 2 < 3; ties in row 1 rank by position
    expected_ranks = torch.tensor([[1, 4, 2, 0, 3], [0, 1, 2, 3, 4]])
    torch.testing.assert_close(probs, 0.3 + 0.4 * expected_ranks / 4)


def test_one_element_rows_keep_with_density_minus_epsilon():
    assert keep_probabilities(torch.tensor([[7.0]]), 0.5, 0.1).tolist() == [[pytest.approx(0.4)]]


@pytest.mark.parametrize("name", NAMES)
def test_density_one_is_the_unsparsified_method(name):
    torch.manual_seed(0)
    base = torch.randn(6, 9)
    inputs = [base + torch.randn(6, 9) for _ in range(3)]
    weights = [0.5, 1.0, -0.3]
    out = call(name, base, inputs, weights, density=1.0)
    if name == "della":
        assert torch.equal(out, call("ties", base, inputs, weights, density=1.0))
    else:
        assert torch.equal(out, call("task_arithmetic", base, inputs, weights))


@pytest.mark.parametrize("name", NAMES)
def test_a_model_with_itself_is_itself(name):
    base = torch.randn(4, 8)
    assert torch.equal(call(name, base, [base.clone()], density=0.5), base)


def test_keep_rate_follows_density_and_rank():
    """Large entries are kept more often than small ones; the overall rate is the density."""
    base = torch.zeros(64, 512)
    delta = torch.arange(1, 513, dtype=torch.float32).repeat(64, 1)  # same ranks in every row
    out = call("della_linear", base, [delta], density=0.5, epsilon=0.3, rescale="none")
    kept = (out != 0).float()
    assert abs(float(kept.mean()) - 0.5) < 0.01
    low, high = float(kept[:, :128].mean()), float(kept[:, -128:].mean())
    assert abs(low - (0.2 + 0.6 * 63.5 / 511)) < 0.02  # mean p over the lowest quarter
    assert abs(high - (0.8 - 0.6 * 63.5 / 511)) < 0.02


def test_rescale_rules():
    base = torch.zeros(8, 64)
    delta = torch.randn(8, 64)
    none = call("della_linear", base, [delta], density=0.4, epsilon=0.1, rescale="none")
    mask = none != 0
    assert torch.equal(none[mask], delta[mask])
    l1 = call("della_linear", base, [delta], density=0.4, epsilon=0.1)  # mergekit default
    torch.testing.assert_close(l1.abs().sum(), delta.abs().sum())
    assert torch.equal(l1 != 0, mask)  # same draws whatever the rescale
    paper = call("della_linear", base, [delta], density=0.4, epsilon=0.1, rescale="probability")
    probs = keep_probabilities(delta, 0.4, 0.1)
    torch.testing.assert_close(paper[mask], delta[mask] / probs[mask])


def test_mergekit_boolean_rescale_maps_to_l1_and_none():
    assert DellaParams.model_validate({"rescale": True}).rescale == "l1"
    assert DellaParams.model_validate({"rescale": False}).rescale == "none"
    assert DellaParams.model_validate({}).normalize is True


@pytest.mark.parametrize(("density", "epsilon"), [(0.9, 0.15), (0.1, 0.15), (0.5, 0.5)])
def test_density_epsilon_window_outside_zero_one_is_refused(density, epsilon):
    base = torch.zeros(4, 4)
    with pytest.raises(RecipeError, match="density ± epsilon"):
        call("della", base, [torch.ones(4, 4)], density=density, epsilon=epsilon)


def test_same_seed_and_tensor_give_the_same_masks_other_tensor_other_masks():
    base = torch.zeros(32, 32)
    delta = torch.randn(32, 32)
    kwargs = {"density": 0.5, "epsilon": 0.1}
    first = call("della", base, [delta], tensor="a.weight", seed=3, **kwargs)
    again = call("della", base, [delta], tensor="a.weight", seed=3, **kwargs)
    other = call("della", base, [delta], tensor="b.weight", seed=3, **kwargs)
    assert torch.equal(first, again)
    assert not torch.equal(first != 0, other != 0)


def test_draws_do_not_depend_on_how_the_range_is_split():
    rng = random_stream(5, "model.layers.0.mlp.up_proj.weight")
    whole = draws(rng, 1, 65_000, 2_000)  # crosses a 65,536-element block boundary
    parts = torch.cat([draws(rng, 1, 65_000, 700), draws(rng, 1, 65_700, 1_300)])
    assert torch.equal(whole, parts)
    assert int(whole.min()) >= 0
    assert int(whole.max()) < 2**16


@SETTINGS
@given(
    data=models(count=st.integers(1, 3)),
    name=st.sampled_from(NAMES),
    chunk=st.integers(1, 23),
    density=st.floats(0.2, 0.8),
    rescale=st.sampled_from(["none", "l1", "probability"]),
    seed=st.integers(0, 99),
    threads=st.sampled_from([None, 3]),
)
def test_kernel_matches_the_function(data, name, chunk, density, rescale, seed, threads):
    """Chunks of 1..23 elements cut rows anywhere: the cut rows are ranked whole."""
    base, inputs = data
    weights = [0.7, -0.4, 1.1][: len(inputs)]
    kwargs = {"density": density, "epsilon": 0.1, "rescale": rescale, "seed": seed}
    expected = pure(name, base, inputs, weights, **kwargs)
    got = chunked(name, base, inputs, weights, chunk=chunk, threads=threads, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(data=models(count=st.integers(1, 3), elements=GRID), chunk=st.integers(1, 9))
def test_kernel_ranks_ties_like_the_function(data, chunk):
    """Few distinct values: ties must rank by position in the kernel too."""
    base, inputs = data
    kwargs = {"density": 0.5, "epsilon": 0.4, "rescale": "none"}
    assert torch.equal(chunked("della", base, inputs, chunk=chunk, **kwargs),
                       pure("della", base, inputs, **kwargs))  # fmt: skip


def test_three_dimensional_tensors_take_the_function():
    """mergekit ranks along dim 1 for tensors with more than two dimensions."""
    from merging import METHODS

    method = METHODS.get("della")
    params, sources = method.params(), [method.source_params(density=0.5)]
    assert method.kernel(params, sources, random_stream(0, "w"), (2, 3, 4)) is None
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) + 1
    out = call("della_linear", torch.zeros(2, 3, 4), [x], density=0.5, epsilon=0.4,
               rescale="probability")  # fmt: skip
    kept = out != 0
    torch.testing.assert_close(out[kept], (x / keep_probabilities(x.movedim(1, -1), 0.5, 0.4)
                                           .movedim(-1, 1))[kept])  # fmt: skip


ROWS = st.sampled_from(["continuous", "grid", "zeros", "spread"])


def _magnitudes(kind: str, rows: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "grid":  # few values: large buckets full of ties
        return torch.randint(0, 5, (rows, n), generator=g).float() * 0.25
    if kind == "zeros":
        zero = torch.rand(rows, n, generator=g) < 0.6
        return torch.where(zero, 0.0, torch.rand(rows, n, generator=g))
    if kind == "spread":  # magnitudes over many binades
        return (torch.randn(rows, n, generator=g) * torch.logspace(-9, 2, n)).abs()
    return torch.randn(rows, n, generator=g).abs() * 1e-3


@pytest.mark.skipif(not _della_fast.available, reason="numba missing or HUBMERGE_NO_JIT set")
@SETTINGS
@given(
    kind=ROWS,
    rows=st.integers(1, 4),
    n=st.sampled_from([1, 2, 3, 17, 300, 2500]),
    density=st.floats(0.2, 0.8),
    epsilon=st.floats(0.01, 0.19),
    seed=st.integers(0, 99),
)
def test_compiled_keep_mask_is_the_torch_mask_bit_for_bit(kind, rows, n, density, epsilon, seed):
    """The compiled loop decides most entries from their bucket's rank range: every entry must
    still be kept exactly when the torch path (a stable sort of the row) keeps it."""
    magnitudes = _magnitudes(kind, rows, n, seed)
    draw = torch.randint(0, 65536, magnitudes.shape, dtype=torch.int32,
                         generator=torch.Generator().manual_seed(seed + 1))  # fmt: skip
    expected = draw < (keep_probabilities(magnitudes, density, epsilon) * 65536).round_()
    got = _della_fast.keep_mask(magnitudes, draw, lambda k: keep_thresholds(k, density, epsilon))
    assert got is not None
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_without_the_compiled_loop_gives_the_same_tensor(name, monkeypatch):
    torch.manual_seed(5)
    base = torch.randn(9, 301)
    inputs = [base + 0.01 * torch.randn(9, 301) for _ in range(2)]
    kwargs = {"density": 0.5, "epsilon": 0.2, "seed": 3}
    compiled = chunked(name, base, inputs, chunk=1000, **kwargs)
    monkeypatch.setattr(_della_fast, "available", False)
    assert torch.equal(chunked(name, base, inputs, chunk=1000, **kwargs), compiled)
