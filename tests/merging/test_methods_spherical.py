"""Multi-SLERP and the Karcher mean: sphere geometry, degenerate inputs, the Gram kernel."""

from __future__ import annotations

import pytest
import torch
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from merging import MergeOptions, load_recipe, merge
from merging.errors import IncompatibleModelsError
from merging.methods import get_method
from tests.helpers.tiny import state_dict
from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import SETTINGS, models

CPU = MergeOptions(device="cpu", threads=1)


def rotate(v, other, angle):
    """v rotated by ``angle`` towards ``other`` in their plane (same norm)."""
    e1 = v / v.norm()
    e2 = other - (other @ e1) * e1
    e2 = e2 / e2.norm()
    return v.norm() * (torch.cos(torch.tensor(angle)) * e1 + torch.sin(torch.tensor(angle)) * e2)


@pytest.mark.parametrize("name", ["multislerp", "karcher"])
def test_a_model_with_itself_is_itself_and_one_model_is_that_model(name):
    x = torch.randn(5, 7)
    torch.testing.assert_close(pure(name, None, [x, x.clone(), x.clone()]), x)
    assert torch.equal(pure(name, None, [x]), x)


@pytest.mark.parametrize("name", ["multislerp", "karcher"])
def test_two_models_of_equal_norm_meet_at_the_geodesic_midpoint(name):
    torch.manual_seed(0)
    a = torch.randn(16)
    b = rotate(a, torch.randn(16), 1.0)
    torch.testing.assert_close(pure(name, None, [a, b]), rotate(a, b, 0.5), rtol=1e-5, atol=1e-5)


def test_karcher_mean_of_three_points_on_a_great_circle_is_the_middle_one():
    torch.manual_seed(1)
    a, other = torch.randn(10), torch.randn(10)
    points = [rotate(a, other, angle) for angle in (0.2, 0.5, 0.8)]
    torch.testing.assert_close(pure("karcher", None, points, max_iter=50, tol=1e-9),
                               points[1], rtol=1e-5, atol=1e-5)  # fmt: skip


def test_karcher_scales_by_the_mean_norm_and_ignores_weights():
    a = torch.tensor([3.0, 0.0])
    b = torch.tensor([0.0, 1.0])
    out = pure("karcher", None, [a, b], [5.0, 0.1])
    torch.testing.assert_close(out, 2.0 * torch.tensor([2**-0.5, 2**-0.5]))


def test_karcher_of_zero_tensors_is_zero():
    zeros = torch.zeros(3, 3)
    assert torch.equal(pure("karcher", None, [zeros, zeros.clone()]), zeros)


def test_multislerp_one_hot_weights_give_that_model():
    torch.manual_seed(2)
    base = torch.randn(4, 4)
    inputs = [torch.randn(4, 4) for _ in range(3)]
    out = pure("multislerp", base, inputs, [0.0, 1.0, 0.0])
    torch.testing.assert_close(out, inputs[1], rtol=1e-5, atol=1e-5)


def test_multislerp_of_antipodal_inputs():
    a = torch.randn(6)
    # two inputs: mergekit falls back to the linear mix
    assert torch.equal(pure("multislerp", None, [a, -a]), torch.zeros(6))
    with pytest.raises(IncompatibleModelsError, match="antipodal"):
        pure("multislerp", None, [a, -a, a.clone(), -a], tensor="x.weight")


def well_conditioned(base, inputs, weights, eps=1e-8):
    """Whether the weighted sum of the unit (task) vectors is clearly above ε or clearly below
    it: near-antipodal inputs whose weights almost cancel divide by a norm just above ε, where
    the result is rounding noise (in mergekit too) and two summation orders disagree."""
    vectors = [(x if base is None else x - base).double().reshape(-1) for x in inputs]
    total = sum(
        w / sum(weights) * v / (v.norm() + eps) for w, v in zip(weights, vectors, strict=True)
    )
    return not 1e-12 < float(total.norm()) < 1e-4


def unit_mean(inputs):
    """The mean of the inputs' unit vectors (the zero ones left out), in float64."""
    vectors = [x.double().reshape(-1) for x in inputs]
    units = [v / v.norm() for v in vectors if float(v.norm()) > 0]
    return sum(units) / max(1, len(units)) if units else torch.zeros(1, dtype=torch.float64)


POSITIVE = st.floats(0.25, 4, width=32)  # inputs within 90° of each other: the means are unique


@SETTINGS
@given(
    data=models(count=st.integers(2, 4), elements=POSITIVE),
    order=st.permutations(range(4)),
    weights=st.lists(st.floats(0.2, 2), min_size=4, max_size=4),
    name=st.sampled_from(["multislerp", "karcher"]),
)
def test_permuting_models_with_their_weights_changes_nothing(data, order, weights, name):
    _, inputs = data
    n = len(inputs)
    order = [i for i in order if i < n]
    weights = weights[:n]
    first = pure(name, None, inputs, weights)
    second = pure(name, None, [inputs[i] for i in order], [weights[i] for i in order])
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    data=models(count=st.integers(1, 4)),
    chunk=st.integers(1, 17),
    weights=st.lists(st.floats(0.2, 2), min_size=4, max_size=4),
    with_base=st.booleans(),
    threads=st.sampled_from([None, 3]),
)
def test_multislerp_kernel_matches_the_function(data, chunk, weights, with_base, threads):
    base, inputs = data
    base = base if with_base else None
    weights = weights[: len(inputs)]
    assume(well_conditioned(base, inputs, weights))
    expected = pure("multislerp", base, inputs, weights)
    got = chunked("multislerp", base, inputs, weights, chunk=chunk, threads=threads)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    data=models(count=st.integers(1, 4)),
    chunk=st.integers(1, 17),
    max_iter=st.integers(0, 20),
    threads=st.sampled_from([None, 3]),
)
def test_karcher_kernel_matches_the_function(data, chunk, max_iter, threads):
    _, inputs = data
    # near-antipodal inputs (their unit vectors' mean almost 0) take large coefficients that
    # cancel: the kernel's float32 sum Σ cᵢ·θᵢ then loses digits that the function's float64
    # one keeps (in the kernel before the compiled loops too)
    assume(not 0 < float(unit_mean(inputs).norm()) < 0.05)
    expected = pure("karcher", None, inputs, max_iter=max_iter)
    got = chunked("karcher", None, inputs, chunk=chunk, threads=threads, max_iter=max_iter)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_multislerp_of_unchanged_tensors_is_the_base():
    """mergekit raises here (zero task vectors look antipodal); the result is unambiguous."""
    base = torch.randn(3, 4)
    same = [base.clone() for _ in range(3)]
    assert torch.equal(pure("multislerp", base, same), base)
    assert torch.equal(chunked("multislerp", base, same, chunk=5), base)


def _karcher_recipe(tiny_models, listed, **parameters):
    data = {"merge_method": "karcher", "base_model": str(tiny_models["base"]), "dtype": "float32",
            "models": [{"model": str(tiny_models[k])} for k in listed]}  # fmt: skip
    if parameters:
        data["parameters"] = parameters
    return load_recipe(yaml.safe_dump(data))


def test_karcher_counts_an_unlisted_base_as_the_last_point_as_mergekit(tiny_models, tmp_path):
    """mergekit 0.1.5 appends an unlisted ``base_model`` to a ``models:`` recipe's inputs, and
    ``karcher`` averages it like the others; ``include_base: false`` leaves it out."""
    name = "model.layers.1.self_attn.q_proj.weight"
    tensors = {k: state_dict(tiny_models[k])[name] for k in ("ft1", "ft2", "base")}
    with_base = merge(_karcher_recipe(tiny_models, ["ft1", "ft2"]), tmp_path / "with", options=CPU)
    without = merge(_karcher_recipe(tiny_models, ["ft1", "ft2"], include_base=False),
                    tmp_path / "without", options=CPU)  # fmt: skip
    expected = pure("karcher", None, [tensors["ft1"], tensors["ft2"], tensors["base"]])
    torch.testing.assert_close(state_dict(with_base.output)[name], expected)
    alone = pure("karcher", None, [tensors["ft1"], tensors["ft2"]])
    torch.testing.assert_close(state_dict(without.output)[name], alone)
    assert not torch.allclose(expected, alone)


def test_karcher_takes_a_listed_base_once_where_it_is_listed(tiny_models):
    from merging.plan import merge_inputs

    method = get_method("karcher")
    listed = _karcher_recipe(tiny_models, ["ft1", "base", "ft2"])
    assert [s.model for s in merge_inputs(method, listed)] == [
        str(tiny_models[k]) for k in ("ft1", "base", "ft2")
    ]
    unlisted = _karcher_recipe(tiny_models, ["ft2", "ft1"])
    assert [s.model for s in merge_inputs(method, unlisted)] == [
        str(tiny_models[k]) for k in ("ft2", "ft1", "base")
    ]
    assert "one more point" in method.describe(method.params())


def test_multislerp_of_exactly_opposite_task_vectors_mixes_linearly():
    """The Gram-matrix norm of the unit vectors' mean can round below zero: it is clamped (it
    used to take a complex square root and fail), and the two inputs are mixed linearly."""
    base = torch.tensor([2.0])
    inputs = [torch.tensor([0.0]), torch.tensor([5.5])]
    expected = base + (inputs[0] - base) * 0.5 + (inputs[1] - base) * 0.5
    torch.testing.assert_close(pure("multislerp", base, inputs), expected)
    torch.testing.assert_close(chunked("multislerp", base, inputs, chunk=3), expected)
