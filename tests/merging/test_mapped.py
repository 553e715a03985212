"""The memory-mapped safetensors reader against safetensors' own reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.errors import CheckpointError
from merging.io.mapped import MappedSafetensors


def _open(file: Path) -> MappedSafetensors:
    return MappedSafetensors(file)


def test_tensors_equal_what_safetensors_reads(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "f32": torch.randn(7, generator=g),
        "f16": torch.randn(2, 2, 2, generator=g).half(),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    mapped = _open(tmp_path / "m.safetensors")
    reference = load_file(tmp_path / "m.safetensors")
    headers = {h.name: h for h in mapped.headers()}
    assert set(headers) == set(tensors)
    for name, expected in reference.items():
        got = mapped.tensor(name)
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected), name
        assert headers[name].shape == tuple(expected.shape)
        mapped.drop(name)
        assert torch.equal(got, expected), f"{name} after its pages were dropped"


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status RssFile")


def test_drop_hands_the_pages_back(tmp_path):
    save_file({"big": torch.ones(24 << 20, dtype=torch.uint8)}, tmp_path / "m.safetensors")
    mapped = _open(tmp_path / "m.safetensors")
    big = mapped.tensor("big")
    before = _rss_file()
    assert int(big[::4096].sum()) == 6 << 10  # touch every page
    touched = _rss_file()
    mapped.drop("big")
    dropped = _rss_file()
    assert touched - before > 20 << 20
    assert touched - dropped > 20 << 20
    assert int(big[::4096].sum()) == 6 << 10  # still readable: pages come back from the file


def _write_raw(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_offsets_that_do_not_fit_the_shape_are_refused(tmp_path):
    file = tmp_path / "m.safetensors"
    _write_raw(file, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(16))
    with pytest.raises(CheckpointError, match="'w' has data offsets"):
        _open(file)
    _write_raw(file, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8))
    with pytest.raises(CheckpointError, match="inside the file"):
        _open(file)


def test_unknown_dtype_and_bad_json_are_refused(tmp_path):
    file = tmp_path / "m.safetensors"
    _write_raw(file, {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1))
    with pytest.raises(CheckpointError, match="unsupported dtype F4"):
        _open(file)
    file.write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(CheckpointError, match="cannot open weights"):
        _open(file)
