"""LoRA adapters: parsing and ΔW (`adapter`), an adapter applied to its base as a tensor source
(`source`), adapter combinations (`combine`, `factors`), LoraHub (`lorahub`), and merging an
adapter into its base (`merge`).

Only the adapter model is imported here, so that the tensor sources can use it without pulling in
the engine; import the other parts from their modules.
"""

from merging.lora.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    AdapterConfig,
    LoraAdapter,
    LoraModule,
    delta_weight,
    fit_problems,
    index_adapter,
    lora_scale,
    parse_adapter_config,
    pattern_value,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PEFT_PREFIX",
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
