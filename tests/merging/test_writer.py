"""ShardWriter: streamed shards read back identically, transformers' layout, atomic output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from merging.errors import OutputError
from merging.io.headers import TensorHeader
from merging.io.writer import ShardWriter, plan_shards, torch_dtype_code


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(7, 5, generator=gen).to(torch.bfloat16),
        "scale": torch.tensor(3.25),  # 0-d
        "layers.0.w": torch.randn(3, 4, generator=gen),
        "layers.0.h": torch.randn(6, generator=gen).to(torch.float16),
        "layers.1.w": torch.randn(2, 3, 2, generator=gen).to(torch.bfloat16),
        "positions": torch.arange(9, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


def _headers(tensors: dict[str, torch.Tensor]) -> list[TensorHeader]:
    return [TensorHeader(n, tuple(t.shape), torch_dtype_code(t.dtype)) for n, t in tensors.items()]


def _write(destination, tensors, **kwargs):
    with ShardWriter(destination, _headers(tensors), **kwargs) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        return writer.finish()


def _read_all(folder) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    out: dict[str, torch.Tensor] = {}
    for name in files:
        out.update(load_file(folder / name))
    return out


def _assert_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_single_shard_round_trip_of_mixed_dtypes(tmp_path):
    tensors = _tensors()
    out = _write(tmp_path / "out", tensors)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    _assert_identical(load_file(out / "model.safetensors"), tensors)
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert list(handle.keys()) == sorted(tensors)  # safetensors lists keys sorted


def test_shards_are_split_named_and_indexed_like_transformers(tmp_path):
    tensors = _tensors()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    out = _write(tmp_path / "out", tensors, max_shard_bytes=60)
    names = sorted(p.name for p in out.iterdir())
    shards = [n for n in names if n.endswith(".safetensors")]
    n = len(shards)
    assert n > 2
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": total}
    assert set(index["weight_map"]) == set(tensors)
    for shard in shards:
        stored = load_file(out / shard)
        assert {k for k, v in index["weight_map"].items() if v == shard} == set(stored)
        size = sum(t.numel() * t.element_size() for t in stored.values())
        assert size <= 60 or len(stored) == 1  # a bigger tensor gets a shard of its own
    _assert_identical(_read_all(out), tensors)


def test_layout_matches_huggingface_hub_and_transformers_loads_it(tmp_path):
    """Same file names and index as `huggingface_hub.save_torch_state_dict` (what
    transformers' save_pretrained uses), and transformers' sharded loader reads it."""
    from huggingface_hub import save_torch_state_dict
    from transformers.trainer_utils import load_sharded_checkpoint

    tensors = {f"layer.{i}.weight": torch.full((4, 4), float(i)) for i in range(5)}
    ours = _write(tmp_path / "ours", tensors, max_shard_bytes=128)
    (tmp_path / "hub").mkdir()
    save_torch_state_dict(tensors, tmp_path / "hub", max_shard_size=128)
    assert sorted(p.name for p in ours.iterdir()) == sorted(
        p.name for p in (tmp_path / "hub").iterdir()
    )
    index = "model.safetensors.index.json"
    assert json.loads((ours / index).read_text()) == json.loads(
        (tmp_path / "hub" / index).read_text()
    )
    model = torch.nn.Module()
    model.layer = torch.nn.ModuleList(torch.nn.Linear(4, 4, bias=False) for _ in range(5))
    load_sharded_checkpoint(model, str(ours))
    for i in range(5):
        assert torch.equal(model.layer[i].weight, torch.full((4, 4), float(i)))


def test_plan_shards_order_and_oversized_tensors():
    headers = [
        TensorHeader("a", (10,), "F32"),  # 40 bytes
        TensorHeader("big", (100,), "F32"),  # 400 bytes, over the cap
        TensorHeader("b", (5,), "F32"),
        TensorHeader("c", (5,), "F32"),
        TensorHeader("d", (5,), "F32"),
    ]
    plan = plan_shards(headers, 50)
    assert [[h.name for h in s.tensors] for s in plan] == [["a"], ["big"], ["b", "c"], ["d"]]
    assert [s.file for s in plan] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert plan_shards(headers, 10**9)[0].file == "model.safetensors"


def test_refuses_an_existing_destination(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        ShardWriter(tmp_path / "out", _headers(_tensors()))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _fail_midway(destination, tensors, count, **kwargs):
    """Write ``count`` tensors inside the writer's `with`, then raise."""
    with ShardWriter(destination, _headers(tensors), **kwargs) as writer:
        for name, tensor in list(tensors.items())[:count]:
            writer.write(name, tensor)
        raise RuntimeError("boom")


def test_overwrite_replaces_only_on_success(tmp_path):
    tensors = {"w": torch.ones(2)}
    _write(tmp_path / "out", tensors)
    with pytest.raises(RuntimeError, match="boom"):
        _fail_midway(tmp_path / "out", {"w": torch.zeros(2)}, 1, overwrite=True)
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["w"], torch.ones(2))
    _write(tmp_path / "out", {"w": torch.zeros(2)}, overwrite=True)
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_exception_inside_with_leaves_no_destination_and_no_temp_dir(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        _fail_midway(tmp_path / "out", _tensors(), 3, max_shard_bytes=60)
    assert list(tmp_path.iterdir()) == []


def test_leaving_the_with_without_finish_leaves_nothing(tmp_path):
    tensors = {"w": torch.ones(2)}
    with ShardWriter(tmp_path / "out", _headers(tensors)) as writer:
        writer.write("w", tensors["w"])
    assert list(tmp_path.iterdir()) == []


def test_finish_refuses_an_incomplete_output(tmp_path):
    tensors = _tensors()
    with ShardWriter(tmp_path / "out", _headers(tensors)) as writer:
        writer.write("embed.weight", tensors["embed.weight"])
        with pytest.raises(OutputError, match="'scale' and later"):
            writer.finish()
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_dir_of_a_dead_process_is_cleaned(tmp_path):
    stale = tmp_path / f".out.hubmerge-tmp-{_dead_pid()}-7f00"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    alive = tmp_path / f".out.hubmerge-tmp-{os.getpid()}-1234"  # a live writer's: kept
    alive.mkdir()
    other = tmp_path / f".other.hubmerge-tmp-{_dead_pid()}-1"  # another destination's: kept
    other.mkdir()
    _write(tmp_path / "out", {"w": torch.ones(1)})
    assert not stale.exists()
    assert alive.exists()
    assert other.exists()


def test_out_of_order_write_raises(tmp_path):
    tensors = _tensors()
    with (
        ShardWriter(tmp_path / "out", _headers(tensors)) as writer,
        pytest.raises(OutputError, match=r"expected tensor 'embed\.weight', got 'scale'"),
    ):
        writer.write("scale", tensors["scale"])
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_write_raises(tmp_path):
    with (
        ShardWriter(tmp_path / "out", [TensorHeader("w", (2, 3), "F32")]) as writer,
        pytest.raises(OutputError, match=r"planned shape \(2, 3\)"),
    ):
        writer.write("w", torch.zeros(3, 2))


@pytest.mark.parametrize(
    ("planned", "given"),
    [
        ("F32", torch.float16),
        ("BF16", torch.float32),
        ("F16", torch.bfloat16),  # same size, different dtype
        ("BF16", torch.float16),
        ("F32", torch.int32),
    ],
)
def test_wrong_dtype_write_raises(tmp_path, planned, given):
    with (
        ShardWriter(tmp_path / "out", [TensorHeader("w", (2, 3), planned)]) as writer,
        pytest.raises(OutputError, match="planned dtype"),
    ):
        writer.write("w", torch.zeros(2, 3, dtype=given))


def test_writing_past_the_plan_raises_output_error(tmp_path):
    with ShardWriter(tmp_path / "out", [TensorHeader("w", (1,), "F32")]) as writer:
        writer.write("w", torch.zeros(1))
        with pytest.raises(OutputError):
            writer.write("extra", torch.zeros(1))


def test_unwritable_parent_gives_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot write under"):
        ShardWriter(blocker / "out", [TensorHeader("w", (1,), "F32")])


def test_extra_files_land_in_the_output(tmp_path):
    source = tmp_path / "gen.json"
    source.write_text("{}")
    with ShardWriter(tmp_path / "out", [TensorHeader("w", (1,), "F32")]) as writer:
        writer.write("w", torch.zeros(1))
        writer.add_file("README.md", "# card")
        writer.add_file("blob.bin", b"\x00\x01")
        writer.copy_file(source, "generation_config.json")
        out = writer.finish()
    assert (out / "README.md").read_text() == "# card"
    assert (out / "blob.bin").read_bytes() == b"\x00\x01"
    assert (out / "generation_config.json").read_text() == "{}"


def test_bytes_written_and_total(tmp_path):
    tensors = _tensors()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with ShardWriter(tmp_path / "out", _headers(tensors)) as writer:
        assert writer.total_bytes == total
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        assert writer.bytes_written == total
        writer.finish()
