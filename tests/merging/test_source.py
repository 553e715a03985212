"""CheckpointSource: headers up front (no data read), tensors lazily, pickles refused."""

from __future__ import annotations

import json
import struct
import time

import pytest
import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import save_file

from merging.errors import CheckpointError, UnsafeCheckpointError
from merging.io.headers import TensorHeader
from merging.io.source import CheckpointSource, read_config, weight_files


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "model.embed_tokens.weight": torch.randn(10, 4, generator=gen).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=gen),
        "model.layers.1.mlp.up_proj.weight": torch.randn(8, 4, generator=gen),
        "model.norm.weight": torch.ones(4, dtype=torch.float16),
        "step": torch.tensor(7, dtype=torch.int64),
    }


@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_torch_state_dict(_state(), folder, max_shard_size=100)
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    return folder


def test_sharded_index_is_read(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    source = CheckpointSource(sharded)
    state = _state()
    assert set(source.headers) == set(state)
    for name, tensor in state.items():
        header = source.headers[name]
        assert header == TensorHeader(name, tuple(tensor.shape), header.dtype)
        assert header.nbytes == tensor.numel() * tensor.element_size()
        got = source.get(name)
        assert got.dtype == tensor.dtype
        assert torch.equal(got, tensor)
    assert source.headers["model.embed_tokens.weight"].dtype == "BF16"
    assert source.headers["model.norm.weight"].dtype == "F16"
    assert source.headers["step"].dtype == "I64"
    assert source.config == {"num_hidden_layers": 2}
    assert source.label == str(sharded)


def test_weight_files_follow_the_index(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    expected = list(dict.fromkeys(index["weight_map"].values()))
    assert [f.name for f in weight_files(sharded)] == expected


def test_missing_shard_is_named(sharded):
    victim = sorted(sharded.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"missing shards: {victim.name}"):
        CheckpointSource(sharded)


def test_unreadable_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable index"):
        CheckpointSource(tmp_path)


def _sparse_safetensors(path, name: str, shape: tuple[int, ...]) -> int:
    """A valid safetensors file whose data section is a hole: headers cost nothing to read,
    the data would cost gigabytes."""
    nbytes = 4
    for side in shape:
        nbytes *= side
    header = {name: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, nbytes]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + nbytes)
    return nbytes


def test_headers_are_read_without_reading_data(tmp_path):
    nbytes = _sparse_safetensors(tmp_path / "model.safetensors", "huge", (32768, 32768))
    assert nbytes == 4 * 2**30
    started = time.perf_counter()
    source = CheckpointSource(tmp_path)
    assert time.perf_counter() - started < 2.0
    assert source.headers == {"huge": TensorHeader("huge", (32768, 32768), "F32")}


def test_tensor_data_is_read_on_demand(tmp_path):
    """The source keeps no copy of the data: bytes changed after opening are what get sees."""
    save_file({"w": torch.zeros(4)}, tmp_path / "model.safetensors")
    source = CheckpointSource(tmp_path)
    raw = bytearray((tmp_path / "model.safetensors").read_bytes())
    raw[-16:] = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    with open(tmp_path / "model.safetensors", "r+b") as handle:  # same inode, in place
        handle.write(raw)
    assert source.get("w").tolist() == [0.0, 1.0, 2.0, 3.0]


def test_pickle_only_folder_is_refused_unless_allowed(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle") as caught:
        CheckpointSource(tmp_path)
    assert "pytorch_model.bin" in str(caught.value)
    assert isinstance(caught.value, CheckpointError)
    assert isinstance(caught.value, OSError)
    source = CheckpointSource(tmp_path, allow_pickle=True)
    assert source.headers["w"] == TensorHeader("w", (2, 3), "F32")
    assert torch.equal(source.get("w"), state["w"])
    assert torch.equal(source.get("b"), state["b"])


def test_pickle_loading_refuses_arbitrary_objects(tmp_path):
    torch.save({"w": torch.ones(1), "evil": print}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot open weights"):
        CheckpointSource(tmp_path, allow_pickle=True)


def test_safetensors_preferred_over_pickle(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    assert torch.equal(CheckpointSource(tmp_path).get("w"), torch.ones(2))


def test_adapter_weights_are_not_model_weights(tmp_path):
    save_file({"lora_A": torch.ones(2)}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        CheckpointSource(tmp_path)


def test_no_weights_and_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        CheckpointSource(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        CheckpointSource(tmp_path / "absent")


def test_corrupt_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="cannot open weights"):
        CheckpointSource(tmp_path)


def test_unknown_tensor_is_named(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    source = CheckpointSource(tmp_path, label="org/model")
    with pytest.raises(CheckpointError, match="org/model: has no tensor 'nope'"):
        source.get("nope")


def test_read_config(tmp_path):
    assert read_config(tmp_path) == {}
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"unreadable config\.json"):
        read_config(tmp_path)
