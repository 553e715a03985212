"""align_models end to end: the function check guards the output; lineage; activations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import merging.align.run as run_module
from merging.align.perms import Permutations
from merging.align.run import align_models
from merging.align.spec import RESIDUAL, model_spec
from merging.align.verify import check_function
from merging.errors import AlignmentError, OutputError
from tests.helpers.tiny import build_llama, state_dict
from tests.merging.align.helpers import build, permute_folder


def _shuffled(original: Path, destination: Path, seed: int) -> Path:
    spec = model_spec(json.loads((original / "config.json").read_text()))
    perms = Permutations.random(spec, torch.Generator().manual_seed(seed))
    return permute_folder(original, destination, perms)


def test_a_spec_bug_is_caught_and_leaves_no_output(
    family_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate a wrong spec (o_proj's columns left unpermuted while v's rows move): the
    logits change, the run fails, and neither the output nor a staging folder remains."""
    original = family_models["llama"]
    shuffled = _shuffled(original, tmp_path / "b", seed=4)
    real = run_module.tensor_axes

    def broken(spec, shapes):
        axes = real(spec, shapes)
        return {n: (RESIDUAL, None) if n.endswith("o_proj.weight") else a for n, a in axes.items()}

    monkeypatch.setattr(run_module, "tensor_axes", broken)
    with pytest.raises(AlignmentError, match="changed the function"):
        align_models(original, shuffled, tmp_path / "out", max_iter=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_check_function_passes_for_a_permuted_copy(
    family_models: dict[str, Path], tmp_path: Path
) -> None:
    original = family_models["llama_tied"]
    shuffled = _shuffled(original, tmp_path / "b", seed=5)
    check = check_function(original, shuffled, vocab=64, device=torch.device("cpu"))
    assert check.max_abs_diff <= check.tolerance


def test_existing_output_is_refused_before_any_work(
    family_models: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        align_models(family_models["llama"], family_models["llama"], tmp_path / "out")


def test_fine_tunes_of_one_base_are_called_pointless(tmp_path: Path) -> None:
    base = build_llama(tmp_path / "base", seed=0, tokenizer=False)
    tuned = build_llama(tmp_path / "ft", seed=1, base=base, scale=0.002, tokenizer=False)
    result = align_models(base, tuned, tmp_path / "out", max_iter=3)
    assert result.lineage.pointless
    assert "already aligned" in result.lineage.reason
    assert result.lineage.cosine > 0.9
    assert result.identity
    assert "already aligned" in (tmp_path / "out" / "README.md").read_text()


def test_independent_models_are_worth_aligning(tmp_path: Path) -> None:
    a = build(tmp_path / "a", "llama", seed=20)
    b = build(tmp_path / "b", "llama", seed=21)
    result = align_models(a, b, tmp_path / "out", max_iter=5)
    assert not result.lineage.pointless
    assert abs(result.lineage.cosine) < 0.2
    assert not result.identity
    assert result.final_objective > result.initial_objective


def test_activation_matching_recovers_a_permuted_copy(tmp_path: Path) -> None:
    original = build(tmp_path / "a", "qwen2", seed=7, tokenizer=True)
    shuffled = _shuffled(original, tmp_path / "b", seed=6)
    texts = tmp_path / "calib.jsonl"
    rows = [{"input": f"{i} plus {i + 1} is", "output": f" {2 * i + 1}."} for i in range(8)]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows) + "a plain line of text\n")
    align_models(original, shuffled, tmp_path / "out", method="activations", examples=texts)
    back, expected = state_dict(tmp_path / "out"), state_dict(original)
    for name, tensor in expected.items():
        assert torch.equal(back[name], tensor), name
    record = json.loads((tmp_path / "out" / "alignment.json").read_text())
    assert record["method"] == "activations"
    assert record["activations"]["texts"] == 9
