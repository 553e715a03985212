"""Interpolation probe (linear mode connectivity) between two models of one architecture.

Scores θ(α) = (1−α)·θ_A + α·θ_B on a grid of α with the fast scorer and reports the loss
barrier max_α [L(θ(α)) − ((1−α)·L_A + α·L_B)]: about 0 when A and B sit in one basin (a
merge of them is likely to work), large when the straight path between them climbs a ridge.

A's and B's weights are read once; one model's parameters are overwritten in place per α.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evaluation.errors import EvaluationError, IncompatibleModelsError
from evaluation.loading import load_model, load_tokenizer
from evaluation.scoring import Example, Scorer, as_examples

logger = logging.getLogger(__name__)

Accuracy = Literal["exact_match", "multiple_choice"]


class ProbePoint(BaseModel):
    """Scores at one α: the loss, the straight line between the end losses, and an accuracy."""

    model_config = ConfigDict(frozen=True)

    alpha: float
    loss: float
    linear_loss: float
    accuracy: float | None = None

    @property
    def excess(self) -> float:
        return self.loss - self.linear_loss


class ProbeResult(BaseModel):
    """The probe's curve and its barrier.

    Args:
        label_a (`str`), label_b (`str`): the end points (α=0 is A, α=1 is B).
        points (`list[ProbePoint]`): one per α, in increasing α.
        barrier (`float`): max over α of `loss − linear_loss` (≥ 0 up to rounding).
        barrier_alpha (`float`): where it is reached.
        accuracy_metric (`str`, *optional*): which accuracy the points carry.
    """

    model_config = ConfigDict(frozen=True)

    label_a: str
    label_b: str
    points: list[ProbePoint] = Field(min_length=2)
    barrier: float
    barrier_alpha: float
    accuracy_metric: str | None = None

    def rows(self) -> list[dict[str, Any]]:
        """The curve as plain dicts (alpha, loss, linear_loss, excess, accuracy) for the app."""
        return [{**p.model_dump(), "excess": p.excess} for p in self.points]


def alpha_grid(num_points: int = 11) -> list[float]:
    """`num_points` evenly spaced α in [0, 1], both ends included."""
    if num_points < 2:
        raise ValueError("the probe needs at least 2 points (α = 0 and α = 1)")
    return [i / (num_points - 1) for i in range(num_points)]


def loss_barrier(alphas: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    """max_α [L(α) − ((1−α)·L(0) + α·L(1))] and its α; `alphas` must start at 0 and end at 1."""
    if len(alphas) != len(losses) or len(alphas) < 2 or alphas[0] != 0 or alphas[-1] != 1:
        raise ValueError("alphas must run from 0 to 1 and match losses one to one")
    excess = [
        loss - ((1 - a) * losses[0] + a * losses[-1])
        for a, loss in zip(alphas, losses, strict=True)
    ]
    best = max(range(len(excess)), key=excess.__getitem__)
    return excess[best], alphas[best]


def float_state(model: Any) -> dict[str, Any]:
    """A detached CPU copy of `model`'s state dict (one copy per tied tensor name)."""
    return {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}


def check_compatible(state_a: dict[str, Any], state_b: dict[str, Any]) -> None:
    if state_a.keys() != state_b.keys():
        only = sorted(state_a.keys() ^ state_b.keys())[:5]
        raise IncompatibleModelsError(f"models have different tensors, e.g. {only}")
    for name, tensor in state_a.items():
        if tensor.shape != state_b[name].shape:
            raise IncompatibleModelsError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} in A and "
                f"{tuple(state_b[name].shape)} in B"
            )


def interpolate_(
    model: Any, state_a: dict[str, Any], state_b: dict[str, Any], alpha: float
) -> None:
    """Set `model`'s weights to (1−α)·A + α·B in place (non-float tensors are taken from A)."""
    import torch

    with torch.no_grad():
        for name, target in model.state_dict().items():
            a, b = state_a[name], state_b[name]
            mixed = torch.lerp(a.float(), b.float(), alpha) if a.is_floating_point() else a
            target.copy_(mixed.to(device=target.device, dtype=target.dtype))


def probe_loaded(
    scorer: Scorer,
    state_a: dict[str, Any],
    state_b: dict[str, Any],
    examples: Sequence[Example],
    *,
    alphas: Sequence[float],
    accuracy: Accuracy | None = None,
    labels: tuple[str, str] = ("A", "B"),
    progress: Callable[[int, int], None] | None = None,
) -> ProbeResult:
    """Run the probe on an already loaded `scorer` model (its weights end as θ(α_last))."""
    check_compatible(state_a, state_b)
    alphas = sorted(set(alphas) | {0.0, 1.0})
    if alphas[0] < 0 or alphas[-1] > 1:
        raise ValueError(f"α must lie in [0, 1], got {alphas[0]} … {alphas[-1]}")
    losses, accuracies = [], []
    for index, alpha in enumerate(alphas):
        interpolate_(scorer.model, state_a, state_b, alpha)
        losses.append(scorer.loss(examples))
        accuracies.append(scorer.score(examples, metric=accuracy) if accuracy else None)
        logger.debug("α=%.3f loss=%.4f", alpha, losses[-1])
        if progress is not None:
            progress(index + 1, len(alphas))
    barrier, barrier_alpha = loss_barrier(alphas, losses)
    points = [
        ProbePoint(
            alpha=a,
            loss=loss,
            linear_loss=(1 - a) * losses[0] + a * losses[-1],
            accuracy=acc,
        )
        for a, loss, acc in zip(alphas, losses, accuracies, strict=True)
    ]
    return ProbeResult(
        label_a=labels[0],
        label_b=labels[1],
        points=points,
        barrier=barrier,
        barrier_alpha=barrier_alpha,
        accuracy_metric=accuracy,
    )


def interpolation_probe(
    model_a: str | Path,
    model_b: str | Path,
    examples: Iterable[Example | dict[str, Any]],
    *,
    alphas: Sequence[float] | None = None,
    accuracy: Accuracy | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 8,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ProbeResult:
    """Loss (and accuracy) along the straight line from model A to model B.

    Holds three copies of the weights (A, B and the working model), on one `device`.

    Args:
        model_a (`str` or `Path`), model_b (`str` or `Path`): model directories with the
            same architecture (e.g. the base and the merge, or two inputs).
        examples (`Iterable[Example | dict]`): scoring examples (see `evaluation.scoring`).
        alphas (`Sequence[float]`, *optional*): α values in [0, 1]; 0 and 1 are always
            added (default: 11 evenly spaced points).
        accuracy (`str`, *optional*): also record ``"exact_match"`` or ``"multiple_choice"``.
        device (`str`): where the working model lives (one device, not ``"auto"``).
        dtype (`str`): dtype of the working model; float32 keeps the curve smooth.
        progress (`Callable[[int, int], None]`, *optional*): called with (done, total).

    Returns:
        `ProbeResult`: the curve, its barrier, and `rows()` for plotting.

    Raises:
        [`IncompatibleModelsError`]: the models' tensors differ in names or shapes.
    """
    if device == "auto":
        raise EvaluationError("the probe edits weights in place: give one device, not 'auto'")
    examples = as_examples(examples)
    tokenizer = load_tokenizer(model_a, trust_remote_code=trust_remote_code)
    other = load_model(model_b, device="cpu", dtype=dtype, trust_remote_code=trust_remote_code)
    state_b = float_state(other)
    del other
    gc.collect()
    model = load_model(model_a, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    state_a = float_state(model)
    scorer = Scorer(model, tokenizer, batch_size=batch_size)
    return probe_loaded(
        scorer,
        state_a,
        state_b,
        examples,
        alphas=alphas if alphas is not None else alpha_grid(),
        accuracy=accuracy,
        labels=(Path(model_a).name or str(model_a), Path(model_b).name or str(model_b)),
        progress=progress,
    )


def plot_probe(result: ProbeResult, path: str | Path) -> Path:
    """Draw the loss curve, the straight line between the ends and the accuracy as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    alphas = [p.alpha for p in result.points]
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot(alphas, [p.loss for p in result.points], "o-", label="loss L(θ(α))")
    axes.plot(alphas, [p.linear_loss for p in result.points], "--", label="(1−α)·L_A + α·L_B")
    axes.set_xlabel(f"α   ({result.label_a} → {result.label_b})")
    axes.set_ylabel("loss per output token")
    axes.set_title(f"loss barrier {result.barrier:.4f} at α={result.barrier_alpha:.2f}")
    if result.accuracy_metric:
        twin = axes.twinx()
        accuracy = [float("nan") if p.accuracy is None else p.accuracy for p in result.points]
        twin.plot(alphas, accuracy, "s:", color="tab:green", label=result.accuracy_metric)
        twin.set_ylabel(result.accuracy_metric)
        twin.set_ylim(-0.05, 1.05)
        twin.legend(loc="upper right")
    axes.legend(loc="upper left")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def compare_barriers(
    model_a: str | Path,
    ends: dict[str, str | Path],
    examples: Iterable[Example | dict[str, Any]],
    *,
    alphas: Sequence[float] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, ProbeResult]:
    """The probe from one model A to several ends on the same examples, e.g. "before vs
    after" alignment: ``{"B": b, "aligned B": aligned}`` gives the barriers A→B and A→π(B).

    A and the working model are loaded once; each end is loaded in turn.
    """
    if device == "auto":
        raise EvaluationError("the probe edits weights in place: give one device, not 'auto'")
    examples = as_examples(examples)
    model = load_model(model_a, device=device, dtype=dtype)
    scorer = Scorer(model, load_tokenizer(model_a), batch_size=batch_size)
    state_a = float_state(model)
    results = {}
    for label, end in ends.items():
        other = load_model(end, device="cpu", dtype=dtype)
        state_b = float_state(other)
        del other
        gc.collect()
        results[label] = probe_loaded(
            scorer, state_a, state_b, examples, alphas=alphas or alpha_grid(),
            labels=(Path(model_a).name or str(model_a), label), progress=progress,
        )  # fmt: skip
    return results


def plot_probes(results: dict[str, ProbeResult], path: str | Path) -> Path:
    """Draw several probe curves (e.g. A→B and A→aligned B) on one plot, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    for label, result in results.items():
        alphas = [p.alpha for p in result.points]
        line = axes.plot(alphas, [p.loss for p in result.points], "o-",
                         label=f"A → {label} (barrier {result.barrier:.4f})")  # fmt: skip
        axes.plot(alphas, [p.linear_loss for p in result.points], "--",
                  color=line[0].get_color(), alpha=0.5)  # fmt: skip
    axes.set_xlabel("α (0: A, 1: the other end)")
    axes.set_ylabel("loss per output token")
    axes.set_title("interpolation loss (dashed: straight line between the ends)")
    axes.legend(loc="best")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
