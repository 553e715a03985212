"""RAM and RAM+ (tensor-local): unique changes kept whole, shared ones averaged."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.merging.kernel_helpers import chunked, pure
from tests.merging.method_helpers import GRID, SETTINGS, models


def test_ram_keeps_unique_changes_and_averages_shared_ones():
    base = torch.zeros(4)
    first = torch.tensor([1.0, 0.0, 2.0, 1e-6])
    second = torch.tensor([0.0, 3.0, 4.0, 0.0])
    out = pure("ram", base, [first, second])
    # |δ| ≤ ε = 1e-5 does not contribute
    assert out.tolist() == [1.0, 3.0, 3.0, 0.0]


def test_ramplus_scales_each_models_unique_entries():
    base = torch.zeros(5)
    first = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0])  # 2 unique, 1 shared: ρ = 0.5
    second = torch.tensor([0.0, 0.0, 4.0, 3.0, 0.0])  # 1 unique, 1 shared: ρ = 1
    out = pure("ramplus_tl", base, [first, second], r=0.5, alpha=0.8)
    lam_first, lam_second = 1 + 0.5 * 0.5, 1 + 0.5 * 0.8
    torch.testing.assert_close(out, torch.tensor([lam_first, lam_first, 3.0, 3 * lam_second, 0]))


def test_ramplus_without_unique_entries_clamps_rho_at_alpha():
    base = torch.zeros(3)
    x = torch.tensor([1.0, 2.0, 3.0])
    out = pure("ramplus_tl", base, [x, x.clone()])  # shared everywhere: averaged
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
def test_a_model_with_itself_is_itself(name):
    base = torch.randn(4, 6)
    model = base + torch.randn(4, 6)
    torch.testing.assert_close(pure(name, base, [model, model.clone()]), model)
    assert torch.equal(pure(name, base, [base.clone()]), base)


@SETTINGS
@given(
    data=models(count=st.integers(1, 3), elements=GRID),
    name=st.sampled_from(["ram", "ramplus_tl"]),
    chunk=st.integers(1, 17),
    threads=st.sampled_from([None, 3]),
)
def test_kernel_matches_the_function(data, name, chunk, threads):
    base, inputs = data
    assert torch.equal(chunked(name, base, inputs, chunk=chunk, threads=threads),
                       pure(name, base, inputs))  # fmt: skip
