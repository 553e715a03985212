"""NearSwap: the other model where it is within t of the base, fading out beyond."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import SETTINGS, models


def test_the_formula_elementwise():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0])
    other = torch.tensor([0.05, 0.2, -1.0, 1.0])
    out = pure("nearswap", base, [other], t=0.1)
    # w = clamp(0.1 / |a − b|): 1 (swap), 0.5, 0.1, 1 (equal: |a − b| floored at 1e-6)
    torch.testing.assert_close(out, torch.tensor([0.05, 0.1, -0.1, 1.0]))


def test_t_zero_is_the_base_and_large_t_the_other_model():
    base, other = torch.randn(6, 5), torch.randn(6, 5)
    assert torch.equal(pure("nearswap", base, [other], t=0.0), base)
    assert torch.equal(pure("nearswap", base, [other], t=1e9), other)


def test_a_model_with_itself_is_itself():
    base = torch.randn(4, 4)
    assert torch.equal(pure("nearswap", base, [base.clone()], t=0.3), base)


@SETTINGS
@given(data=models(count=st.just(1)), chunk=st.integers(1, 17), t=st.floats(0, 2))
def test_kernel_matches_the_function(data, chunk, t):
    base, inputs = data
    assert torch.equal(chunked("nearswap", base, inputs, chunk=chunk, t=t),
                       pure("nearswap", base, inputs, t=t))  # fmt: skip
