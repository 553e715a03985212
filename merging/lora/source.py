"""A base model with a LoRA adapter applied, read lazily as a `TensorSource`.

(Adapter parsing and ΔW math: `merging.lora.adapter`; merging an adapter into its base as a full
model: `merging.lora.merge`, a recipe the engine runs.)"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from merging.errors import AdapterError
from merging.io.headers import TensorHeader
from merging.io.source import TensorSource
from merging.lora.adapter import LoraAdapter, fit_problems

logger = logging.getLogger(__name__)


class AdapterSource:
    """A base model with a LoRA adapter applied, read tensor by tensor (`TensorSource`).

    ``get(name)`` returns W + s·B·A (float32) for adapted weights, the adapter's stored tensor for
    ``modules_to_save`` / trained biases, and the base tensor otherwise. Nothing is materialised.

    Args:
        base (`TensorSource`): the base checkpoint.
        adapter (`Path` or `LoraAdapter`): the adapter folder.
        label (`str`, *optional*): how messages name this source.

    Raises:
        `AdapterError`: the adapter is unsupported or does not fit the base (names and shapes).
    """

    def __init__(
        self, base: TensorSource, adapter: Path | str | LoraAdapter, *, label: str | None = None
    ) -> None:
        self.base = base
        self.adapter = (
            adapter if isinstance(adapter, LoraAdapter) else LoraAdapter(adapter, label=label)
        )
        self.label = label or f"{base.label}+{self.adapter.label}"
        problems = fit_problems(self.adapter, base.headers, base.config)
        if problems:
            raise AdapterError("adapter does not fit its base:\n  " + "\n  ".join(problems))
        self.headers: dict[str, TensorHeader] = base.headers
        self.config: dict[str, Any] = base.config

    def get(self, name: str) -> torch.Tensor:
        key = self.adapter.overrides.get(name)
        weight = self.adapter.tensor(key) if key is not None else self.base.get(name)
        if name not in self.adapter.modules:
            return weight
        return weight.float() + self.adapter.delta(name)

    def __repr__(self) -> str:
        return f"AdapterSource({self.label!r})"


__all__ = ["AdapterSource"]
