"""``hubmerge align`` (app/commands/align.py): sweeps, the barrier before/after, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.cli import main
from merging.align.perms import Permutations
from merging.align.spec import model_spec
from tests.merging.align.helpers import build_trained, permute_folder


@pytest.mark.slow
def test_align_command_prints_sweeps_and_both_barriers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    a = build_trained(tmp_path / "a", seed=0)
    spec = model_spec(json.loads((a / "config.json").read_text()))
    shuffle = Permutations.random(spec, torch.Generator().manual_seed(1))
    b = permute_folder(a, tmp_path / "b", shuffle)
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps({"input": f"{i} plus 1 is", "output": f" {i + 1}."}) + "\n"
                             for i in range(6)))  # fmt: skip
    out = tmp_path / "out"
    code = main(["align", "--reference", str(a), "--model", str(b), "-o", str(out),
                 "--max-iter", "5", "--probe", str(probe)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "sweep 1: objective" in printed
    before = float(printed.split("loss barrier A → B:")[1].split()[0])
    after = float(printed.split("loss barrier A → aligned B:")[1].split()[0])
    assert after == pytest.approx(0.0, abs=1e-5)  # aligned B is A: a flat line
    assert before > after
    record = json.loads((out / "alignment.json").read_text())
    assert record["barrier"]["before"] == pytest.approx(before, abs=1e-4)
    assert (out / "barrier.png").stat().st_size > 1000


def test_align_command_refuses_other_architectures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
        (folder / "config.json").write_text(json.dumps(config))
        save_file({"wte.weight": torch.zeros(4, 4)}, folder / "model.safetensors")
    code = main(["align", "--reference", str(tmp_path / "a"), "--model", str(tmp_path / "b"),
                 "-o", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "alignment supports Llama, Mistral and Qwen2" in err
    assert "'gpt2'" in err
    assert not (tmp_path / "out").exists()
