"""Weight matching (Git Re-Basin, https://arxiv.org/abs/2209.04836): permute B into A's basis.

Maximise ``Σ_tensors ⟨W_A, π(W_B)⟩`` by coordinate ascent: one permutation at a time, with
all others applied, build its cost matrix (summed over every tensor axis it acts on) and solve
it with ``scipy.optimize.linear_sum_assignment(maximize=True)``. Permutations are visited in
a seeded random order; the ascent stops after a sweep that changed nothing (or gained nothing)
or at ``max_iter`` sweeps.

Tensors are streamed in pairs from the memory-mapped checkpoints (one tensor of each model in
memory at a time, up-cast to float32 on the compute device); every cost matrix is n×n for an
axis of length n.

The attention permutation of a layer is solved jointly: for every pair (A's KV group, B's KV
group) the best query-head and value-dimension permutations are found by alternating two
small assignments, and the KV groups are then matched on those values.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from merging.align.perms import HeadPermutation, Permutations
from merging.align.spec import RESIDUAL, Axis, ModelSpec, axis_size, permutation_keys
from merging.errors import AlignmentError
from merging.io.source import CheckpointSource
from merging.progress import Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignProgress(Progress):
    """A `Progress` report (stage ``"align"``) that also carries the objective after a sweep."""

    objective: float = 0.0
    changed: int = 0


@dataclass
class Sweep:
    index: int
    objective: float
    changed: int
    seconds: float


@dataclass
class MatchResult:
    permutations: Permutations
    initial_objective: float
    sweeps: list[Sweep] = field(default_factory=list)
    converged: bool = False

    @property
    def objective(self) -> float:
        return self.sweeps[-1].objective if self.sweeps else self.initial_objective


def assignment(cost: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The permutation ``perm`` maximising ``Σ_i cost[i, perm[i]]``."""
    from scipy.optimize import linear_sum_assignment

    matrix = cost.double().cpu().numpy() if isinstance(cost, torch.Tensor) else cost
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    assert np.array_equal(rows, np.arange(len(rows)))
    return torch.from_numpy(cols.astype(np.int64))


class TensorPairs:
    """Reads the same tensor from A and B (float32, on ``device``), handing pages back after."""

    def __init__(
        self,
        reference: CheckpointSource,
        model: CheckpointSource,
        axes: dict[str, tuple[Axis, ...]],
        device: torch.device,
    ) -> None:
        self.reference, self.model, self.axes, self.device = reference, model, axes, device
        self.users: dict[Axis, list[str]] = {}
        for name, dims in axes.items():
            for axis in dict.fromkeys(dims):
                self.users.setdefault(axis, []).append(name)

    def each(self, names: list[str]) -> Any:
        for source in (self.reference, self.model):
            source.expect(names)
        for name in names:
            a = self.reference.get(name).to(self.device, torch.float32)
            b = self.model.get(name).to(self.device, torch.float32)
            yield name, a, b
            self.reference.release(name)
            self.model.release(name)


def cost_matrix(pairs: TensorPairs, perms: Permutations, axis: Axis) -> torch.Tensor:
    """``C[i, j] = Σ ⟨A[..i..], π_others(B)[..j..]⟩`` over every tensor axis ``axis`` acts on."""
    n = axis_size(perms.spec, axis)
    cost = torch.zeros(n, n, dtype=torch.float32, device=pairs.device)
    for name, a, b in pairs.each(pairs.users.get(axis, [])):
        dims = pairs.axes[name]
        b = perms.apply(b, dims, skip=axis)
        dim = dims.index(axis)
        a2 = a.movedim(dim, 0).reshape(n, -1)
        b2 = b.movedim(dim, 0).reshape(n, -1)
        cost += a2 @ b2.T
    return cost


def objective(pairs: TensorPairs, perms: Permutations) -> float:
    """``Σ_tensors ⟨W_A, π(W_B)⟩`` under ``perms``."""
    total = 0.0
    for name, a, b in pairs.each(list(pairs.axes)):
        total += float((a * perms.apply(b, pairs.axes[name])).sum(dtype=torch.float64))
    return total


@dataclass(frozen=True)
class HeadBlocks:
    """Cross terms of one layer's attention, per head: from weights or from activations."""

    query: np.ndarray  # [heads, heads]: Σ over matching dimensions (never permuted inside)
    key: np.ndarray  # [kv_heads, kv_heads]
    value: np.ndarray  # [kv_heads, head_dim, kv_heads, head_dim]
    output: np.ndarray  # [heads, head_dim, heads, head_dim] (o_proj columns)

    @classmethod
    def from_matrices(cls, spec: ModelSpec, matrices: dict[str, torch.Tensor]) -> HeadBlocks:
        h, kv, d = spec.heads, spec.kv_heads, spec.head_dim

        def blocks(kind: str, count: int) -> np.ndarray:
            return matrices[kind].double().cpu().numpy().reshape(count, d, count, d)

        q, k = blocks("q", h), blocks("k", kv)
        return cls(
            np.einsum("adbd->ab", q),
            np.einsum("adbd->ab", k),
            blocks("v", kv),
            blocks("o", h),
        )


def _pair_value(sq: np.ndarray, vv: np.ndarray, oo: np.ndarray, tau: Any, rho: Any) -> float:
    s, d = np.arange(len(tau)), np.arange(len(rho))
    o = oo[s[:, None], d[None, :], np.asarray(tau)[:, None], np.asarray(rho)[None, :]].sum()
    return float(sq[s, tau].sum() + vv[d, rho].sum() + o)


def _solve_pair(
    sq: np.ndarray, vv: np.ndarray, oo: np.ndarray, tau: np.ndarray, rho: np.ndarray | None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Best (query slots τ, value dims ρ) for one pair of KV groups, by alternating
    assignments from a start; never worse than the start when ``rho`` is given."""
    s, d = np.arange(len(tau)), np.arange(vv.shape[0])
    if rho is None:
        rho = assignment(vv + oo[s, :, tau, :].sum(0)).numpy()
    best = _pair_value(sq, vv, oo, tau, rho)
    for _ in range(20):
        new_tau = assignment(sq + oo[:, d, :, rho].sum(0)).numpy()
        new_rho = assignment(vv + oo[s, :, new_tau, :].sum(0)).numpy()
        value = _pair_value(sq, vv, oo, new_tau, new_rho)
        if value <= best + 1e-12 * abs(best):
            break
        best, tau, rho = value, new_tau, new_rho
    return best, tau, rho


def solve_heads(
    spec: ModelSpec, blocks: HeadBlocks, current: HeadPermutation | None = None
) -> HeadPermutation:
    """Match KV groups, query heads inside groups and value dims inside KV heads jointly."""
    g, kv = spec.group, spec.kv_heads
    values = np.zeros((kv, kv))
    choices: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for ga in range(kv):
        for gb in range(kv):
            qa, qb = slice(ga * g, (ga + 1) * g), slice(gb * g, (gb + 1) * g)
            sq = blocks.query[qa, qb]
            vv = blocks.value[ga, :, gb, :]
            oo = blocks.output[qa, :, qb, :]
            tau0 = assignment(sq).numpy()
            best = _solve_pair(sq, vv, oo, tau0, None)
            if current is not None and int(current.kv[ga]) == gb:
                start = _solve_pair(sq, vv, oo, current.q[ga].numpy(), current.v[ga].numpy())
                best = max(best, start, key=lambda x: x[0])
            values[ga, gb] = blocks.key[ga, gb] + best[0]
            choices[ga, gb] = (best[1], best[2])
    groups = assignment(values)
    picked = [choices[ga, int(groups[ga])] for ga in range(kv)]
    return HeadPermutation(
        groups,
        torch.from_numpy(np.stack([p[0] for p in picked]).astype(np.int64)),
        torch.from_numpy(np.stack([p[1] for p in picked]).astype(np.int64)),
    )


def _changed(old: torch.Tensor | HeadPermutation, new: torch.Tensor | HeadPermutation) -> bool:
    if isinstance(old, HeadPermutation) and isinstance(new, HeadPermutation):
        pairs = ((old.kv, new.kv), (old.q, new.q), (old.v, new.v))
        return not all(torch.equal(x, y) for x, y in pairs)
    assert isinstance(old, torch.Tensor)
    assert isinstance(new, torch.Tensor)
    return not torch.equal(old, new)


def _step(pairs: TensorPairs, perms: Permutations, key: str | tuple[str, int]) -> bool:
    """Re-solve one permutation with all others fixed; whether it changed."""
    spec = perms.spec
    if key == RESIDUAL:
        new = assignment(cost_matrix(pairs, perms, RESIDUAL))
        changed, perms.residual = _changed(perms.residual, new), new
        return changed
    assert isinstance(key, tuple)
    kind, layer = key
    if kind == "mlp":
        new = assignment(cost_matrix(pairs, perms, ("mlp", layer)))
        changed, perms.mlp[layer] = _changed(perms.mlp[layer], new), new
        return changed
    matrices = {k: cost_matrix(pairs, perms, (k, layer)) for k in ("q", "k", "v", "o")}
    current = perms.attention[layer]
    head = solve_heads(spec, HeadBlocks.from_matrices(spec, matrices), current)
    changed, perms.attention[layer] = _changed(current, head), head
    return changed


def pick_compute_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def weight_matching(
    reference: CheckpointSource,
    model: CheckpointSource,
    spec: ModelSpec,
    axes: dict[str, tuple[Axis, ...]],
    *,
    max_iter: int = 20,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    initial: Permutations | None = None,
) -> MatchResult:
    """Coordinate ascent on ``Σ ⟨W_A, π(W_B)⟩``; see the module docstring.

    Args:
        reference (`CheckpointSource`): A, whose basis is kept.
        model (`CheckpointSource`): B, the model to permute.
        spec (`ModelSpec`), axes: from `merging.align.spec`.
        max_iter (`int`): at most this many sweeps over all permutations.
        seed (`int`): seeds the order permutations are visited in.
        device (`str`, *optional*): where the products run (default: CUDA when present).
        progress (`Callable[[Progress], None]`, *optional*): called after every sweep with an
            `AlignProgress` (stage ``"align"``, ``done`` = sweeps, ``objective``).

    Returns:
        `MatchResult`: the permutations and the objective before and after every sweep.
    """
    if max_iter < 1:
        raise AlignmentError(f"max_iter must be at least 1, got {max_iter}")
    pairs = TensorPairs(reference, model, axes, pick_compute_device(device))
    perms = initial or Permutations.identity(spec)
    result = MatchResult(perms, objective(pairs, perms))
    logger.info("weight matching: objective %.6g before alignment", result.initial_objective)
    order = random.Random(seed)
    keys = permutation_keys(spec)
    previous = result.initial_objective
    for sweep in range(1, max_iter + 1):
        started = time.perf_counter()
        order.shuffle(keys)
        changed = sum(_step(pairs, perms, key) for key in keys)
        value = objective(pairs, perms)
        seconds = time.perf_counter() - started
        result.sweeps.append(Sweep(sweep, value, changed, seconds))
        logger.info("sweep %d: objective %.6g, %d permutations changed (%.1f s)",
                    sweep, value, changed, seconds)  # fmt: skip
        if progress is not None:
            progress(AlignProgress("align", sweep, max_iter, objective=value, changed=changed))
        if changed == 0 or value <= previous + 1e-9 * abs(previous):
            result.converged = True
            break
        previous = value
    return result
