"""LoraHub: weights learned from few-shot examples beat the uniform combination; determinism."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from merging.errors import AdapterError
from merging.lora.combine import combine_adapters
from merging.lora.lorahub import (
    Example,
    encode_examples,
    few_shot_loss,
    lorahub,
    lorahub_search,
    read_examples,
)

pytest.importorskip("nevergrad")
pytest.importorskip("peft")

PROMPTS = [f"{a} plus {b} is" for a in range(6) for b in range(4)]


def train_adapter(base: Path, path: Path, answer: str, *, seed: int) -> Path:
    """A LoRA adapter briefly trained to continue every prompt with ``answer``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    rows = [Example(input=p, output=answer) for p in PROMPTS]
    (batch,) = encode_examples(tokenizer, rows, batch_size=len(rows))
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(15):
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def skills(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("skills")
    base = tiny_models["base"]
    shots = root / "shots.jsonl"
    shots.write_text(
        "".join(json.dumps({"input": p, "output": " fox"}) + "\n" for p in PROMPTS[::3])
    )
    return {
        "base": base,
        "fox": train_adapter(base, root / "fox", " fox", seed=0),
        "cat": train_adapter(base, root / "cat", " cat", seed=1),
        "shots": shots,
    }


def loss_of_adapter(base: Path, adapter: Path, shots: Path) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    batches = encode_examples(AutoTokenizer.from_pretrained(base), read_examples(shots))
    return few_shot_loss(model.eval(), batches)


def test_learned_weights_beat_uniform_and_are_deterministic(skills, tmp_path):
    steps: list[tuple[int, int, float]] = []
    adapters = [skills["fox"], skills["cat"]]
    result = lorahub_search(
        skills["base"], adapters, skills["shots"], steps=15, seed=3,
        progress=lambda *event: steps.append(event),
    )  # fmt: skip
    assert [s[:2] for s in steps] == [(i, 15) for i in range(1, 16)]
    assert [s[2] for s in steps] == result.history
    uniform = combine_adapters(adapters, tmp_path / "uniform", method="lorahub", weights=[0.5, 0.5])
    uniform_loss = loss_of_adapter(skills["base"], uniform.output, skills["shots"])
    assert result.loss < uniform_loss - 0.1
    assert result.weights[0] > result.weights[1]
    assert all(-1.5 <= w <= 1.5 for w in result.weights)
    again = lorahub_search(skills["base"], adapters, skills["shots"], steps=15, seed=3)
    assert again.weights == result.weights
    assert again.history == result.history


def test_lorahub_writes_adapter_or_merged_model(skills, tmp_path):
    from transformers import AutoModelForCausalLM

    adapters = [skills["fox"], skills["cat"]]
    result = lorahub(skills["base"], adapters, skills["shots"], tmp_path / "adapter", steps=4)
    written = loss_of_adapter(skills["base"], result.output, skills["shots"])
    assert written == pytest.approx(result.loss, rel=1e-4)
    merged = lorahub(
        skills["base"], adapters, skills["shots"], tmp_path / "merged", steps=4, merge=True
    )
    assert AutoModelForCausalLM.from_pretrained(merged.output) is not None
    assert merged.weights == result.weights


def test_cli_lorahub_and_combine(skills, tmp_path, capsys):
    from app.commands import lora

    parser = argparse.ArgumentParser()
    lora.add_parser(parser.add_subparsers(dest="command"))
    adapters = f"{skills['fox']},{skills['cat']}"
    args = parser.parse_args(
        ["lorahub", "--base", str(skills["base"]), "--adapters", adapters,
         "--examples", str(skills["shots"]), "-o", str(tmp_path / "hub"), "--steps", "3"]
    )  # fmt: skip
    assert lora.run(args) == 0
    assert "step 3/3" in capsys.readouterr().out
    assert (tmp_path / "hub" / "adapter_config.json").is_file()
    args = parser.parse_args(
        ["lora", "combine", "--adapters", adapters, "--method", "svd", "--rank", "2",
         "-o", str(tmp_path / "svd")]
    )  # fmt: skip
    assert lora.run(args) == 0
    assert "overall relative error" in capsys.readouterr().out


def test_bad_examples_are_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "x"}\n')
    with pytest.raises(AdapterError, match=r"bad\.jsonl:1"):
        read_examples(path)
