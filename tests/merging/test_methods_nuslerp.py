"""NuSLERP: t from the weights, flat / row / column vectors, SLERP of task vectors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import SETTINGS, call, models

LAYOUTS = [
    {},
    {"nuslerp_flatten": False},
    {"nuslerp_flatten": False, "nuslerp_row_wise": True},
]


def slerp_by_hand(t, v0, v1):
    omega = math.acos(float((v0 @ v1) / (v0.norm() * v1.norm())))
    return (math.sin((1 - t) * omega) * v0 + math.sin(t * omega) * v1) / math.sin(omega)


@pytest.mark.parametrize("weights", [[1.0, 3.0], [2.0, 2.0], [0.3, -0.1]])
def test_flat_is_slerp_with_t_from_the_weights(weights):
    torch.manual_seed(0)
    a, b = torch.randn(12), torch.randn(12)
    t = weights[1] / sum(weights)
    torch.testing.assert_close(pure("nuslerp", None, [a, b], weights), slerp_by_hand(t, a, b))


def test_with_a_base_the_task_vectors_are_interpolated():
    torch.manual_seed(1)
    base, a, b = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    expected = base + slerp_by_hand(0.25, (a - base).reshape(-1), (b - base).reshape(-1)).reshape(
        3, 4
    )
    torch.testing.assert_close(pure("nuslerp", base, [a, b], [3.0, 1.0]), expected)


def test_rows_and_columns_are_interpolated_independently():
    torch.manual_seed(2)
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    rows = pure("nuslerp", None, [a, b], [1.0, 1.0], nuslerp_flatten=False)
    for i in range(3):
        torch.testing.assert_close(rows[i], slerp_by_hand(0.5, a[i], b[i]))
    cols = pure("nuslerp", None, [a, b], [1.0, 1.0], nuslerp_flatten=False, nuslerp_row_wise=True)
    for j in range(5):
        torch.testing.assert_close(cols[:, j], slerp_by_hand(0.5, a[:, j], b[:, j]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_hot_weights_give_that_model_and_a_model_with_itself_is_itself(layout):
    base, a, b = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(pure("nuslerp", base, [a, b], [1.0, 0.0], **layout), a)
    torch.testing.assert_close(pure("nuslerp", None, [a, b], [0.0, 2.0], **layout), b)
    torch.testing.assert_close(pure("nuslerp", None, [a, a.clone()], [1.0, 2.0], **layout), a)


def test_weights_that_cancel_give_the_midpoint():
    a, b = torch.randn(8), torch.randn(8)
    assert torch.equal(pure("nuslerp", None, [a, b], [1.0, -1.0]),
                       pure("nuslerp", None, [a, b], [1.0, 1.0]))  # fmt: skip


def test_close_to_slerp_without_its_parallel_cutoff():
    a, b = torch.randn(64), torch.randn(64)
    torch.testing.assert_close(pure("nuslerp", None, [a, b], [0.7, 0.3]),
                               call("slerp", a, [b], t=0.3), rtol=1e-5, atol=1e-5)  # fmt: skip


@SETTINGS
@given(
    data=models(count=st.just(2)),
    layout=st.sampled_from(LAYOUTS),
    with_base=st.booleans(),
    chunk=st.integers(1, 17),
    weights=st.lists(st.floats(0.1, 2), min_size=2, max_size=2),
    threads=st.sampled_from([None, 3]),
)
def test_kernel_matches_the_function(data, layout, with_base, chunk, weights, threads):
    base, inputs = data
    base = base if with_base else None
    expected = pure("nuslerp", base, inputs, weights, **layout)
    got = chunked("nuslerp", base, inputs, weights, chunk=chunk, threads=threads, **layout)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
