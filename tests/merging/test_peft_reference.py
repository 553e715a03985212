"""Differential tests: our methods against PEFT's merge_utils on random tensors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from peft.utils import merge_utils as peft

from merging import METHODS
from merging.methods import random_stream
from merging.methods._ops import prune_random
from tests.merging.method_helpers import (
    FINITE,
    SETTINGS,
    SHAPES,
    call,
)

# ---------------------------------------------------------------- PEFT as the reference


MAGNITUDES = st.floats(1 / 64, 4, width=32).flatmap(lambda x: st.sampled_from([x, -x]))


@st.composite
def tie_free(draw, count=None):
    """Base and inputs whose deltas have distinct non-zero magnitudes (PEFT's top-k is then
    unambiguous)."""
    shape = draw(SHAPES)
    base = torch.from_numpy(draw(arrays(np.float32, shape, elements=FINITE)))
    inputs = []
    for _ in range(draw(count if count is not None else st.integers(1, 4))):
        delta = draw(arrays(np.float32, shape, elements=MAGNITUDES, unique=True))
        inputs.append(base + torch.from_numpy(delta))
    deltas = [x - base for x in inputs]
    for d in deltas:
        magnitudes = d.abs().reshape(-1)
        assume(bool((magnitudes > 0).all()))
        assume(magnitudes.unique().numel() == magnitudes.numel())
    return base, inputs, deltas


@SETTINGS
@given(data=tie_free(), weights=st.lists(st.floats(-2, 2, width=32), min_size=4, max_size=4))
def test_task_arithmetic_matches_peft(data, weights):
    base, inputs, deltas = data
    weights = weights[: len(inputs)]
    expected = base + peft.task_arithmetic(deltas, torch.tensor(weights))
    torch.testing.assert_close(call("task_arithmetic", base, inputs, weights), expected)


# (PEFT's sign rule, ours, the smallest weight drawn): PEFT's "total" is the sign of Σδ,
# unweighted; its "frequency" counts raw signs, which is our `count` for positive weights only.
PEFT_SIGN_RULES = [("total", "total", -2.0), ("frequency", "count", 0.125)]


@pytest.mark.parametrize(("peft_sign", "sign_method", "low"), PEFT_SIGN_RULES)
@SETTINGS
@given(data=tie_free(), draw=st.data(), density=st.floats(0.2, 0.9))
def test_ties_with_peft_options_matches_peft(peft_sign, sign_method, low, data, draw, density):
    """Our sign rule + divide_by: count is PEFT's `ties` with its sign rule."""
    base, inputs, deltas = data
    assume(math.floor(density * base.numel()) >= 1)  # PEFT keeps nothing at k = 0
    floats = st.floats(low, 2, width=32)
    weights = draw.draw(st.lists(floats, min_size=len(inputs), max_size=len(inputs)))
    expected = base + peft.ties(deltas, torch.tensor(weights), density, peft_sign)
    out = call(
        "ties", base, inputs, weights, density=density, sign_method=sign_method, divide_by="count"
    )
    torch.testing.assert_close(out, expected)


@SETTINGS
@given(
    data=tie_free(),
    weights=st.lists(st.floats(-2, 2, width=32), min_size=4, max_size=4),
    density=st.floats(0.2, 0.9),
)
def test_magnitude_prune_matches_peft(data, weights, density):
    """PEFT's magnitude_prune (top-k, no sign election) is breadcrumbs with gamma 0."""
    base, inputs, deltas = data
    assume(math.floor(density * base.numel()) >= 1)
    weights = weights[: len(inputs)]
    expected = base + peft.magnitude_prune(deltas, torch.tensor(weights), density)
    out = call("breadcrumbs", base, inputs, weights, density=density, gamma=0.0)
    torch.testing.assert_close(out, expected)
    from merging.methods._ops import prune_magnitude

    for delta in deltas:
        assert torch.equal(prune_magnitude(delta, density), peft.prune(delta, density, "magnitude"))


@pytest.mark.parametrize("density", [0.3, 0.7])
def test_dare_linear_density_rescale_has_peft_semantics(density):
    """PEFT draws its mask from the global RNG, so compare the rule on a shared mask."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 7, generator=gen)
    inputs = [base + torch.randn(6, 7, generator=gen) for _ in range(3)]
    deltas = [x - base for x in inputs]
    weights = [0.5, 1.5, -0.25]
    # PEFT's own pruning: survivors are δ/density, zeros elsewhere
    torch.manual_seed(0)
    peft_pruned = [peft.prune(d, density, "random", rescale=True) for d in deltas]
    for delta, pruned in zip(deltas, peft_pruned, strict=True):
        mask = pruned != 0
        torch.testing.assert_close(pruned[mask], delta[mask] / density)
    # ours, with the generator the engine would use for this tensor
    rng = random_stream(9, "t")
    ours = [prune_random(d, density, rng, "density", source=i) for i, d in enumerate(deltas)]
    for delta, pruned in zip(deltas, ours, strict=True):
        mask = pruned != 0
        torch.testing.assert_close(pruned[mask], delta[mask] / density)
        assert torch.equal(pruned[~mask], torch.zeros(int((~mask).sum())))
    # the method = PEFT's dare_linear combination on the same masks
    out = call(
        "dare_linear", base, inputs, weights, density=density, rescale="density", seed=9, tensor="t"
    )
    expected = base + peft.task_arithmetic(ours, torch.tensor(weights))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("density", [0.3, 0.7])
def test_dare_ties_with_peft_options_matches_peft_on_the_same_masks(density):
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(6, 7, generator=gen)
    inputs = [base + torch.randn(6, 7, generator=gen) for _ in range(3)]
    weights = [0.5, 1.5, 1.0]
    rng = random_stream(2, "t")
    pruned = torch.stack(
        [prune_random(x - base, density, rng, "density", source=i) for i, x in enumerate(inputs)]
    )
    stacked_weights = peft.reshape_weight_task_tensors(pruned, torch.tensor(weights))
    mask = peft.calculate_majority_sign_mask(pruned, "total")
    expected = base + peft.disjoint_merge(pruned * stacked_weights, mask)
    out = call(
        "dare_ties",
        base,
        inputs,
        weights,
        density=density,
        rescale="density",
        sign_method="total",
        divide_by="count",
        normalize=True,
        seed=2,
        tensor="t",
    )
    torch.testing.assert_close(out, expected)


def test_dare_keep_rate_is_density():
    base = torch.zeros(400, 500)
    model = torch.ones(400, 500)
    for density in (0.2, 0.6):
        out = call("dare_linear", base, [model], density=density, rescale="density")
        kept = int((out != 0).sum())
        n = base.numel()
        assert abs(kept - n * density) < 5 * math.sqrt(n * density * (1 - density))
        assert torch.all((out == 0) | (out == 1 / density))


def test_dare_rescale_true_means_l1():
    method = METHODS.get("dare_linear")
    assert method.params.model_validate({"rescale": True}).rescale == "l1"
    assert method.params.model_validate({"rescale": False}).rescale == "none"


def test_peft_prune_warns_at_density_one_where_we_are_silent():
    delta = torch.randn(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call("ties", torch.zeros(4), [delta], density=1.0)
    assert not caught
