"""Write a merged model: streamed safetensors shards into a temporary folder, renamed at the end.

Because the engine knows every output tensor's name, shape and dtype before it computes one,
the writer lays out the shards up front and writes each shard's header first, then appends
tensor bytes as they arrive. Memory never holds more than the tensor being written; a shard
never needs to be buffered. (The layout is the documented safetensors format: an 8-byte
little-endian header length, a JSON header with ``data_offsets``, then the raw bytes.)

Atomicity: everything goes to ``.<name>.hubmerge-tmp-<pid>`` beside the destination, and only a
complete folder is renamed to the destination. A killed process leaves a hidden temporary
folder that never looks like a model; the next writer aimed at the same place removes it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from merging.errors import OutputError
from merging.io.headers import DTYPE_BYTES, TORCH_TO_SAFETENSORS, TensorHeader

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 5_000_000_000
_TMP_MARK = ".hubmerge-tmp-"


@dataclass(frozen=True)
class ShardPlan:
    file: str
    tensors: tuple[TensorHeader, ...]


def plan_shards(tensors: list[TensorHeader], max_shard_bytes: int) -> list[ShardPlan]:
    """Split tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets
    a shard of its own). Files are named as transformers names them."""
    groups: list[list[TensorHeader]] = [[]]
    size = 0
    for header in tensors:
        if groups[-1] and size + header.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(header)
        size += header.nbytes
    if len(groups) == 1:
        return [ShardPlan("model.safetensors", tuple(groups[0]))]
    n = len(groups)
    return [
        ShardPlan(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(g))
        for i, g in enumerate(groups)
    ]


def _header_bytes(shard: ShardPlan, metadata: dict[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for header in shard.tensors:
        end = offset + header.nbytes
        entries[header.name] = {
            "dtype": header.dtype,
            "shape": list(header.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(destination: Path) -> None:
    """Remove temporary folders of earlier, dead writers aimed at ``destination``."""
    prefix = f".{destination.name}{_TMP_MARK}"
    for candidate in destination.parent.glob(prefix + "*"):
        pid_text = candidate.name.removeprefix(prefix).split("-")[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            logger.info("removing stale partial output %s", candidate)
            shutil.rmtree(candidate, ignore_errors=True)


class ShardWriter:
    """Stream tensors into size-capped shards; `finish` makes the output appear atomically.

    Args:
        destination (`Path`): the final model folder; must not exist unless ``overwrite``.
        tensors (`list[TensorHeader]`): every output tensor, in the order they will be written.
        max_shard_bytes (`int`, *optional*): shard size cap (default 5 GB, as transformers).
        overwrite (`bool`, *optional*): replace an existing destination on success.

    Use as a context manager: leaving it with an exception removes the temporary folder.
    """

    def __init__(
        self,
        destination: Path | str,
        tensors: list[TensorHeader],
        *,
        max_shard_bytes: int = DEFAULT_SHARD_SIZE,
        overwrite: bool = False,
    ) -> None:
        self.destination = Path(destination).absolute()
        if self.destination.exists() and not overwrite:
            raise OutputError(f"{self.destination} already exists (--overwrite replaces it)")
        self.overwrite = overwrite
        self.shards = plan_shards(tensors, max_shard_bytes)
        self._shard_of = {h.name: i for i, s in enumerate(self.shards) for h in s.tensors}
        self._expected = [h for s in self.shards for h in s.tensors]
        self._next = 0
        self._file: BinaryIO | None = None
        self._file_index = -1
        parent = self.destination.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.destination)
            self.tmp = parent / f".{self.destination.name}{_TMP_MARK}{os.getpid()}-{id(self):x}"
            self.tmp.mkdir()
        except OSError as err:
            raise OutputError(f"cannot write under {parent}: {err.strerror}") from None
        self.bytes_written = 0

    @property
    def total_bytes(self) -> int:
        return sum(h.nbytes for h in self._expected)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; tensors must come in the planned order, dtype and shape."""
        if self._next >= len(self._expected):
            raise OutputError(f"unexpected tensor {name!r} after the last planned one")
        expected = self._expected[self._next]
        if name != expected.name:
            raise OutputError(f"writer expected tensor {expected.name!r}, got {name!r}")
        if tuple(tensor.shape) != expected.shape:
            raise OutputError(f"{name}: planned shape {expected.shape}, got {tuple(tensor.shape)}")
        if torch_dtype_code(tensor.dtype) != expected.dtype:
            raise OutputError(f"{name}: planned dtype {expected.dtype}, got {tensor.dtype}")
        shard_index = self._shard_of[name]
        if shard_index != self._file_index:
            self._open_shard(shard_index)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._guard(lambda: self._file.write(data.numpy().data))  # type: ignore[union-attr]
        self.bytes_written += data.numel()
        self._next += 1

    def _open_shard(self, index: int) -> None:
        self._close_file()
        shard = self.shards[index]
        self._file = self._guard(lambda: open(self.tmp / shard.file, "wb"))  # noqa: SIM115
        self._file_index = index
        self._guard(lambda: self._file.write(_header_bytes(shard, {"format": "pt"})))  # type: ignore[union-attr]

    def _close_file(self) -> None:
        if self._file is not None:
            self._guard(self._file.close)
            self._file = None

    def _guard(self, action: Any) -> Any:
        try:
            return action()
        except OSError as err:
            if err.errno == errno.ENOSPC:
                free = shutil.disk_usage(self.tmp).free
                raise OutputError(
                    f"disk full while writing {self.destination}: the output needs "
                    f"{self.total_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
                ) from None
            raise OutputError(f"cannot write {self.destination}: {err.strerror}") from None

    def add_file(self, name: str, content: str | bytes) -> None:
        """Write an extra file (config, card, recipe) into the output."""
        data = content.encode() if isinstance(content, str) else content
        self._guard(lambda: (self.tmp / name).write_bytes(data))

    def copy_file(self, source: Path, name: str | None = None) -> None:
        self._guard(lambda: shutil.copyfile(source, self.tmp / (name or source.name)))

    def finish(self) -> Path:
        """Close the last shard, write the index, and rename the folder into place."""
        if self._next != len(self._expected):
            missing = self._expected[self._next].name
            raise OutputError(f"output incomplete: tensor {missing!r} and later were not written")
        self._close_file()
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {h.name: s.file for s in self.shards for h in s.tensors},
            }
            self.add_file("model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        old = None
        if self.destination.exists():
            old = self.destination.with_name(f".{self.destination.name}.hubmerge-old-{os.getpid()}")
            self._guard(lambda: os.rename(self.destination, old))
        self._guard(lambda: os.rename(self.tmp, self.destination))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.destination

    def abort(self) -> None:
        with contextlib.suppress(OSError, OutputError):
            self._close_file()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


def torch_dtype_code(dtype: torch.dtype) -> str:
    """Safetensors dtype string of a torch dtype."""
    return TORCH_TO_SAFETENSORS[dtype]


__all__ = ["DEFAULT_SHARD_SIZE", "DTYPE_BYTES", "ShardWriter", "plan_shards", "torch_dtype_code"]
