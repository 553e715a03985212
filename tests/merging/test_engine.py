"""The merge engine end to end on tiny Llama checkpoints (streaming memory: test_streaming)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from merging import METHODS, MergeOptions, RecipeError, load_recipe, merge
from merging.errors import (
    MergeCancelled,
    OutputError,
    ShapeMismatchError,
    VocabMismatchError,
)
from merging.methods import _spare, random_stream
from tests.helpers.tiny import build_llama, state_dict
from tests.merging.method_helpers import method_parameters

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
SEED = 7


def recipe_for(name: str, models: dict[str, Path], **top: Any):
    method = METHODS.get(name)
    inputs = ["ft1", "ft2", "ft3"][: method.max_inputs or 2]
    data: dict[str, Any] = {
        "merge_method": name,
        "models": [{"model": str(models[k])} for k in inputs],
        "parameters": method_parameters(name),
        "seed": SEED,
        **top,
    }
    if method.needs_base:
        data["base_model"] = str(models["base"])
    return load_recipe(yaml.safe_dump(data))


def expected_tensors(recipe, models: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The method's pure function applied to the inputs' tensors in float32 (no gradients)."""
    method = METHODS.get(recipe.merge_method)
    base = state_dict(Path(recipe.base_model)) if method.needs_base else None
    inputs = [state_dict(Path(s.model)) for s in recipe.inputs()]
    shared = {k: v for k, v in recipe.parameters.items() if k in method.source_params.model_fields}
    params = method.params.model_validate(
        {k: v for k, v in recipe.parameters.items() if k not in shared}
    )
    sources = [method.source_params.model_validate(shared) for _ in inputs]
    out = {}
    for name in inputs[0]:
        out[name] = method.fn(
            base[name].float() if base is not None else None,
            [x[name].float() for x in inputs],
            sources,
            params,
            random_stream(recipe.seed, name),
        )
    return out


def forward(path: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 6, 7]])).logits
    assert torch.isfinite(logits).all()
    return logits


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_merges_loads_and_matches_its_function(name, tiny_models, tmp_path):
    recipe = recipe_for(name, tiny_models, dtype="float32")
    result = merge(recipe, tmp_path / "out", options=MergeOptions(device="cpu"))
    assert result.output == (tmp_path / "out").absolute()
    merged = state_dict(result.output)
    expected = expected_tensors(recipe, tiny_models)
    assert set(merged) == set(expected)
    assert result.tensors == len(expected)
    for tensor, value in expected.items():
        assert merged[tensor].dtype == torch.float32
        torch.testing.assert_close(merged[tensor], value, rtol=1e-5, atol=1e-6, msg=tensor)
    logits = forward(result.output)
    assert logits.shape == (1, 4, 384)


def test_a_finished_merge_leaves_no_spare_scratch_buffers(tiny_models, tmp_path):
    """The kernels' reused buffers (`_spare`) are dropped when a merge ends: an idle server
    process keeps none."""
    _spare.MASKS.give([np.empty(4096, np.bool_)])  # as a finished tensor would leave one
    chunk_mask = np.empty(4096, np.bool_)
    _spare.release_masks([chunk_mask])  # and a DARE chunk
    assert _spare.MASKS.spare_bytes() == 4096
    merge(recipe_for("della", tiny_models), tmp_path / "out", options=MergeOptions(device="cpu"))
    assert _spare.MASKS.spare_bytes() == 0
    assert _spare.mask_buffer(4096) is not chunk_mask  # not recycled any more


def test_bf16_output_is_the_float32_result_cast(tiny_models, tmp_path):
    recipe = recipe_for("ties", tiny_models, dtype="bfloat16")
    out = merge(recipe, tmp_path / "out", options=MergeOptions(device="cpu")).output
    merged = state_dict(out)
    for tensor, value in expected_tensors(recipe, tiny_models).items():
        assert merged[tensor].dtype == torch.bfloat16
        assert torch.equal(merged[tensor], value.to(torch.bfloat16)), tensor
    config = json.loads((out / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16"
    forward(out)


def test_shard_size_gives_several_shards_and_a_loadable_index(tiny_models, tmp_path):
    recipe = recipe_for("task_arithmetic", tiny_models)
    out = merge(recipe, tmp_path / "out", options=MergeOptions(shard_size=30_000)).output
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [s.name for s in shards]
    forward(out)


def test_progress_reaches_done_equals_total(tiny_models, tmp_path):
    events = []
    recipe = recipe_for("linear", tiny_models)
    result = merge(recipe, tmp_path / "out", options=MergeOptions(progress=events.append))
    merge_events = [e for e in events if e.stage == "merge"]
    assert [e.done for e in merge_events] == list(range(1, result.tensors + 1))
    assert all(e.total == result.tensors for e in merge_events)
    last = merge_events[-1]
    assert last.done == last.total
    assert last.bytes_done == last.bytes_total == result.bytes_written


def test_outputs_card_recipe_config_and_tokenizer(tiny_models, tmp_path):
    recipe = recipe_for("dare_ties", tiny_models, dtype="bfloat16")
    out = merge(recipe, tmp_path / "out").output
    names = set(visible(out))
    assert {"config.json", "README.md", "hubmerge_recipe.yaml", "tokenizer.json"} <= names
    assert load_recipe(out / "hubmerge_recipe.yaml") == recipe
    card = (out / "README.md").read_text()
    _, meta_text, body = card.split("---", 2)
    meta = yaml.safe_load(meta_text)
    assert "base_model" not in meta  # local paths are not Hub ids
    assert "base_model_relation" not in meta
    assert meta["library_name"] == "transformers"
    assert "dare_ties" in meta["tags"]
    assert "**dare_ties**" in body
    assert f"Seed: `{SEED}`" in body
    assert recipe.to_yaml().rstrip() in body
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)("1 plus 2")["input_ids"]


def test_card_states_the_dtype_actually_written(tmp_path):
    """Without `dtype` in the recipe the output keeps the base's dtype (bf16 here); the card
    must say so."""
    base = build_llama(tmp_path / "base", seed=0, dtype=torch.bfloat16, tokenizer=False)
    other = build_llama(tmp_path / "ft", seed=1, base=base, dtype=torch.bfloat16, tokenizer=False)
    recipe = load_recipe(
        yaml.safe_dump(
            {"merge_method": "task_arithmetic", "base_model": str(base),
             "models": [{"model": str(other)}]}
        )
    )  # fmt: skip
    out = merge(recipe, tmp_path / "out").output
    assert next(iter(state_dict(out).values())).dtype == torch.bfloat16
    card = (out / "README.md").read_text()
    assert "output dtype: `bfloat16`" in card


def test_gradient_and_filters_follow_layer_position(tiny_models, tmp_path):
    """Layer i of n reads i/(n−1); tensors outside the layers read 0; first filter wins."""
    recipe = load_recipe(
        yaml.safe_dump(
            {
                "merge_method": "slerp",
                "base_model": str(tiny_models["base"]),
                "models": [{"model": str(tiny_models["ft1"])}],
                "parameters": {
                    "t": [
                        {"filter": "self_attn", "value": [0, 1]},
                        {"filter": "mlp", "value": [1, 0]},
                        {"value": 0},
                    ]
                },
                "dtype": "float32",
            }
        )
    )
    out = merge(recipe, tmp_path / "out").output
    merged, base, other = (state_dict(p) for p in (out, tiny_models["base"], tiny_models["ft1"]))
    close = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], base[
        "model.layers.0.self_attn.q_proj.weight"], **close)  # fmt: skip
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"], other[
        "model.layers.1.self_attn.q_proj.weight"], **close)  # fmt: skip
    torch.testing.assert_close(merged["model.layers.0.mlp.up_proj.weight"], other[
        "model.layers.0.mlp.up_proj.weight"], **close)  # fmt: skip
    torch.testing.assert_close(merged["model.layers.1.mlp.up_proj.weight"], base[
        "model.layers.1.mlp.up_proj.weight"], **close)  # fmt: skip
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        torch.testing.assert_close(merged[name], base[name], **close)


def test_parameter_without_fallback_is_a_recipe_error(tiny_models, tmp_path):
    """A required parameter whose filters match no tensor must fail as a RecipeError, at load
    time or before writing, not as a pydantic error in the middle of the merge."""
    text = yaml.safe_dump(
        {
            "merge_method": "slerp",
            "base_model": str(tiny_models["base"]),
            "models": [{"model": str(tiny_models["ft1"])}],
            "parameters": {"t": [{"filter": "self_attn", "value": 0.5}]},
        }
    )
    with pytest.raises(RecipeError, match="t"):
        merge(load_recipe(text), tmp_path / "out")
    assert visible(tmp_path) == []


# ---------------------------------------------------------------- failures leave nothing


def test_cancel_mid_merge_raises_and_leaves_no_output(tiny_models, tmp_path):
    cancel = threading.Event()

    def progress(event):
        if event.stage == "merge" and event.done == 3:
            cancel.set()

    options = MergeOptions(progress=progress, cancel=cancel)
    with pytest.raises(MergeCancelled):
        merge(recipe_for("ties", tiny_models), tmp_path / "out", options=options)
    assert list(tmp_path.iterdir()) == []


CHILD = """
import pathlib, sys, time
from merging import MergeOptions, load_recipe, merge

recipe, out, marker = load_recipe(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])

def progress(event):
    if event.stage == "merge":
        marker.write_text(str(event.done))
        time.sleep(0.3)

merge(recipe, out, options=MergeOptions(progress=progress))
"""


def test_killed_merge_leaves_nothing_that_looks_finished(tiny_models, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(recipe_for("ties", tiny_models).to_yaml())
    work = tmp_path / "work"
    work.mkdir()
    destination = work / "merged"
    marker = tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(recipe_file), str(destination),
         str(marker)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text() not in ("", "1")):
            assert child.poll() is None, "child exited before it was killed"
            assert time.monotonic() < deadline, "child never started merging"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert not destination.exists()
    assert visible(work) == []  # only a hidden temporary folder may remain
    # the next merge to the same place succeeds and clears the dead writer's leftovers
    merge(recipe_for("ties", tiny_models), destination)
    assert [p.name for p in work.iterdir()] == ["merged"]


def test_unwritable_destination_is_an_output_error(tiny_models, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutputError):
        merge(recipe_for("linear", tiny_models), blocker / "out")


def test_existing_destination_is_refused_unless_overwrite(tiny_models, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        merge(recipe_for("linear", tiny_models), tmp_path / "out")
    merge(recipe_for("linear", tiny_models), tmp_path / "out", options=MergeOptions(overwrite=True))
    assert "config.json" in visible(tmp_path / "out")


@pytest.fixture(scope="module")
def odd_models(tiny_models, tmp_path_factory):
    """A copy of ft1 with one tensor reshaped, and a model with a bigger vocabulary."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("odd")
    shaped = root / "shaped"
    shaped.mkdir()
    tensors = state_dict(tiny_models["ft1"])
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(65, 32)
    save_file(tensors, shaped / "model.safetensors", metadata={"format": "pt"})
    (shaped / "config.json").write_text((tiny_models["ft1"] / "config.json").read_text())
    vocab = build_llama(root / "vocab", seed=5, vocab=400, tokenizer=False)
    return {"shaped": shaped, "vocab": vocab}


def test_shape_mismatch_names_tensor_and_shapes_before_any_output(
    tiny_models, odd_models, tmp_path
):
    recipe = recipe_for("ties", {**tiny_models, "ft2": odd_models["shaped"]})
    with pytest.raises(ShapeMismatchError) as caught:
        merge(recipe, tmp_path / "out")
    message = str(caught.value)
    assert "model.layers.1.mlp.up_proj.weight" in message
    assert "(65, 32)" in message
    assert "(64, 32)" in message
    assert list(tmp_path.iterdir()) == []


def test_vocab_mismatch_is_an_error_by_default(tiny_models, odd_models, tmp_path):
    recipe = recipe_for("task_arithmetic", {**tiny_models, "ft2": odd_models["vocab"]})
    with pytest.raises(VocabMismatchError) as caught:
        merge(recipe, tmp_path / "out")
    assert "384" in str(caught.value)
    assert "400" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("policy", "rows"), [("base", 384), ("union", 400)])
def test_vocab_policies_merge(tiny_models, odd_models, tmp_path, policy, rows):
    models = {**tiny_models, "ft2": odd_models["vocab"]}
    recipe = recipe_for("task_arithmetic", models, vocab_policy=policy, dtype="float32")
    out = merge(recipe, tmp_path / "out").output
    merged = state_dict(out)
    assert merged["model.embed_tokens.weight"].shape == (rows, 32)
    assert merged["lm_head.weight"].shape == (rows, 32)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows
    base, ft1, big = (state_dict(models[k]) for k in ("base", "ft1", "ft2"))
    name = "model.embed_tokens.weight"
    shared = base[name] + (ft1[name] - base[name]) + (big[name][:384] - base[name])
    torch.testing.assert_close(merged[name][:384], shared, rtol=1e-5, atol=1e-6)
    if policy == "union":  # rows only the big vocabulary has come from it
        torch.testing.assert_close(merged[name][384:], big[name][384:])
    assert forward(out).shape[-1] == rows
