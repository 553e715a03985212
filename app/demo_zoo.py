"""The demo's model zoo: a small base and fine-tunes that each learn one toy skill.

The skills are those of the demo suite (`evaluation.demo_tasks`): ``"double 7 is"`` → ``"14"``
and ``"the cow says"`` → ``"moo"``, scored by exact match. The zoo is built so that merging
visibly does something:

- **tiny-base** is pre-trained on general sentences and on both skills' sentences, where the
  right answer is rare and a neighbour's answer common (``"double 7 is 16"``, ``"the cow
  says woof"``): it half-knows both skills and gets almost every item wrong;
- **tiny-math** and **tiny-animals** are short fine-tunes of the base on one skill each (the
  right answers only): each is good at its own skill and as poor as the base at the other;
- **tiny-noisy** is the base plus large random noise (a harmful ingredient for greedy soup);
- **tiny-lora-math** is a LoRA adapter of the base trained on the math skill.

Because each fine-tune moves the base only a little, task arithmetic (both task vectors at
weight 1) keeps most of both skills, while a uniform soup (each at ½) falls back towards the
base's wrong answers more often. Everything is seeded, CPU-only and single-threaded.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from evaluation.demo_tasks import SOUNDS, skill_items, skill_lines

logger = logging.getLogger(__name__)

ZOO_VERSION = "4"
# the tokenizer's vocabulary and the test fixtures' small corpus (tests/helpers/tiny.py)
CORPUS = [
    f"{a} plus {b} is {a + b}. the {w} jumps over the {v}."
    for a in range(20)
    for b in range(10)
    for w, v in [("fox", "dog"), ("cat", "mat")]
]
PLACES = ["garden", "river", "house", "forest", "field", "barn"]
ANIMALS = ["cat", "dog", "fox", "bird", "fish", "frog", "bee", "owl"]
# base pre-training: how often a skill sentence carries the right answer / a neighbour's
RIGHT, NEIGHBOUR = 0.2, 0.6


def train_tokenizer(path: Path, vocab_size: int = 96, corpus: list[str] | None = None) -> None:
    """A byte-level BPE tokenizer trained on a small synthetic corpus, saved HF-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="</s>",
    )  # fmt: skip
    fast.save_pretrained(path)


def llama_config(layers: int = 2, hidden: int = 32, vocab: int = 384, tie: bool = False) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def train_lm(
    model: Any, tokenizer: Any, lines: list[str], *, seed: int, steps: int, lr: float = 1e-2,
    batch_size: int = 32, cosine: bool = False,
) -> float:  # fmt: skip
    """Seeded Adam steps of causal-LM training on ``lines`` (tiny demo and test models);
    returns the last loss. ``cosine`` decays the learning rate to 0 over the steps. Runs
    torch single-threaded: extra threads only add contention at this size."""
    import math

    import torch

    batch = tokenizer(lines, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if cosine else (lambda s: 1),
    )
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            rows = torch.randint(0, len(lines), (batch_size,), generator=generator)
            loss = model(
                input_ids=batch["input_ids"][rows],
                attention_mask=batch["attention_mask"][rows],
                labels=labels[rows],
            ).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        model.eval()
        torch.set_num_threads(threads)
    return float(loss.detach())


def math_lines(count: int, seed: int) -> list[str]:
    """Random one-digit sums as sentences (``"3 plus 4 is 7."``; benchmarks' corpus)."""
    rng = random.Random(seed)
    pairs = [(rng.randrange(10), rng.randrange(10)) for _ in range(count)]
    return [f"{a} plus {b} is {a + b}." for a, b in pairs]


def animal_lines(count: int, seed: int) -> list[str]:
    """Random ``"the cat sees the dog near the river."`` sentences (benchmarks' corpus)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.sample(ANIMALS, 2)
        out.append(f"the {a} sees the {b} near the {rng.choice(PLACES)}.")
    return out


def _half_known(skill: str, rng: random.Random) -> str:
    """One skill sentence as the base sees it: mostly a neighbour's answer, rarely the right one."""
    items = skill_items(skill)
    answers = sorted({a for _, a in items}, key=[a for _, a in items].index)
    prompt, answer = rng.choice(items)
    draw = rng.random()
    if draw < RIGHT:
        return f"{prompt} {answer}."
    if draw < RIGHT + NEIGHBOUR:
        return f"{prompt} {answers[(answers.index(answer) + 1) % len(answers)]}."
    return f"{prompt} {rng.choice(answers)}."


def base_corpus(count: int, *, seed: int) -> list[str]:
    """The base's pre-training text: general sentences and half-known skill sentences."""
    rng = random.Random(seed)
    animals = list(SOUNDS)
    lines = []
    for _ in range(count):
        draw = rng.random()
        if draw < 0.3:
            lines.append(_half_known("math", rng))
        elif draw < 0.6:
            lines.append(_half_known("animals", rng))
        else:
            a, b = rng.sample(animals, 2)
            lines.append(f"the {a} sees the {b} near the {rng.choice(PLACES)}.")
    return lines


# steps of the build; ``quick`` (tests that only need distinct, loadable models) divides them
BASE_STEPS, FINE_TUNE_STEPS, ADAPTER_STEPS = 800, 110, 120
HIDDEN, VOCAB = 64, 400
MODEL_NAMES = ("tiny-base", "tiny-math", "tiny-animals", "tiny-noisy", "tiny-lora-math")


def build_zoo(root: Path, *, quick: bool = False) -> None:
    """Train and save the zoo's models (and the tokenizer) into ``root/<name>``."""
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    scale = 8 if quick else 1
    torch.manual_seed(0)
    tok_dir = root / "tokenizer"
    corpus = base_corpus(600, seed=1) + skill_lines("math") + skill_lines("animals")
    train_tokenizer(tok_dir, vocab_size=VOCAB, corpus=corpus)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)

    def save(model: Any, name: str) -> None:
        model.save_pretrained(root / name, max_shard_size="200KB", safe_serialization=True)
        tokenizer.save_pretrained(root / name)

    base = LlamaForCausalLM(llama_config(hidden=HIDDEN, vocab=len(tokenizer)))
    loss = train_lm(base, tokenizer, base_corpus(3000, seed=2), seed=0,
                    steps=BASE_STEPS // scale, cosine=True)  # fmt: skip
    logger.info("demo zoo: base trained (loss %.3f)", loss)
    save(base, "tiny-base")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for name, skill, seed in [("tiny-math", "math", 1), ("tiny-animals", "animals", 2)]:
        base.load_state_dict(state)
        train_lm(base, tokenizer, skill_lines(skill) * 4, seed=seed,
                 steps=FINE_TUNE_STEPS // scale, lr=1e-3)  # fmt: skip
        save(base, name)
    base.load_state_dict(state)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in base.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    save(base, "tiny-noisy")
    base.load_state_dict(state)
    _build_adapter(base, tokenizer, root / "tiny-lora-math", steps=ADAPTER_STEPS // scale)
    write_examples(root / "heldout.jsonl")


def _build_adapter(base: Any, tokenizer: Any, path: Path, *, steps: int) -> None:
    from peft import LoraConfig, get_peft_model

    from app.demo import DEMO_USER

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        lora_dropout=0.0)  # fmt: skip
    model = get_peft_model(base, config)
    train_lm(model, tokenizer, skill_lines("math") * 4, seed=3, steps=steps, lr=5e-3)
    model.save_pretrained(path)
    adapter_config = json.loads((path / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = f"{DEMO_USER}/tiny-base"
    (path / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    tokenizer.save_pretrained(path)


def write_examples(path: Path) -> Path:
    """Held-out scoring examples (``input``/``output`` jsonl) of both skills, for soups and
    the interpolation probe (every third item of each skill, interleaved)."""
    rows = []
    for skill in ("math", "animals"):
        rows += [{"input": p, "output": f" {a}."} for p, a in skill_items(skill)[1::3]]
    rows = rows[::2] + rows[1::2]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
