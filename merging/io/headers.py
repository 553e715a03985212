"""What safetensors headers and a config say about a checkpoint, without reading tensor data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
TORCH_TO_SAFETENSORS = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
SAFETENSORS_TO_TORCH = {v: k for k, v in TORCH_TO_SAFETENSORS.items()}


@dataclass(frozen=True)
class TensorHeader:
    """Name, shape and safetensors dtype string ("BF16", "F32", …) of one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)


@dataclass(frozen=True)
class SourceInfo:
    """Headers and config of one source, however they were obtained (disk or Hub)."""

    label: str
    headers: dict[str, TensorHeader]
    config: dict[str, Any]

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or ["?"]
        return str(archs[0])

    @property
    def parameters(self) -> int:
        return sum(h.numel for h in self.headers.values())

    @property
    def vocab_size(self) -> int | None:
        value = self.config.get("vocab_size")
        return int(value) if value is not None else None

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))
