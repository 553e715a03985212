"""Weight matching: a permuted copy comes back exactly; the ascent is seeded and monotone."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from merging.align.matching import AlignProgress, weight_matching
from merging.align.perms import Permutations
from merging.align.run import align_models
from merging.align.spec import model_spec, tensor_axes
from merging.io.source import CheckpointSource
from tests.helpers.tiny import state_dict
from tests.merging.align.helpers import FAMILIES, build, permute_folder


def _spec(path: Path):
    return model_spec(json.loads((path / "config.json").read_text()))


@pytest.mark.parametrize("family", FAMILIES)
def test_randomly_permuted_copy_is_aligned_back_exactly(
    family_models: dict[str, Path], tmp_path: Path, family: str
) -> None:
    original = family_models[family]
    perms = Permutations.random(_spec(original), torch.Generator().manual_seed(1))
    shuffled = permute_folder(original, tmp_path / "shuffled", perms)
    assert not torch.equal(state_dict(shuffled)["model.norm.weight"],
                           state_dict(original)["model.norm.weight"])  # fmt: skip
    result = align_models(original, shuffled, tmp_path / "out", max_iter=10)
    back, expected = state_dict(tmp_path / "out"), state_dict(original)
    assert back.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(back[name], tensor), name
    assert result.final_objective > result.initial_objective
    assert result.check.max_abs_diff <= result.check.tolerance
    record = json.loads((tmp_path / "out" / "alignment.json").read_text())
    assert record["objective"]["sweeps"][-1]["changed"] == 0
    assert len(record["permutations"]["layers"]) == 2
    assert "Aligned model" in (tmp_path / "out" / "README.md").read_text()
    assert (tmp_path / "out" / "config.json").is_file()


def test_bf16_model_stays_bit_exact(tmp_path: Path) -> None:
    original = build(tmp_path / "a", "qwen2", seed=2, dtype=torch.bfloat16)
    perms = Permutations.random(_spec(original), torch.Generator().manual_seed(2))
    shuffled = permute_folder(original, tmp_path / "b", perms)  # float32 on disk
    bf16 = {n: t.to(torch.bfloat16) for n, t in state_dict(shuffled).items()}
    from safetensors.torch import save_file

    for file in shuffled.glob("*.safetensors"):
        file.unlink()
    (shuffled / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(bf16, shuffled / "model.safetensors", metadata={"format": "pt"})
    align_models(original, shuffled, tmp_path / "out", max_iter=10)
    back, expected = state_dict(tmp_path / "out"), state_dict(original)
    for name, tensor in expected.items():
        assert back[name].dtype == torch.bfloat16
        assert torch.equal(back[name], tensor), name


def test_independent_models_seeded_monotone_sweeps(tmp_path: Path) -> None:
    a = build(tmp_path / "a", "llama", seed=10)
    b = build(tmp_path / "b", "llama", seed=11)
    spec = _spec(a)

    def run(seed: int) -> tuple[Permutations, list[AlignProgress]]:
        source_a, source_b = CheckpointSource(a), CheckpointSource(b)
        axes = tensor_axes(spec, {n: h.shape for n, h in source_a.headers.items()})
        events: list[AlignProgress] = []
        result = weight_matching(source_a, source_b, spec, axes, max_iter=8, seed=seed,
                                 device="cpu", progress=events.append)  # fmt: skip
        objectives = [result.initial_objective] + [s.objective for s in result.sweeps]
        assert all(y >= x - 1e-6 * abs(x) for x, y in itertools.pairwise(objectives))
        assert objectives[-1] > objectives[0]
        assert [e.done for e in events] == [s.index for s in result.sweeps]
        assert all(e.stage == "align" and e.total == 8 for e in events)
        return result.permutations, events

    first, events = run(0)
    again, events_again = run(0)
    assert first.to_json() == again.to_json()
    assert [e.objective for e in events] == [e.objective for e in events_again]
    assert not first.is_identity()
