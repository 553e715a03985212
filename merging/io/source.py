"""Read checkpoints tensor by tensor: an index built from headers, data read lazily (mmap).

safetensors files are read through `MappedSafetensors`, which can hand a merged tensor's
pages back at once (`release`); opted-in pickles through ``torch.load(mmap=True)``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import torch

from merging.errors import CheckpointError, UnsafeCheckpointError
from merging.io.headers import TORCH_TO_SAFETENSORS, TensorHeader
from merging.io.mapped import MappedSafetensors

logger = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


class TensorSource(Protocol):
    """Anything the engine can merge from: headers up front, tensors on demand."""

    label: str
    headers: dict[str, TensorHeader]
    config: dict[str, Any]

    def get(self, name: str) -> torch.Tensor: ...


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a model directory, or ``{}`` when it has none."""
    file = path / "config.json"
    if not file.is_file():
        return {}
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable config.json ({err})") from None


def weight_files(path: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a model directory, safetensors first.

    Raises:
        `UnsafeCheckpointError`: only pickle weights exist and ``allow_pickle`` is off.
        `CheckpointError`: no weights at all.
    """
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    index = path / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{index}: unreadable index ({err})") from None
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: index lists missing shards: {', '.join(missing)}")
        return files
    safe = sorted(path.glob("*.safetensors"))
    safe = [f for f in safe if not f.name.startswith("adapter_model")]
    if safe:
        return safe
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if pickles and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{path} has only PyTorch pickle weights ({pickles[0].name}); pickles can run code "
            "when loaded. Convert it to safetensors, or set `allow_pickle: true` in the recipe "
            "to load it with torch.load(weights_only=True)."
        )
    if pickles:
        return pickles
    raise CheckpointError(f"{path}: no *.safetensors (or pytorch_model*.bin) weights found")


class CheckpointSource:
    """A model directory read lazily: headers from every shard, tensors memory-mapped on demand.

    Args:
        path (`Path`): local model directory.
        allow_pickle (`bool`, *optional*): accept ``pytorch_model*.bin`` (``weights_only=True``).
        label (`str`, *optional*): how messages name this source (default: the path).
    """

    def __init__(self, path: Path | str, *, allow_pickle: bool = False, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(self.path)
        self.config = read_config(self.path)
        self.headers: dict[str, TensorHeader] = {}
        self._file_of: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._lock = threading.Lock()
        self._unread: Counter[Path] = Counter()
        for file in weight_files(self.path, allow_pickle=allow_pickle):
            for header in self._read_headers(file):
                self.headers[header.name] = header
                self._file_of[header.name] = file

    def _open(self, file: Path) -> Any:
        with self._lock:
            return self._open_locked(file)

    def _open_locked(self, file: Path) -> Any:
        handle = self._handles.get(file)
        if handle is None:
            try:
                if file.suffix == ".bin":
                    handle = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                else:
                    handle = MappedSafetensors(file)
            except CheckpointError:
                raise
            except Exception as err:  # corrupt files raise many types
                raise CheckpointError(f"{file}: cannot open weights ({err})") from err
            self._handles[file] = handle
        return handle

    def _read_headers(self, file: Path) -> list[TensorHeader]:
        handle = self._open(file)
        if file.suffix == ".bin":
            return [
                TensorHeader(name, tuple(t.shape), TORCH_TO_SAFETENSORS[t.dtype])
                for name, t in handle.items()
            ]
        return handle.headers()

    def get(self, name: str) -> torch.Tensor:
        try:
            file = self._file_of[name]
        except KeyError:
            raise CheckpointError(f"{self.label}: has no tensor {name!r}") from None
        handle = self._open(file)
        return handle[name] if file.suffix == ".bin" else handle.tensor(name)

    def expect(self, names: list[str]) -> None:
        """Say which tensors will be read (once each), so `release` can unmap finished shards."""
        with self._lock:
            self._unread = Counter(self._file_of[n] for n in names if n in self._file_of)

    def release(self, name: str) -> None:
        """A tensor is no longer needed: its pages leave the process's resident memory, and a
        shard whose expected tensors are all done is closed."""
        file = self._file_of.get(name)
        with self._lock:
            if file is None or self._unread[file] <= 0:
                return
            handle = self._handles.get(file)
            if isinstance(handle, MappedSafetensors):
                handle.drop(name)
            self._unread[file] -= 1
            if self._unread[file] == 0:
                self._handles.pop(file, None)

    def __repr__(self) -> str:
        return f"CheckpointSource({self.label!r}, {len(self.headers)} tensors)"
