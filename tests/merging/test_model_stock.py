"""Model Stock against its written-out definition (Jang et al. 2024, as mergekit computes it)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from merging import parse_recipe
from merging.errors import RecipeError
from tests.merging.method_helpers import call
from tests.merging.test_kernels import run_chunked


def _written_out(base: np.ndarray, inputs: list[np.ndarray]) -> np.ndarray:
    """float64, whole tensor flattened, straight from the formula."""
    b = base.reshape(-1).astype(np.float64)
    deltas = [x.reshape(-1).astype(np.float64) - b for x in inputs]
    cosines = [
        np.clip(di @ dj / max(np.linalg.norm(di) * np.linalg.norm(dj), 1e-6), -1, 1)
        for di, dj in itertools.combinations(deltas, 2)
    ]
    cos, k = float(np.mean(cosines)), len(inputs)
    t = k * cos / (1 + (k - 1) * cos)
    average = sum(x.reshape(-1).astype(np.float64) for x in inputs) / k
    return (t * average + (1 - t) * b).reshape(base.shape)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_random_tensors_match_the_written_out_formula(k):
    g = torch.Generator().manual_seed(k)
    base = torch.randn(6, 7, generator=g)
    shared = torch.randn(6, 7, generator=g)  # correlated task vectors: 0 < cos θ < 1
    inputs = [base + shared + 0.7 * torch.randn(6, 7, generator=g) for _ in range(k)]
    expected = _written_out(base.numpy(), [x.numpy() for x in inputs])
    got = call("model_stock", base, inputs)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_orthogonal_task_vectors_keep_the_base_and_parallel_ones_take_the_average():
    base = torch.tensor([1.0, 2.0, 3.0, 4.0])
    a, b = base + torch.tensor([1.0, 0, 0, 0]), base + torch.tensor([0, 1.0, 0, 0])
    assert torch.equal(call("model_stock", base, [a, b]), base)  # cos 0 → t = 0
    c = base + torch.tensor([0.5, 0.5, 0, 0])
    torch.testing.assert_close(call("model_stock", base, [c, c]), c)  # cos 1 → t = 1


def test_opposite_task_vectors_are_singular_and_keep_the_base():
    base = torch.zeros(3)
    delta = torch.tensor([1.0, -2.0, 0.5])
    # k = 2, cos θ = −1: 1 + (k − 1)·cos θ = 0, no finite ratio → t = 0
    assert torch.equal(call("model_stock", base, [base + delta, base - delta]), base)


def test_filter_wise_gives_each_row_its_own_ratio():
    base = torch.zeros(2, 2)
    a = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    got = call("model_stock", base, [a, b], filter_wise=True)
    assert torch.equal(got[0], a[0])  # parallel row: the average
    assert torch.equal(got[1], base[1])  # orthogonal row: the base
    whole = call("model_stock", base, [a, b])  # one angle for the tensor: cos = 2/3, t = 0.8
    torch.testing.assert_close(whole, 0.8 * (a + b) / 2)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
@pytest.mark.parametrize("shape", [(5, 9), (3, 2, 4), (11,)])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_chunked_kernel_matches_the_function(chunk, shape, filter_wise):
    """Chunks cut across rows: per-row statistics must still add up row by row."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(shape, generator=g)
    inputs = [base + torch.randn(shape, generator=g) * s for s in (0.1, 0.2, 0.3)]
    expected = call("model_stock", base, inputs, filter_wise=filter_wise)
    got = run_chunked("model_stock", base, inputs, [1.0] * 3, chunk, filter_wise=filter_wise)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_needs_two_models_besides_the_base():
    with pytest.raises(RecipeError, match="model_stock needs at least 2 model"):
        parse_recipe({"merge_method": "model_stock", "base_model": "a/base",
                      "models": [{"model": "a/one"}]})  # fmt: skip
