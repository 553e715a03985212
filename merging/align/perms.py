"""The permutations of one alignment, and how they act on tensors (as gathers).

Convention: a permutation ``perm`` of an axis gives the aligned tensor ``out = B.index_select
(axis, perm)``, i.e. unit ``i`` of the aligned model is unit ``perm[i]`` of B. Gathers copy
values bit for bit, so any dtype (bf16 included) stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from merging.align.spec import RESIDUAL, Axis, ModelSpec


@dataclass
class HeadPermutation:
    """One layer's attention permutation.

    Attributes:
        kv: ``[kv_heads]``: output KV group ``g`` is B's group ``kv[g]``.
        q: ``[kv_heads, group]``: query slot ``s`` of output group ``g`` is slot ``q[g, s]``
            of B's group ``kv[g]``.
        v: ``[kv_heads, head_dim]``: value dimension ``d`` of output KV head ``g`` is
            dimension ``v[g, d]`` of B's KV head ``kv[g]`` (also o_proj's columns).
    """

    kv: torch.Tensor
    q: torch.Tensor
    v: torch.Tensor

    def rows(self, kind: str, head_dim: int) -> torch.Tensor:
        """The gather index this permutation puts on a q/k/v row axis or o_proj's columns."""
        group = self.q.shape[1]
        dims = torch.arange(head_dim)
        if kind == "k":
            return (self.kv[:, None] * head_dim + dims).reshape(-1)
        if kind == "v":
            return (self.kv[:, None] * head_dim + self.v).reshape(-1)
        heads = self.kv[:, None] * group + self.q  # [kv_heads, group] source query heads
        if kind == "q":
            return (heads[:, :, None] * head_dim + dims).reshape(-1)
        # "o": columns of query head (g, s) are its value dimensions, permuted like v[g]
        return (heads[:, :, None] * head_dim + self.v[:, None, :]).reshape(-1)


@dataclass
class Permutations:
    """Every permutation of one model: residual, per-layer attention and MLP."""

    spec: ModelSpec
    residual: torch.Tensor
    attention: list[HeadPermutation]
    mlp: list[torch.Tensor]

    @classmethod
    def identity(cls, spec: ModelSpec) -> Permutations:
        return cls(
            spec,
            torch.arange(spec.hidden),
            [
                HeadPermutation(
                    torch.arange(spec.kv_heads),
                    torch.arange(spec.group).repeat(spec.kv_heads, 1),
                    torch.arange(spec.head_dim).repeat(spec.kv_heads, 1),
                )
                for _ in range(spec.layers)
            ],
            [torch.arange(spec.intermediate) for _ in range(spec.layers)],
        )

    @classmethod
    def random(
        cls, spec: ModelSpec, generator: torch.Generator, *, families: set[str] | None = None
    ) -> Permutations:
        """Random permutations (only of ``families`` among residual, mlp, kv, q, v if given)."""
        out = cls.identity(spec)

        def draw(family: str, n: int, current: torch.Tensor) -> torch.Tensor:
            if families is not None and family not in families:
                return current
            return torch.randperm(n, generator=generator)

        out.residual = draw("residual", spec.hidden, out.residual)
        for layer in range(spec.layers):
            out.mlp[layer] = draw("mlp", spec.intermediate, out.mlp[layer])
            head = out.attention[layer]
            head.kv = draw("kv", spec.kv_heads, head.kv)
            head.q = torch.stack([draw("q", spec.group, r) for r in head.q])
            head.v = torch.stack([draw("v", spec.head_dim, r) for r in head.v])
        return out

    def index(self, axis: Axis) -> torch.Tensor | None:
        """The gather index of one axis kind (`None` for a fixed axis)."""
        if axis is None:
            return None
        if axis == RESIDUAL:
            return self.residual
        assert isinstance(axis, tuple)
        kind, layer = axis
        if kind == "mlp":
            return self.mlp[layer]
        return self.attention[layer].rows(kind, self.spec.head_dim)

    def apply(
        self, tensor: torch.Tensor, axes: tuple[Axis, ...], *, skip: Axis = None
    ) -> torch.Tensor:
        """Gather ``tensor`` along each permuted axis (all but ``skip``)."""
        for dim, axis in enumerate(axes):
            if axis is None or axis == skip:
                continue
            index = self.index(axis)
            assert index is not None
            tensor = tensor.index_select(dim, index.to(tensor.device))
        return tensor

    def is_identity(self) -> bool:
        return all(
            torch.equal(index, torch.arange(len(index)))
            for index in [self.residual, *self.mlp]
            + [h.rows(k, self.spec.head_dim) for h in self.attention for k in ("q", "v")]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "residual": self.residual.tolist(),
            "layers": [
                {
                    "mlp": self.mlp[layer].tolist(),
                    "kv_groups": head.kv.tolist(),
                    "query_heads_in_group": head.q.tolist(),
                    "value_dims_in_head": head.v.tolist(),
                }
                for layer, head in enumerate(self.attention)
            ],
        }

    @classmethod
    def from_json(cls, spec: ModelSpec, data: dict[str, Any]) -> Permutations:
        layers = data["layers"]
        return cls(
            spec,
            torch.tensor(data["residual"]),
            [
                HeadPermutation(
                    torch.tensor(x["kv_groups"]),
                    torch.tensor(x["query_heads_in_group"]),
                    torch.tensor(x["value_dims_in_head"]),
                )
                for x in layers
            ],
            [torch.tensor(x["mlp"]) for x in layers],
        )
