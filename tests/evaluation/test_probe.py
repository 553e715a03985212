import pytest
import torch

from evaluation.errors import IncompatibleModelsError
from evaluation.probe import (
    alpha_grid,
    check_compatible,
    interpolate_,
    interpolation_probe,
    loss_barrier,
    plot_probe,
)

EXAMPLES = [
    {"input": "The cat sees the dog near the", "output": " garden."},
    {"input": "The bird likes the", "output": " fish near the river."},
    {"input": "The horse finds the mouse near the", "output": " barn."},
    {"input": "The frog hears the", "output": " bee near the forest."},
]
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_barrier_formula():
    assert loss_barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == (1.5, 0.5)
    assert loss_barrier([0, 0.5, 1], [1.0, 1.0, 1.0]) == (0.0, 0)
    assert alpha_grid(3) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="0 to 1"):
        loss_barrier([0.1, 1], [1.0, 1.0])


def test_barrier_is_zero_for_a_model_with_itself(tiny_model):
    result = interpolation_probe(tiny_model, tiny_model, EXAMPLES, alphas=ALPHAS)
    assert result.barrier == pytest.approx(0.0, abs=1e-5)
    losses = [p.loss for p in result.points]
    assert max(losses) - min(losses) < 1e-5


def test_barrier_is_positive_between_unrelated_models(tiny_models, tmp_path):
    result = interpolation_probe(
        tiny_models["a"], tiny_models["b"], EXAMPLES, alphas=ALPHAS, accuracy="exact_match"
    )
    assert result.barrier > 0.1
    assert 0 < result.barrier_alpha < 1
    assert [p.alpha for p in result.points] == ALPHAS
    assert all(p.accuracy is not None for p in result.points)
    # the ends are the two models themselves
    from evaluation.scoring import Scorer

    for model, point in [
        (tiny_models["a"], result.points[0]),
        (tiny_models["b"], result.points[-1]),
    ]:
        assert Scorer.from_pretrained(model, device="cpu").loss(EXAMPLES) == pytest.approx(
            point.loss, rel=1e-5
        )
    rows = result.rows()
    assert set(rows[0]) == {"alpha", "loss", "linear_loss", "accuracy", "excess"}
    png = plot_probe(result, tmp_path / "probe.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interpolation_is_in_place_and_exact_at_the_ends():
    model = torch.nn.Linear(3, 2)
    a = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    b = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    weight = model.weight
    interpolate_(model, a, b, 0.25)
    assert model.weight is weight
    assert torch.allclose(model.weight, torch.full_like(weight, 0.25))
    interpolate_(model, a, b, 1.0)
    assert torch.equal(model.weight, b["weight"])


def test_incompatible_states_are_rejected():
    with pytest.raises(IncompatibleModelsError, match="shape"):
        check_compatible({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    with pytest.raises(IncompatibleModelsError, match="different tensors"):
        check_compatible({"w": torch.zeros(2)}, {"v": torch.zeros(2)})
