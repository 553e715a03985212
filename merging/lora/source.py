"""A base model with a LoRA adapter applied, read lazily as a `TensorSource`; checks and the
merge of an adapter into its base. (Adapter parsing and ΔW math: `merging.lora`.)"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from merging.errors import AdapterError
from merging.io.headers import TensorHeader
from merging.io.source import TensorSource
from merging.lora import LoraAdapter, fit_problems

if TYPE_CHECKING:
    from merging.check import SourceInfo
    from merging.engine import MergeOptions, MergeResult

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


def adapter_problems(
    adapter: str, base: SourceInfo, *, token: str | None = None, endpoint: str | None = None
) -> list[str]:
    """`hubmerge check`: why an adapter (local folder or Hub ref) does not fit a base.

    Only the adapter is downloaded (it is small); the base is judged from its headers.
    """
    from merging.sources import resolve_model

    try:
        resolved = resolve_model(adapter, token=token, endpoint=endpoint)
        loaded = LoraAdapter(resolved.path, label=adapter)
    except AdapterError as err:
        return [str(err)]
    return fit_problems(loaded, base.headers, base.config)


def merge_into_base(
    base: str | Path,
    adapter: str | Path,
    output: str | Path,
    *,
    options: MergeOptions | None = None,
) -> MergeResult:
    """Write base + adapter as a full model, streamed tensor by tensor (PEFT's merge_and_unload).

    Example:
        >>> merge_into_base("org/base", "org/lora", "out/merged")  # doctest: +SKIP
    """
    from merging.engine import merge
    from merging.recipe import parse_recipe

    recipe = parse_recipe(
        {"merge_method": "linear", "models": [{"model": str(base), "adapter": str(adapter)}]}
    )
    return merge(recipe, output, options=options)


__all__ = ["AdapterSource", "adapter_problems", "merge_into_base"]
