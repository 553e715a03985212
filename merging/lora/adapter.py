"""PEFT LoRA adapters: read and validate them, and apply them to a base model lazily.

A LoRA adapter changes a targeted weight by ΔW = s·B·A, with A of shape (r, in), B of shape
(out, r) and the scale s = α/r (``use_rslora``: α/√r). ``rank_pattern`` / ``alpha_pattern``
override r and α per module (PEFT's matching rule: a key matches a module name that equals it or
ends with ``.key``). With ``fan_in_fan_out`` (GPT-2's Conv1D) and for embeddings the stored
weight is the transpose, so ΔW is transposed too. Tensors the adapter stores whole
(``modules_to_save``, biases trained with ``bias: all``) replace the base's.

`merging.lora.source.AdapterSource` is a `TensorSource` that returns W + ΔW for targeted
weights, so an adapter is an input like any other: merged alone (``linear`` with one source)
it equals PEFT's ``merge_and_unload()``, and inside ``task_arithmetic`` / ``ties`` / ``dare_*``
its task vector is exactly ΔW.

What cannot be merged exactly (DoRA, ``lora_bias``, other PEFT types, LoRA variants, adapters
saved relative to a modified base) raises `AdapterError` naming the option.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import safe_open

from merging.errors import AdapterError
from merging.io.headers import TensorHeader

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

REFUSED_OPTIONS: dict[str, str] = {
    "use_dora": "DoRA (use_dora: true) rescales weights by a learned magnitude vector",
    "lora_bias": "lora_bias: true trains a bias on lora_B",
    "use_qalora": "QALoRA (use_qalora: true) pools inputs group-wise",
    "layer_replication": "layer_replication duplicates layers of the base",
    "trainable_token_indices": "trainable_token_indices trains single embedding rows",
    "target_parameters": "target_parameters applies LoRA to bare parameters (MoE experts)",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens) acts on part of a sequence",
    "megatron_config": "megatron_config shards LoRA for Megatron parallel layers",
}
# Options only used when the adapter was created; they leave the saved A and B plain LoRA.
_INIT_ONLY_CONFIGS = {
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "runtime_config",
}
# Initialisations that subtract the initial B·A from the base: the saved adapter fits that
# modified base unless it was converted at save time (then init_lora_weights reads true).
_RESIDUAL_INITS = ("pissa", "olora", "corda", "lora_ga")

_LINEAR_KEY = re.compile(
    r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.(?P<param>weight|bias)$"
)
_EMBEDDING_KEY = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<factor>[AB])(?:\.[^.]+)?$")
_SAVED_MODULE = re.compile(r"\.modules_to_save\.[^.]+\.")


class AdapterConfig(BaseModel):
    """The fields of ``adapter_config.json`` that decide ΔW (everything else is ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    peft_type: str = "LORA"
    r: int = Field(8, gt=0)
    lora_alpha: float = 8.0
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    bias: str = "none"
    base_model_name_or_path: str | None = None

    @field_validator("rank_pattern", "alpha_pattern", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight.

    Attributes:
        target: the base tensor it changes (``<module>.weight``).
        kind: ``linear`` (lora_A / lora_B) or ``embedding`` (lora_embedding_A / _B).
        a_key / b_key: the adapter's tensor names of A (r, in) and B (out, r).
        rank / alpha / scale: r, α and the scale s in ΔW = s·B·A.
        transpose: whether the stored weight is (B·A)ᵀ (fan_in_fan_out, embeddings).
    """

    target: str
    kind: Literal["linear", "embedding"]
    a_key: str
    b_key: str
    rank: int
    alpha: float
    scale: float
    transpose: bool

    @property
    def module(self) -> str:
        return self.target.removesuffix(".weight")


def lora_scale(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """s = α/r, or α/√r with rank-stabilised LoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def delta_weight(
    a: torch.Tensor, b: torch.Tensor, *, scale: float, transpose: bool
) -> torch.Tensor:
    """ΔW = s·B·A in float32, transposed when the weight is stored (in, out)."""
    delta = (b.float() @ a.float()) * scale
    return delta.T.contiguous() if transpose else delta


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: the first key that matches the end of
    the module name (at a dot boundary, as a regular expression) wins."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def targets_module(target_modules: list[str] | str | None, module: str) -> bool:
    """Whether ``target_modules`` (list of suffixes, regex string, or ``all-linear``) names it."""
    if target_modules is None or target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in target_modules)


def parse_adapter_config(raw: dict[str, Any], *, where: str) -> AdapterConfig:
    """Validate an ``adapter_config.json`` mapping.

    Raises:
        `AdapterError`: a non-LoRA PEFT type, or an option that plain ΔW = s·B·A cannot express.
    """
    peft_type = str(raw.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{where}: peft_type {peft_type} is not supported; only LoRA adapters")
    for key, why in REFUSED_OPTIONS.items():
        if raw.get(key):
            raise AdapterError(f"{where}: {why}; hubmerge cannot merge it exactly, so it refuses")
    for key, value in raw.items():
        if key.endswith("_config") and key not in _INIT_ONLY_CONFIGS and value:
            raise AdapterError(f"{where}: LoRA variant {key} is not supported")
        if key.startswith("use_") and key not in ("use_rslora",) and value is True:
            raise AdapterError(f"{where}: LoRA variant {key}: true is not supported")
    init = str(raw.get("init_lora_weights", "")).lower()
    if init.startswith(_RESIDUAL_INITS):
        raise AdapterError(
            f"{where}: init_lora_weights={init!r} saves A and B relative to a modified base; "
            "convert it first (PEFT: save_pretrained(path_initial_model_for_weight_conversion=…))"
        )
    try:
        return AdapterConfig.model_validate(raw)
    except ValidationError as err:
        raise AdapterError(f"{where}: invalid adapter_config.json ({err})") from None


def index_adapter(
    config: AdapterConfig, headers: dict[str, TensorHeader], *, where: str
) -> tuple[dict[str, LoraModule], dict[str, str]]:
    """Map the adapter's tensors to the base tensors they change.

    Returns:
        ``(modules, overrides)``: adapted weights by base tensor name, and base tensor name →
        adapter key for tensors stored whole (``modules_to_save``, biases, embedding copies).
    """
    factors: dict[tuple[str, str], dict[str, str]] = {}
    overrides: dict[str, str] = {}
    for key in headers:
        name = _SAVED_MODULE.sub(".", key.removeprefix(PEFT_PREFIX))
        if "lora_magnitude_vector" in name:
            raise AdapterError(f"{where}: {key} is a DoRA magnitude vector; DoRA is not supported")
        linear, embedding = _LINEAR_KEY.match(name), _EMBEDDING_KEY.match(name)
        if linear and linear["param"] == "bias":
            raise AdapterError(f"{where}: {key} is a LoRA bias (lora_bias); not supported")
        match = linear or embedding
        if match:
            kind = "linear" if linear else "embedding"
            factors.setdefault((match["module"], kind), {})[match["factor"]] = key
        elif "lora_" in name:
            raise AdapterError(f"{where}: tensor {key} is not plain LoRA; not supported")
        else:
            overrides[name.replace(".base_layer.", ".")] = key
    modules = {}
    for (module, kind), pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{where}: {module} has lora_{''.join(pair)} but not its partner")
        modules[f"{module}.weight"] = _module(config, headers, module, kind, pair, where)
        if not targets_module(config.target_modules, module):
            logger.warning("%s: %s is adapted but not named by target_modules", where, module)
    return modules, overrides


def _module(
    config: AdapterConfig,
    headers: dict[str, TensorHeader],
    module: str,
    kind: str,
    pair: dict[str, str],
    where: str,
) -> LoraModule:
    a, b = headers[pair["A"]].shape, headers[pair["B"]].shape
    if len(a) != 2 or len(b) != 2:
        raise AdapterError(f"{where}: {module}: only Linear/Conv1D/Embedding LoRA is supported")
    rank = a[0]
    if b[1] != rank:
        raise AdapterError(f"{where}: {module}: lora_A has rank {rank} but lora_B {b[1]}")
    configured = pattern_value(config.rank_pattern, module, config.r)
    if configured != rank:
        raise AdapterError(f"{where}: {module}: config says r={configured}, tensors have {rank}")
    alpha = float(pattern_value(config.alpha_pattern, module, config.lora_alpha))
    return LoraModule(
        target=f"{module}.weight",
        kind="linear" if kind == "linear" else "embedding",
        a_key=pair["A"],
        b_key=pair["B"],
        rank=rank,
        alpha=alpha,
        scale=lora_scale(alpha, rank, rslora=config.use_rslora),
        transpose=kind == "embedding" or config.fan_in_fan_out,
    )


def expected_shape(module: LoraModule, adapter_headers: dict[str, TensorHeader]) -> tuple[int, int]:
    """The base weight shape a module fits: (out, in), or (in, out) when transposed."""
    out_features, in_features = (
        adapter_headers[module.b_key].shape[0],
        adapter_headers[module.a_key].shape[1],
    )
    return (in_features, out_features) if module.transpose else (out_features, in_features)


def fit_problems(
    adapter: LoraAdapter, base_headers: dict[str, TensorHeader], base_config: dict[str, Any]
) -> list[str]:
    """Why an adapter does not fit a base (empty when it fits), from headers only."""
    where = adapter.label
    problems = []
    archs = base_config.get("architectures") or []
    wanted = adapter.base_model_class
    if wanted and archs and wanted not in archs:
        problems.append(f"{where}: adapter was made for {wanted}, the base is {archs[0]}")
    missing = [m.target for m in adapter.modules.values() if m.target not in base_headers]
    missing += [name for name in adapter.overrides if name not in base_headers]
    if missing:
        problems.append(
            f"{where}: the base has no tensor {', '.join(missing[:3])}"
            + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
            + "; the adapter was made for another architecture"
        )
    for module in adapter.modules.values():
        header = base_headers.get(module.target)
        shape = expected_shape(module, adapter.headers)
        if header is not None and header.shape != shape:
            problems.append(
                f"{where}: {module.target} is {header.shape} in the base, the adapter needs {shape}"
            )
    for name, key in adapter.overrides.items():
        header = base_headers.get(name)
        if header is not None and header.shape != adapter.headers[key].shape:
            problems.append(
                f"{where}: {name} is {header.shape} in the base, the adapter stores "
                f"{adapter.headers[key].shape}"
            )
    return problems


class LoraAdapter:
    """A PEFT LoRA adapter folder, validated and indexed from its config and header only.

    Args:
        path (`Path`): folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        label (`str`, *optional*): how messages name it (default: the path).

    Raises:
        `AdapterError`: missing files, or an adapter hubmerge cannot merge exactly.
    """

    def __init__(self, path: Path | str, *, label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(self.path)
        self.raw_config = read_adapter_config(self.path, where=self.label)
        self.config = parse_adapter_config(self.raw_config, where=self.label)
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            extra = (
                " (only adapter_model.bin; convert it)"
                if (self.path / "adapter_model.bin").is_file()
                else ""
            )
            raise AdapterError(f"{self.label}: no {ADAPTER_WEIGHTS}{extra}")
        self._handle = safe_open(str(weights), framework="pt")
        self.headers = {
            key: TensorHeader(
                key,
                tuple(self._handle.get_slice(key).get_shape()),
                self._handle.get_slice(key).get_dtype(),
            )
            for key in self._handle.keys()  # noqa: SIM118 (safe_open has no __iter__)
        }
        self.modules, self.overrides = index_adapter(self.config, self.headers, where=self.label)
        if not self.modules:
            raise AdapterError(f"{self.label}: the adapter has no LoRA weights")

    @property
    def base_model_class(self) -> str | None:
        mapping = self.raw_config.get("auto_mapping") or {}
        return mapping.get("base_model_class") if isinstance(mapping, dict) else None

    def tensor(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def factors(self, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of one adapted weight, in float32."""
        module = self.modules[target]
        return self.tensor(module.a_key).float(), self.tensor(module.b_key).float()

    def delta(self, target: str) -> torch.Tensor:
        """ΔW of one adapted weight, shaped like the base weight, in float32."""
        module = self.modules[target]
        a, b = self.factors(target)
        return delta_weight(a, b, scale=module.scale, transpose=module.transpose)

    def __repr__(self) -> str:
        return f"LoraAdapter({self.label!r}, {len(self.modules)} modules)"


def read_adapter_config(path: Path, *, where: str) -> dict[str, Any]:
    file = path / ADAPTER_CONFIG
    if not file.is_file():
        raise AdapterError(f"{where}: no {ADAPTER_CONFIG}; is it a PEFT adapter folder?")
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise AdapterError(f"{where}: unreadable {ADAPTER_CONFIG} ({err})") from None


__all__ = [
    "AdapterConfig",
    "LoraAdapter",
    "LoraModule",
    "delta_weight",
    "fit_problems",
    "index_adapter",
    "lora_scale",
    "parse_adapter_config",
    "pattern_value",
]
