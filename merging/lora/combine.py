"""Combine LoRA adapters into one adapter (it loads with ``PeftModel.from_pretrained``).

Each adapter i brings, per module, A_i (r_i, in), B_i (out, r_i) and its scale s_i. The scale is
folded into B (B̃_i = s_i·B_i), and the output adapter has scale 1 everywhere (α = r).

- ``lorahub``: A' = Σ w_i·A_i, B' = Σ w_i·B̃_i (LoraHub, https://arxiv.org/abs/2307.13269). Every
  adapter needs the same rank per module. ΔW' = B'·A' = Σ_i Σ_j w_i·w_j·B̃_i·A_j includes the
  cross terms B̃_i·A_j (i ≠ j), as in the paper: it is *not* the weighted sum of the ΔW_i.
- ``concat``: A' = [A_1; …; A_n], B' = [w_1·B̃_1, …, w_n·B̃_n]; exact: B'·A' = Σ w_i·ΔW_i at rank
  Σ r_i.
- ``svd``: any merge method (``task_arithmetic``, ``ties``, ``dare_*``, ``linear``, …) applied to
  the ΔW_i of each module, then truncated SVD back to rank k: B' = U_k·√S_k, A' = √S_k·V_kᵀ. The
  relative reconstruction error ‖ΔW − B'A'‖_F / ‖ΔW‖_F is reported per module and overall.

A module only some adapters have counts as ΔW_i = 0 for the others. The output is written module
by module into a temporary folder that is renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from merging.errors import AdapterError, RecipeError
from merging.io.headers import TensorHeader
from merging.io.writer import ShardWriter, torch_dtype_code
from merging.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, LoraAdapter, LoraModule
from merging.lora.factors import Factors, concat_factors, lorahub_factors, svd_factors
from merging.methods import get_method, random_stream
from merging.registry import Registry
from merging.sources import resolve_model

logger = logging.getLogger(__name__)


class CombineParams(BaseModel):
    """Options of a combination.

    Attributes:
        rank: ``svd``: the output rank k (default: the largest input rank of each module).
        method: ``svd``: the merge method applied to the ΔW_i.
        parameters: ``svd``: that method's parameters (``density``, ``lambda``, …).
        seed: ``svd``: seeds random methods (DARE) per module.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    rank: int | None = Field(None, gt=0)
    method: str = "task_arithmetic"
    parameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class ModuleResult:
    """One combined module; ``error`` / ``norm`` (Frobenius) are set when it is approximate."""

    a: torch.Tensor
    b: torch.Tensor
    error: float | None = None
    norm: float | None = None


CombineFn = Callable[[str, list[Factors | None], list[float], CombineParams], ModuleResult]


@dataclass(frozen=True)
class Combiner:
    name: str
    fn: CombineFn
    formula: str
    output_rank: Callable[[list[int], CombineParams, tuple[int, int]], int]


COMBINERS: Registry[Combiner] = Registry("adapter combination")


@dataclass
class CombineResult:
    """What `combine_adapters` wrote; ``errors`` are relative SVD errors per module (``svd``)."""

    output: Path
    method: str
    weights: list[float]
    modules: int
    errors: dict[str, float] = field(default_factory=dict)
    overall_error: float | None = None


def merged_delta(
    module: str,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: CombineParams,
) -> torch.Tensor:
    """One registered merge method applied to task vectors ΔW_i (the base is zero)."""
    method = get_method(params.method)
    global_keys = {f.alias or n for n, f in method.params.model_fields.items()}
    source_keys = {f.alias or n for n, f in method.source_params.model_fields.items()} - {"weight"}
    unknown = set(params.parameters) - global_keys - source_keys
    if unknown:
        allowed = ", ".join(sorted(global_keys | source_keys))
        raise RecipeError(f"svd: {', '.join(sorted(unknown))} unknown for {method.name}: {allowed}")
    method_params = method.params.model_validate(
        {k: v for k, v in params.parameters.items() if k in global_keys}
    )
    shared = {k: v for k, v in params.parameters.items() if k in source_keys}
    sources = [method.source_params.model_validate({**shared, "weight": w}) for w in weights]
    base = torch.zeros_like(deltas[0]) if method.needs_base else None
    rng = random_stream(params.seed, module)
    return method.fn(base, list(deltas), sources, method_params, rng)


def _same_rank(ranks: list[int]) -> int:
    if len(set(ranks)) > 1:
        raise AdapterError(
            f"lorahub needs adapters of the same rank per module, got ranks {sorted(set(ranks))}; "
            "use concat (exact) or svd instead"
        )
    return ranks[0]


def _lorahub(name: str, factors: list[Factors | None], weights: list[float], p: Any) -> Any:
    return ModuleResult(*lorahub_factors(factors, weights))


def _concat(name: str, factors: list[Factors | None], weights: list[float], p: Any) -> Any:
    return ModuleResult(*concat_factors(factors, weights))


def _svd(name: str, factors: list[Factors | None], weights: list[float], p: Any) -> Any:
    present = next(f for f in factors if f is not None)
    shape = (present[1].shape[0], present[0].shape[1])
    deltas = [f[1] @ f[0] if f is not None else torch.zeros(shape) for f in factors]
    delta = merged_delta(name, deltas, weights, p)
    rank = p.rank or max(f[0].shape[0] for f in factors if f is not None)
    (a, b), error = svd_factors(delta, rank)
    return ModuleResult(a, b, error, float(delta.norm()))


for _combiner in (
    Combiner("lorahub", _lorahub, "A' = Σ wᵢ·Aᵢ, B' = Σ wᵢ·Bᵢ", lambda r, p, s: _same_rank(r)),
    Combiner(
        "concat", _concat, "A' = [Aᵢ], B' = [wᵢ·Bᵢ] (exact, rank Σ rᵢ)", lambda r, p, s: sum(r)
    ),
    Combiner(
        "svd",
        _svd,
        "ΔW = method(ΔWᵢ), then truncated SVD to rank k",
        lambda r, p, s: min(p.rank or max(r), *s),
    ),
):
    COMBINERS.add(_combiner.name, _combiner)


def plan_modules(adapters: Sequence[LoraAdapter]) -> dict[str, list[LoraModule | None]]:
    """Each adapted weight (in first-seen order) → that module in each adapter, or `None`.

    Raises:
        `AdapterError`: the adapters disagree on a module's kind, orientation or shape, or one
            stores whole tensors (``modules_to_save``), which cannot be part of an adapter.
    """
    for adapter in adapters:
        saved = [n for n, key in adapter.overrides.items() if ".base_layer." not in key]
        if saved:
            raise AdapterError(
                f"{adapter.label}: stores whole tensors ({', '.join(saved[:3])}: modules_to_save "
                "or trained biases); they cannot be combined into an adapter. Merge it into the "
                "base instead (hubmerge lora merge)."
            )
    targets = list(dict.fromkeys(t for a in adapters for t in a.modules))
    plan = {t: [a.modules.get(t) for a in adapters] for t in targets}
    for target, modules in plan.items():
        present = [(a, m) for a, m in zip(adapters, modules, strict=True) if m is not None]
        kinds = {(m.kind, m.transpose) for _, m in present}
        shapes = {(a.headers[m.b_key].shape[0], a.headers[m.a_key].shape[1]) for a, m in present}
        if len(kinds) > 1 or len(shapes) > 1:
            raise AdapterError(
                f"{target}: adapters disagree on its kind or shape ({kinds}, {shapes})"
            )
    return plan


def module_factors(
    adapters: Sequence[LoraAdapter], modules: Sequence[LoraModule | None]
) -> list[Factors | None]:
    """(A_i, s_i·B_i) in float32 for one module of each adapter."""
    out: list[Factors | None] = []
    for adapter, module in zip(adapters, modules, strict=True):
        if module is None:
            out.append(None)
            continue
        a, b = adapter.factors(module.target)
        out.append((a, b * module.scale))
    return out


def _keys(module: LoraModule) -> tuple[str, str]:
    prefix = PEFT_PREFIX + module.module
    if module.kind == "embedding":
        return f"{prefix}.lora_embedding_A", f"{prefix}.lora_embedding_B"
    return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"


def output_config(
    first: LoraAdapter, ranks: dict[str, int], *, base: str | None, fan_in_fan_out: bool
) -> dict[str, Any]:
    """adapter_config.json with scale 1 everywhere: α = r, per-module patterns where r differs."""
    top = max(ranks.values())
    patterns = {re.escape(m): r for m, r in ranks.items() if r != top}
    config = dict(first.raw_config)
    config.update(
        peft_type="LORA",
        r=top,
        lora_alpha=top,
        rank_pattern=patterns,
        alpha_pattern=dict(patterns),
        use_rslora=False,
        fan_in_fan_out=fan_in_fan_out,
        target_modules=sorted(ranks),
        modules_to_save=None,
        bias="none",
        layers_to_transform=None,
        layers_pattern=None,
        exclude_modules=None,
        inference_mode=True,
    )
    if base is not None:
        config["base_model_name_or_path"] = base
    return config


def render_adapter_card(
    *, method: str, labels: Sequence[str], weights: Sequence[float], base: str | None,
    result: CombineResult | None = None, extra: str = "",
) -> str:  # fmt: skip
    """README.md of an output adapter: PEFT front matter, method, inputs, SVD errors."""
    meta: dict[str, Any] = {"library_name": "peft"}
    if base:
        meta["base_model"] = base
    meta["tags"] = ["lora", "hubmerge", method]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", "# Combined LoRA"]
    combiner = COMBINERS.get(method)
    lines += ["", f"Made with hubmerge: **{method}** (`{combiner.formula}`).", "", extra]
    lines += ["| adapter | weight |", "|---|---|"]
    lines += [
        f"| `{label}` | {weight:.4f} |" for label, weight in zip(labels, weights, strict=True)
    ]
    if result is not None and result.overall_error is not None:
        lines += ["", f"Relative SVD reconstruction error: {result.overall_error:.4g} overall.", ""]
        lines += ["| module | relative error |", "|---|---|"]
        lines += [f"| `{m}` | {e:.4g} |" for m, e in result.errors.items()]
    return "\n".join(lines) + "\n"


def combine_adapters(
    adapters: Sequence[str | Path | LoraAdapter],
    output: str | Path,
    *,
    method: str = "concat",
    weights: Sequence[float] | None = None,
    params: CombineParams | None = None,
    base: str | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CombineResult:
    """Combine LoRA adapters into one adapter folder, one module at a time.

    Args:
        adapters: adapter folders or Hub refs (``org/name[@rev]``), or loaded `LoraAdapter`s.
        output (`Path`): the adapter folder to write; appears only when complete.
        method (`str`, *optional*): ``concat`` (default), ``lorahub`` or ``svd``.
        weights (`list[float]`, *optional*): one per adapter (default: all 1).
        params (`CombineParams`, *optional*): ``svd`` rank, method and parameters.
        base (`str`, *optional*): the base model, recorded in the config and card.
        dtype (`torch.dtype`, *optional*): output dtype (default: the first adapter's).

    Returns:
        `CombineResult`, with per-module and overall relative errors for ``svd``.

    Example:
        >>> combine_adapters(["org/lora-a", "org/lora-b"], "out/ab", method="svd",
        ...                  params=CombineParams(rank=8, method="ties"))  # doctest: +SKIP
    """
    combiner = _get_combiner(method)
    params = params or CombineParams()
    loaded = [open_adapter(a, token=token, endpoint=endpoint) for a in adapters]
    if not loaded:
        raise AdapterError("give at least one adapter to combine")
    weights = [1.0] * len(loaded) if weights is None else [float(w) for w in weights]
    if len(weights) != len(loaded):
        raise AdapterError(f"{len(weights)} weights for {len(loaded)} adapters")
    plan = plan_modules(loaded)
    out_dtype = dtype or loaded[0].tensor(next(iter(loaded[0].modules.values())).a_key).dtype
    headers, ranks = _plan_headers(loaded, plan, combiner, params, out_dtype)
    result = CombineResult(Path(output), method, weights, len(plan))
    squared_error = squared_norm = 0.0
    with ShardWriter(output, headers, max_shard_bytes=1 << 62, overwrite=overwrite) as writer:
        for done, (target, modules) in enumerate(plan.items(), start=1):
            module = next(m for m in modules if m is not None)
            combined = combiner.fn(target, module_factors(loaded, modules), weights, params)
            a_key, b_key = _keys(module)
            writer.write(a_key, combined.a.to(out_dtype).contiguous())
            writer.write(b_key, combined.b.to(out_dtype).contiguous())
            if combined.error is not None and combined.norm is not None:
                result.errors[module.module] = (
                    combined.error / combined.norm if combined.norm else 0.0
                )
                squared_error += combined.error**2
                squared_norm += combined.norm**2
            if progress is not None:
                progress(done, len(plan))
        if method == "svd":
            result.overall_error = math.sqrt(squared_error / squared_norm) if squared_norm else 0.0
        transposed = {m.transpose for ms in plan.values() for m in ms if m and m.kind == "linear"}
        config = output_config(loaded[0], ranks, base=base, fan_in_fan_out=True in transposed)
        os.replace(writer.tmp / "model.safetensors", writer.tmp / ADAPTER_WEIGHTS)
        writer.add_file(ADAPTER_CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
        labels = [a.label for a in loaded]
        card_base = base or config.get("base_model_name_or_path")
        writer.add_file(
            "README.md",
            render_adapter_card(
                method=method, labels=labels, weights=weights, base=card_base, result=result
            ),
        )
        result.output = writer.finish()
    logger.info("wrote %s adapter %s (%d modules)", method, result.output, len(plan))
    return result


def _get_combiner(method: str) -> Combiner:
    try:
        return COMBINERS.get(method)
    except KeyError as err:
        raise RecipeError(str(err)) from None


def open_adapter(
    adapter: str | Path | LoraAdapter, *, token: str | None = None, endpoint: str | None = None
) -> LoraAdapter:
    """A `LoraAdapter` from a folder or a Hub ref (only the adapter is downloaded)."""
    if isinstance(adapter, LoraAdapter):
        return adapter
    resolved = resolve_model(str(adapter), token=token, endpoint=endpoint)
    return LoraAdapter(resolved.path, label=str(adapter))


def _plan_headers(
    adapters: Sequence[LoraAdapter],
    plan: dict[str, list[LoraModule | None]],
    combiner: Combiner,
    params: CombineParams,
    dtype: torch.dtype,
) -> tuple[list[TensorHeader], dict[str, int]]:
    code = torch_dtype_code(dtype)
    headers: list[TensorHeader] = []
    ranks: dict[str, int] = {}
    for modules in plan.values():
        present = [(a, m) for a, m in zip(adapters, modules, strict=True) if m is not None]
        adapter, module = present[0]
        shape = (adapter.headers[module.b_key].shape[0], adapter.headers[module.a_key].shape[1])
        rank = combiner.output_rank([m.rank for _, m in present], params, shape)
        ranks[module.module] = rank
        a_key, b_key = _keys(module)
        headers += [TensorHeader(a_key, (rank, shape[1]), code)]
        headers += [TensorHeader(b_key, (shape[0], rank), code)]
    return headers, ranks


__all__ = [
    "COMBINERS",
    "CombineParams",
    "CombineResult",
    "combine_adapters",
    "concat_factors",
    "lorahub_factors",
    "merged_delta",
    "module_factors",
    "open_adapter",
    "plan_modules",
    "svd_factors",
]
