"""Fine-tune a zoo model on one skill (full or LoRA), with the loss on answer tokens only."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.zoo_skills import SEED, Item, chat_prompt

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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
