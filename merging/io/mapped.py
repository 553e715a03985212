"""A safetensors file mapped into memory, whose pages are handed back tensor by tensor.

`safetensors.safe_open` maps the file too, but every page a read touched stays resident until
the file is closed, so a streamed merge's resident memory grows with the shard size (shards
are 2-10 GB, one open per source). This reader maps the file copy-on-write (it is never
written), views each tensor in place with `torch.frombuffer` (no copy), and `drop` tells the
kernel that a merged tensor's pages are no longer needed (``madvise(MADV_DONTNEED)``): they
leave the process's resident set and stay in the page cache. Resident memory is then the
tensors in flight, whatever the shard size.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
length, a JSON header mapping names to ``dtype``, ``shape`` and ``data_offsets`` (relative to
the end of the header), then the data.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import torch

from merging.errors import CheckpointError
from merging.io.headers import (
    DTYPE_BYTES,
    SAFETENSORS_TO_TORCH,
    TORCH_TO_SAFETENSORS,
    TensorHeader,
)

PAGE = mmap.PAGESIZE
DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # None where the OS has no madvise (Windows)
MAX_HEADER = 100_000_000  # the format's own limit on the JSON header


class MappedSafetensors:
    """Tensors of one ``.safetensors`` file, viewed from a private memory map.

    Raises:
        `CheckpointError`: the file is not a well-formed safetensors file.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            with open(file, "rb") as handle:
                size = handle.seek(0, 2)
                handle.seek(0)
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > min(MAX_HEADER, size - 8):
                    raise ValueError(f"header length {length} exceeds the file")
                header = json.loads(handle.read(length))
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        except (OSError, ValueError, struct.error) as err:
            message = f"{file}: cannot open weights: not a safetensors file ({err})"
            raise CheckpointError(message) from None
        self._start = 8 + length
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            self._entries[name] = self._entry(name, meta, size - self._start)

    def _entry(
        self, name: str, meta: dict, data_size: int
    ) -> tuple[torch.dtype, tuple[int, ...], int, int]:
        try:
            dtype, shape = meta["dtype"], tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.file}: malformed header entry for {name!r}") from None
        if dtype not in SAFETENSORS_TO_TORCH:
            raise CheckpointError(f"{self.file}: {name!r} has unsupported dtype {dtype}")
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if not 0 <= begin <= end <= data_size or end - begin != expected:
            raise CheckpointError(
                f"{self.file}: {name!r} has data offsets [{begin}, {end}) that do not fit its "
                f"shape {list(shape)} ({dtype}) inside the file"
            )
        return SAFETENSORS_TO_TORCH[dtype], shape, begin, end

    def headers(self) -> list[TensorHeader]:
        return [
            TensorHeader(name, shape, TORCH_TO_SAFETENSORS[dtype])
            for name, (dtype, shape, _, _) in self._entries.items()
        ]

    def tensor(self, name: str) -> torch.Tensor:
        """A zero-copy view of ``name`` (valid until the map is garbage-collected)."""
        dtype, shape, begin, end = self._entries[name]
        if end == begin or self._map is None:
            return torch.empty(shape, dtype=dtype)
        count = (end - begin) // dtype.itemsize
        flat = torch.frombuffer(self._map, dtype=dtype, count=count, offset=self._start + begin)
        return flat.view(shape)

    def drop(self, name: str) -> None:
        """Hand ``name``'s pages back (re-read from the file if touched again: never wrong)."""
        _, _, begin, end = self._entries[name]
        if self._map is None or end == begin or DONTNEED is None:
            return
        first = (self._start + begin) // PAGE * PAGE
        self._map.madvise(DONTNEED, first, self._start + end - first)
