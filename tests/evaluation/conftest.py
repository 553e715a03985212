"""Tiny local models, tokenizer and tasks for the evaluation tests.

Everything is local (model folders, jsonl data files), so no test needs the network. The
Hub's offline switches are not set here: they are read at import and would leak into
other packages' tests (the Hub tests talk to a local server).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SUBJECTS = ["cat", "dog", "bird", "fish", "horse", "mouse", "frog", "bee"]
VERBS = ["sees", "likes", "chases", "finds", "hears", "follows"]
PLACES = ["garden", "river", "house", "forest", "field", "barn"]


def synthetic_lines(count: int, *, seed: int = 0) -> list[str]:
    """Short, regular sentences plus MMLU-style scaffolding the tokenizer should know."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        a, b = rng.sample(SUBJECTS, 2)
        lines.append(f"The {a} {rng.choice(VERBS)} the {b} near the {rng.choice(PLACES)}.")
    lines += ["Question: Answer: A. B. C. D. The following are multiple choice questions"] * 20
    return lines


def build_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_lines(400), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(directory)
    return fast


def train(model, tokenizer, *, seed: int, steps: int = 40) -> None:
    """A few Adam steps on the synthetic sentences, so models are distinct but both sensible."""
    from app.demo import train_lm

    train_lm(model, tokenizer, synthetic_lines(256, seed=100 + seed), seed=seed, steps=steps,
             batch_size=16)  # fmt: skip


def build_model(directory: Path, tokenizer, *, seed: int, steps: int = 40) -> None:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    if steps:
        train(model, tokenizer, seed=seed, steps=steps)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny Llama models sharing one locally trained tokenizer.

    ``a`` and ``b`` are trained briefly from different random inits (unrelated solutions of
    the same data); ``random`` is untrained.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = build_tokenizer(root / "tokenizer")
    paths = {}
    for seed, name, steps in [(0, "a", 40), (1, "b", 40), (2, "random", 0)]:
        build_model(root / name, tokenizer, seed=seed, steps=steps)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models["a"]


TINY_TASK_YAML = """\
task: tiny_animals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def tiny_task_docs(count: int, *, seed: int = 1) -> list[dict[str, object]]:
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        a, b = rng.sample(SUBJECTS, 2)
        place = rng.choice(PLACES)
        choices = rng.sample(PLACES, 4)
        if place not in choices:
            choices[0] = place
        docs.append(
            {
                "question": f"Where does the {a} see the {b}?",
                "choices": choices,
                "answer": choices.index(place),
            }
        )
    return docs


@pytest.fixture(scope="session")
def tiny_task_dir(tmp_path_factory) -> Path:
    """An include dir with one local multiple-choice task, ``tiny_animals`` (12 docs)."""
    root = tmp_path_factory.mktemp("tiny_tasks")
    data = root / "tiny_animals.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in tiny_task_docs(12)))
    (root / "tiny_animals.yaml").write_text(TINY_TASK_YAML.format(data=data))
    return root


@pytest.fixture
def write_examples(tmp_path) -> Callable[[list[dict[str, object]]], Path]:
    def write(rows: list[dict[str, object]]) -> Path:
        path = tmp_path / "examples.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    return write
