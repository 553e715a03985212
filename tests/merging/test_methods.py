"""Merge methods: hypothesis properties, written-out formulas, and PEFT as a reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from merging import METHODS
from merging.methods import random_stream
from merging.methods.slerp import PARALLEL_THRESHOLD, slerp_tensors
from tests.merging.method_helpers import (
    DETERMINISTIC_MULTI,
    GRID,
    GRID_WEIGHTS,
    SETTINGS,
    TASK_VECTOR_METHODS,
    call,
    method_parameters,
    models,
)

# ---------------------------------------------------------------- linear / soups


@SETTINGS
@given(data=models(), normalize=st.booleans(), pick=st.integers(0, 3))
def test_linear_one_hot_weights_return_that_model(data, normalize, pick):
    _, inputs = data
    pick %= len(inputs)
    weights = [1.0 if i == pick else 0.0 for i in range(len(inputs))]
    out = call("linear", None, inputs, weights, normalize=normalize)
    assert torch.equal(out, inputs[pick])


@SETTINGS
@given(
    data=models(count=st.just(1)),
    copies=st.integers(1, 5),
    weights=st.lists(st.floats(0.1, 3), min_size=5, max_size=5),
)
def test_soup_of_a_model_with_itself_is_itself(data, copies, weights):
    _, (model,) = data
    out = call("linear", None, [model] * copies, weights[:copies])
    torch.testing.assert_close(out, model)


def test_linear_without_normalize_is_the_weighted_sum():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    assert call("linear", None, [a, b], [0.5, 2.0], normalize=False).tolist() == [6.5, -1.0]
    assert call("linear", None, [a, b], [1.0, 3.0]).tolist() == [2.5, -0.25]


# ---------------------------------------------------------------- task-vector family


@SETTINGS
@given(data=models(), name=st.sampled_from(TASK_VECTOR_METHODS), seed=st.integers(0, 99))
def test_lambda_zero_returns_the_base(data, name, seed):
    base, inputs = data
    out = call(name, base, inputs, seed=seed, **{"lambda": 0.0}, **method_parameters(name))
    assert torch.equal(out, base)


@SETTINGS
@given(
    data=models(count=st.integers(1, 3), elements=GRID),
    name=st.sampled_from(["task_arithmetic", "dare_linear", "breadcrumbs"]),
    weights=st.lists(GRID_WEIGHTS, min_size=3, max_size=3),
)
def test_weight_minus_one_negates_the_delta(data, name, weights):
    """peft's "weight −1 negates the adapter delta", generalised to every linear combination."""
    base, inputs = data
    weights = weights[: len(inputs)]
    params = method_parameters(name)
    plus = call(name, base, inputs, weights, **params) - base
    minus = call(name, base, inputs, [-w for w in weights], **params) - base
    torch.testing.assert_close(minus, -plus, rtol=1e-6, atol=1e-5)


@SETTINGS
@given(data=models(count=st.just(1)))
def test_task_arithmetic_single_weight_minus_one_is_reflection(data):
    base, (model,) = data
    out = call("task_arithmetic", base, [model], [-1.0])
    torch.testing.assert_close(out, base - (model - base), rtol=1e-6, atol=1e-5)


@SETTINGS
@given(
    data=models(count=st.integers(2, 4), elements=GRID),
    weights=st.lists(GRID_WEIGHTS, min_size=4, max_size=4),
    name=st.sampled_from(DETERMINISTIC_MULTI),
    order=st.permutations(range(4)),
)
def test_permuting_models_with_their_weights_changes_nothing(data, weights, name, order):
    base, inputs = data
    n = len(inputs)
    weights = weights[:n]
    order = [i for i in order if i < n]
    params = method_parameters(name)
    first = call(name, base, inputs, weights, **params)
    second = call(name, base, [inputs[i] for i in order], [weights[i] for i in order], **params)
    assert torch.equal(first, second)


@SETTINGS
@given(
    data=models(count=st.integers(1, 3)),
    name=st.sampled_from(["ties", "dare_linear", "dare_ties", "breadcrumbs"]),
    seed=st.integers(0, 99),
)
def test_density_one_trims_nothing(data, name, seed):
    """With density 1 every sparsifying method equals its unsparsified counterpart."""
    base, inputs = data
    if name in ("ties", "dare_ties"):
        # TIES without trimming: sign election and normalisation only, computed by hand
        out = call(name, base, inputs, seed=seed, density=1.0, normalize=True)
        deltas = [x - base for x in inputs]
        stacked = torch.stack(deltas)
        sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
        agree = stacked.sign() == sign
        count = agree.sum(0).clamp(min=1)
        expected = base + torch.where(agree, stacked, 0.0).sum(0) / count
        torch.testing.assert_close(out, expected)
    else:
        out = call(name, base, inputs, seed=seed, density=1.0)
        assert torch.equal(out, call("task_arithmetic", base, inputs))


@SETTINGS
@given(
    data=models(),
    name=st.sampled_from(["dare_linear", "dare_ties"]),
    seed=st.integers(0, 2**31),
    rescale=st.sampled_from(["none", "l1", "density"]),
)
def test_dare_same_seed_and_tensor_name_is_identical(data, name, seed, rescale):
    base, inputs = data
    kwargs = {"density": 0.5, "rescale": rescale, "seed": seed}
    first = call(name, base, inputs, tensor="model.layers.3.mlp.down_proj.weight", **kwargs)
    second = call(name, base, inputs, tensor="model.layers.3.mlp.down_proj.weight", **kwargs)
    assert torch.equal(first, second)


def test_dare_other_tensor_name_gives_other_result():
    base = torch.zeros(16, 16)
    model = torch.arange(1, 257, dtype=torch.float32).reshape(16, 16)
    first = call("dare_linear", base, [model], density=0.5, rescale="none", tensor="a.weight")
    second = call("dare_linear", base, [model], density=0.5, rescale="none", tensor="b.weight")
    assert not torch.equal(first != 0, second != 0)


@SETTINGS
@given(data=models(), name=st.sampled_from(sorted(METHODS.names())))
def test_methods_never_mutate_their_inputs(data, name):
    base, inputs = data
    method = METHODS.get(name)
    if method.max_inputs is not None:
        inputs = inputs[: method.max_inputs]
    assume(len(inputs) >= method.min_inputs)
    before = [t.clone() for t in (base, *inputs)]
    call(name, base if method.needs_base else None, inputs, **method_parameters(name))
    for original, now in zip(before, (base, *inputs), strict=True):
        assert torch.equal(original, now)


# ---------------------------------------------------------------- TIES written out


def _trim(delta: list[list[float]], density: float) -> list[list[float]]:
    """Magnitude trim by hand: keep |δ| ≥ the k-th largest |δ|, k = ⌊density·n⌋."""
    flat = sorted((abs(v) for row in delta for v in row), reverse=True)
    k = max(1, math.floor(density * len(flat)))
    threshold = flat[k - 1]
    return [[v if abs(v) >= threshold else 0.0 for v in row] for row in delta]


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def ties_by_hand(
    base: torch.Tensor,
    deltas: list[torch.Tensor],
    weights: list[float],
    *,
    density: float,
    lam: float = 1.0,
    normalize: bool = True,
    sign_method: str = "sum",
    divide_by: str = "weights",
) -> torch.Tensor:
    """mergekit's TIES, one element at a time; PEFT's options via sign_method/divide_by."""
    trimmed = [_trim(d.tolist(), density) for d in deltas]
    out = base.clone().tolist()
    rows, cols = base.shape
    for i in range(rows):
        for j in range(cols):
            values = [t[i][j] for t in trimmed]
            weighted = [w * v for w, v in zip(weights, values, strict=True)]
            votes = values if sign_method == "total" else weighted
            score = sum(_sign(v) for v in votes) if sign_method == "count" else sum(votes)
            elected = 1 if score >= 0 else -1  # a tie elects +
            agree = [s for s, v in enumerate(votes) if v != 0 and _sign(v) == elected]
            mixed = sum(weighted[s] for s in agree)
            divisor = sum(weights[s] for s in agree) if divide_by == "weights" else len(agree)
            if divisor == 0:
                divisor = 1
            out[i][j] += lam * (mixed / divisor if normalize else mixed)
    return torch.tensor(out)


WEIGHTS = [1.0, 0.5, -1.0]


def _crafted_deltas() -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(42)
    base = torch.randn(3, 4, generator=gen)
    deltas = [torch.randn(3, 4, generator=gen) for _ in range(3)]
    special = {
        (0, 0): [0.0, 0.0, 0.0],  # nothing votes: divisor 0 → 1, the base stays
        (0, 1): [1.0, -2.0, 0.0],  # weighted 1, −1, 0: Σ = 0, a tie elects +
        (0, 2): [0.5, 0.0, 0.5],  # weighted .5, 0, −.5: tie; the zero never agrees
        (0, 3): [1.0, 1.0, 1.0],  # the negative weight flips source 3's vote
        (1, 0): [-1.0, 2.0, 3.0],  # weighted −1, 1, −3: agreeing weights sum to 0
        (1, 1): [0.0, -4.0, 0.0],  # a single voter
    }
    for (i, j), values in special.items():
        for delta, value in zip(deltas, values, strict=True):
            delta[i, j] = value
    return base, deltas


@pytest.mark.parametrize(
    ("sign_method", "divide_by", "normalize", "lam"),
    [
        ("sum", "weights", True, 1.0),  # mergekit defaults
        ("sum", "weights", False, 0.7),
        ("count", "weights", True, 1.0),
        ("total", "count", True, 1.0),  # PEFT
        ("total", "weights", True, 2.0),
    ],
)
def test_ties_matches_the_written_out_formula(sign_method, divide_by, normalize, lam):
    base, deltas = _crafted_deltas()
    inputs = [base + d for d in deltas]
    # the inputs' deltas as the method sees them (rounding of base + d − base included)
    seen = [x - base for x in inputs]
    out = call(
        "ties",
        base,
        inputs,
        WEIGHTS,
        density=1.0,
        sign_method=sign_method,
        divide_by=divide_by,
        normalize=normalize,
        **{"lambda": lam},
    )
    expected = ties_by_hand(
        base,
        seen,
        WEIGHTS,
        density=1.0,
        lam=lam,
        normalize=normalize,
        sign_method=sign_method,
        divide_by=divide_by,
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_ties_special_cases_by_value():
    base, deltas = _crafted_deltas()
    out = call("ties", base, [base + d for d in deltas], WEIGHTS, density=1.0) - base
    assert out[0, 0].item() == 0.0  # nothing votes
    assert out[0, 1].item() == pytest.approx(1.0)  # tie → +: only source 1, 1 / 1
    assert out[0, 2].item() == pytest.approx(0.5)  # tie → +: only source 1
    assert out[0, 3].item() == pytest.approx(1.0)  # (1 + .5) / (1 + .5)
    assert out[1, 0].item() == pytest.approx(-4.0)  # (−1 − 3) / (1 − 1 → 1)
    assert out[1, 1].item() == pytest.approx(-4.0)  # −2 / .5


@pytest.mark.parametrize("density", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("sign_method", ["sum", "count", "total"])
def test_ties_with_trim_matches_the_written_out_formula(density, sign_method):
    gen = torch.Generator().manual_seed(int(density * 100))
    base = torch.randn(3, 4, generator=gen)
    inputs = [base + torch.randn(3, 4, generator=gen) for _ in range(3)]
    seen = [x - base for x in inputs]
    out = call("ties", base, inputs, WEIGHTS, density=density, sign_method=sign_method)
    expected = ties_by_hand(base, seen, WEIGHTS, density=density, sign_method=sign_method)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_ties_per_source_density():
    """Each source is trimmed at its own density (mergekit's per-model `density`)."""
    method = METHODS.get("ties")
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(3, 4, generator=gen)
    inputs = [base + torch.randn(3, 4, generator=gen) for _ in range(3)]
    densities = [0.25, 0.5, 1.0]
    sources = [
        method.source_params(weight=w, density=d) for w, d in zip(WEIGHTS, densities, strict=True)
    ]
    out = method.fn(base, inputs, sources, method.params(), random_stream(0, "w"))
    seen = [_trim((x - base).tolist(), d) for x, d in zip(inputs, densities, strict=True)]
    expected = ties_by_hand(base, [torch.tensor(s) for s in seen], WEIGHTS, density=1.0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- slerp


@SETTINGS
@given(data=models(count=st.just(1)))
def test_slerp_endpoints(data):
    base, (other,) = data
    torch.testing.assert_close(call("slerp", base, [other], t=0.0), base)
    torch.testing.assert_close(call("slerp", base, [other], t=1.0), other, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    data=models(count=st.just(0)),
    scale=st.floats(-4, 4).filter(lambda s: abs(s) > 0.01),
    t=st.floats(0, 1),
)
def test_slerp_of_parallel_vectors_is_lerp(data, scale, t):
    base, _ = data
    assume(float(base.norm()) > 1e-3)
    other = base * scale
    # mergekit's lerp there: (1 − t)·v0 + t·v1
    assert torch.equal(call("slerp", base, [other], t=t), base * (1 - t) + other * t)


def test_slerp_written_out_for_orthogonal_unit_vectors():
    v0, v1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    for t in (0.25, 0.5, 0.8):
        expected = torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2), 0.0])
        torch.testing.assert_close(slerp_tensors(t, v0, v1), expected)


def test_slerp_general_angle_matches_formula():
    gen = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    cos = float((v0 / v0.norm() * (v1 / v1.norm())).sum())
    assert abs(cos) < PARALLEL_THRESHOLD
    omega = math.acos(cos)
    t = 0.35
    expected = (
        math.sin((1 - t) * omega) / math.sin(omega) * v0
        + math.sin(t * omega) / math.sin(omega) * v1
    )
    torch.testing.assert_close(call("slerp", v0, [v1], t=t), expected)


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_documents_formula_and_paper(name):
    method = METHODS.get(name)
    assert method.formula
    assert method.paper.startswith("https://")
    shared = {k: v for k, v in method_parameters(name).items() if k in method.params.model_fields}
    params = method.params.model_validate(shared)
    assert method.describe(params).startswith(f"{name}: ")


def test_randomized_flag_marks_exactly_the_dare_methods():
    randomized = {n for n in METHODS.names() if METHODS.get(n).randomized}
    assert randomized == {"dare_linear", "dare_ties", "della", "della_linear"}
