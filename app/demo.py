"""The offline demo: tiny models built locally, a local Hub server seeded with them.

``hubmerge serve --demo`` calls `start_demo`, which

1. builds (once, cached under ``<data dir>/demo/models``) a tokenizer trained on a small
   synthetic corpus, a tiny Llama base trained on it, fine-tunes specialised on arithmetic
   and on animal sentences, a harmful "noisy" fine-tune (for the greedy-soup demo) and a
   LoRA adapter;
2. starts the local Hub server of `app.hub_server` on 127.0.0.1 with its repositories under
   ``<data dir>/demo/hub`` and seeds it with those models (public repos under ``demo/``);
3. writes a tiny lm-evaluation-harness task (``hubmerge_demo``) and held-out examples,
   and registers the ``demo`` suite.

Everything is seeded and CPU-only; a cold build takes a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_VERSION = "1"
DEMO_TOKEN = "hf_demo_local_token"
DEMO_USER = "demo"
DEMO_TASK = "hubmerge_demo"
DEMO_SUITE = "demo"

CORPUS = [
    f"{a} plus {b} is {a + b}. the {w} jumps over the {v}."
    for a in range(20)
    for b in range(10)
    for w, v in [("fox", "dog"), ("cat", "mat")]
]
ANIMALS = ["cat", "dog", "fox", "bird", "fish", "frog", "bee", "owl"]
PLACES = ["garden", "river", "house", "forest", "field", "barn"]


def math_lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{a} plus {b} is {a + b}." for a, b in ((rng.randrange(10), rng.randrange(10))
                                                    for _ in range(count))]  # fmt: skip


def animal_lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.sample(ANIMALS, 2)
        out.append(f"the {a} sees the {b} near the {rng.choice(PLACES)}.")
    return out


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


def llama_config(layers: int = 2, hidden: int = 32, vocab: int = 384, tie: bool = False):
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
    model, tokenizer, lines: list[str], *, seed: int, steps: int, lr: float = 1e-2,
    batch_size: int = 32,
) -> float:  # fmt: skip
    """A few seeded Adam steps of causal-LM training on ``lines`` (tiny demo and test models);
    returns the last loss. Runs torch single-threaded: extra threads only add contention."""
    import torch

    batch = tokenizer(lines, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
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
    finally:
        model.eval()
        torch.set_num_threads(threads)
    return float(loss.detach())


@dataclass(frozen=True)
class DemoModels:
    """Local folders of the demo models (name → folder) and of the evaluation data."""

    root: Path
    models: dict[str, Path]
    task_dir: Path
    examples: Path


MODEL_NAMES = ("tiny-base", "tiny-math", "tiny-animals", "tiny-noisy", "tiny-lora-math")


def build_demo_models(root: Path, *, steps: int = 80) -> DemoModels:
    """Build the demo models under ``root`` (skipped when a complete build is cached)."""
    root = Path(root) / f"v{DEMO_VERSION}"
    marker = root / "complete.json"
    result = DemoModels(
        root, {name: root / name for name in MODEL_NAMES}, root / "tasks", root / "heldout.jsonl"
    )
    if marker.is_file():
        return result
    import torch

    logger.info("building the demo models in %s (first start only)", root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is much faster than many
    try:
        _build(root, steps=steps)
    finally:
        torch.set_num_threads(threads)
    marker.write_text(json.dumps({"version": DEMO_VERSION}))
    return result


def _build(root: Path, *, steps: int) -> None:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok_dir = root / "tokenizer"
    train_tokenizer(tok_dir, vocab_size=160, corpus=CORPUS + animal_lines(400, 9))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    config = llama_config(vocab=len(tokenizer))

    def save(model, name: str) -> None:
        model.save_pretrained(root / name, max_shard_size="60KB", safe_serialization=True)
        tokenizer.save_pretrained(root / name)

    base = LlamaForCausalLM(config)
    train_lm(base, tokenizer, math_lines(200, 1) + animal_lines(200, 2), seed=0, steps=steps)
    save(base, "tiny-base")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for name, lines, seed in [
        ("tiny-math", math_lines(300, 3), 1),
        ("tiny-animals", animal_lines(300, 4), 2),
    ]:
        base.load_state_dict(state)
        train_lm(base, tokenizer, lines, seed=seed, steps=steps, lr=5e-3)
        save(base, name)
    base.load_state_dict(state)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in base.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    save(base, "tiny-noisy")
    base.load_state_dict(state)
    _build_adapter(base, tokenizer, root / "tiny-lora-math", steps=steps)
    write_demo_task(root / "tasks")
    write_examples(root / "heldout.jsonl")


def _build_adapter(base, tokenizer, path: Path, *, steps: int) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(base, config)
    train_lm(model, tokenizer, math_lines(300, 5), seed=3, steps=steps // 2)
    model.save_pretrained(path)
    adapter_config = json.loads((path / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = f"{DEMO_USER}/tiny-base"
    (path / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    tokenizer.save_pretrained(path)


TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_demo_task(task_dir: Path, *, count: int = 40) -> Path:
    """A local multiple-choice arithmetic task, ``hubmerge_demo``, for lm-evaluation-harness."""
    task_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(11)
    docs = []
    for _ in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        choices = [str(a + b), *rng.sample([str(v) for v in range(19) if v != a + b], 3)]
        rng.shuffle(choices)
        docs.append(
            {
                "question": f"{a} plus {b} is",
                "choices": [f" {c}." for c in choices],
                "answer": choices.index(str(a + b)),
            }
        )
    data = task_dir / f"{DEMO_TASK}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (task_dir / f"{DEMO_TASK}.yaml").write_text(TASK_YAML.format(task=DEMO_TASK, data=data))
    return task_dir


def write_examples(path: Path, *, count: int = 24) -> Path:
    """Held-out scoring examples (``input``/``output`` jsonl) for soups and the probe."""
    rng = random.Random(13)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append({"input": f"{a} plus {b} is", "output": f" {a + b}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def register_demo_suite() -> None:
    """Offer ``demo`` (the local arithmetic task, 20 items) in the suite registry."""
    from evaluation.suites import SUITES, Suite

    if DEMO_SUITE not in SUITES:
        SUITES.register(
            Suite(
                name=DEMO_SUITE,
                description="tiny local arithmetic task (offline demo)",
                tasks=(DEMO_TASK,),
                limit=20,
            )
        )


def seed_hub(url: str, models: DemoModels, *, token: str = DEMO_TOKEN) -> list[str]:
    """Upload the demo models to the Hub at ``url`` (only those not there yet)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=url, token=token)
    repos = []
    for name, folder in models.models.items():
        repo_id = f"{DEMO_USER}/{name}"
        repos.append(repo_id)
        if api.repo_exists(repo_id):
            continue
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="demo model")
        logger.info("seeded %s", repo_id)
    return repos


def require_no_xet() -> None:
    """The local Hub does not speak Xet: ``HF_HUB_DISABLE_XET=1`` must precede the import."""
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    import huggingface_hub.constants as constants

    if not constants.HF_HUB_DISABLE_XET:
        constants.HF_HUB_DISABLE_XET = True


@contextlib.contextmanager
def start_demo(
    data_dir: Path, *, port: int = 0, oauth_clients: dict[str, str] | None = None
) -> Iterator[tuple[str, DemoModels]]:
    """Build (or reuse) the demo models, start the seeded local Hub; yield (url, models).

    ``oauth_clients`` (client id → secret) turns on the Hub's "Sign in with the Hub" provider.
    """
    require_no_xet()
    from app.hub_server import running_server

    models = build_demo_models(Path(data_dir) / "demo" / "models")
    register_demo_suite()
    hub_dir = Path(data_dir) / "demo" / "hub"
    tokens = {DEMO_TOKEN: DEMO_USER}
    with running_server(hub_dir, tokens=tokens, port=port, oauth_clients=oauth_clients) as url:
        seed_hub(url, models)
        logger.info("demo Hub on %s (token %s…)", url, DEMO_TOKEN[:6])
        yield url, models
