"""Scoring for the merge-quality benchmark: greedy exact-match accuracy per zoo skill, an MMLU
subset scored as lm-eval's ``mmlu`` tasks score it, and the normalised retention
(merge − base) / (specialist − base)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import zoo

MMLU_SUBJECTS = (
    "high_school_geography",
    "high_school_psychology",
    "marketing",
    "miscellaneous",
    "us_foreign_policy",
    "high_school_government_and_politics",
    "sociology",
    "nutrition",
)
MAX_NEW_TOKENS = 8




def load_causal_lm(path: str | Path, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, tokenizer


def _left_pad(tokenizer: Any, texts: Sequence[str], device: str) -> tuple[Any, Any]:
    import torch

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def greedy_generate(
    models: Sequence[Any], tokenizer: Any, prompts: Sequence[str], device: str, batch: int = 64
) -> list[str]:
    """Greedy decoding; with several models, their next-token probabilities are averaged.

    No KV cache: the answers are a few tokens, and one code path serves the ensemble too.
    """
    import torch

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    outputs: list[str] = []
    for start in range(0, len(prompts), batch):
        texts = [zoo.chat_prompt(tokenizer, p) for p in prompts[start : start + batch]]
        ids, mask = _left_pad(tokenizer, texts, device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        done = torch.zeros(len(texts), dtype=torch.bool, device=device)
        new: list[Any] = []
        with torch.no_grad():
            for _ in range(MAX_NEW_TOKENS):
                probs = None
                for model in models:
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=position)
                    p = logits.logits[:, -1].float().softmax(-1)
                    probs = p if probs is None else probs + p
                token = probs.argmax(-1)
                token = torch.where(done, end, token)
                new.append(token)
                done |= token == end
                ids = torch.cat([ids, token[:, None]], 1)
                mask = torch.cat([mask, torch.ones_like(token)[:, None]], 1)
                position = torch.cat([position, position[:, -1:] + 1], 1)
                if bool(done.all()):
                    break
        generated = torch.stack(new, 1).tolist()
        for row in generated:
            row = row[: row.index(end)] if end in row else row
            outputs.append(tokenizer.decode(row, skip_special_tokens=True))
    return outputs


def skill_accuracy(
    models: Sequence[Any], tokenizer: Any, items: dict[str, list[zoo.Item]], device: str
) -> dict[str, float]:
    scores = {}
    for skill, rows in items.items():
        answers = greedy_generate(models, tokenizer, [r.prompt for r in rows], device)
        hits = [zoo.normalise(skill, a) == r.answer for a, r in zip(answers, rows, strict=True)]
        scores[skill] = 100.0 * sum(hits) / len(hits)
    return scores


def load_mmlu(per_subject: int) -> list[dict[str, Any]]:
    """The first `per_subject` questions of each of `MMLU_SUBJECTS` (real MMLU test split)."""
    cached = zoo.zoo_dir() / "data" / f"mmlu_{per_subject}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    from evaluation.data import ensure_mmlu

    data_dir = ensure_mmlu().parent / "data"
    rows: list[dict[str, Any]] = []
    for subject in MMLU_SUBJECTS:
        lines = (data_dir / f"{subject}.jsonl").read_text().splitlines()
        rows += [json.loads(line) for line in lines if line.strip()][:per_subject]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(rows))
    return rows


def mmlu_prompt(doc: dict[str, Any]) -> str:
    subject = doc["subject"].replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    choices = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", doc["choices"], strict=True))
    return f"{head}{doc['question'].strip()}{choices}\nAnswer:"


def mmlu_accuracy(
    models: Sequence[Any], tokenizer: Any, docs: Sequence[dict[str, Any]], device: str
) -> float:
    """0-shot MMLU accuracy (letter log-likelihood); several models average probabilities."""
    import torch

    letters = [tokenizer(f" {x}", add_special_tokens=False)["input_ids"] for x in "ABCD"]
    assert all(len(t) == 1 for t in letters), letters
    letter_ids = [t[0] for t in letters]
    correct = 0
    for start in range(0, len(docs), 16):
        chunk = docs[start : start + 16]
        ids, mask = _left_pad(tokenizer, [mmlu_prompt(d) for d in chunk], device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            probs = sum(
                m(input_ids=ids, attention_mask=mask, position_ids=position)
                .logits[:, -1]
                .float()
                .softmax(-1)[:, letter_ids]
                for m in models
            )
        pred = probs.argmax(-1).tolist()
        correct += sum(int(p == d["answer"]) for p, d in zip(pred, chunk, strict=True))
    return 100.0 * correct / len(docs)


def retention(scores: dict[str, float], base: dict[str, float], spec: dict[str, float]) -> dict:
    out = {}
    for skill in zoo.SKILLS:
        gain = spec[skill] - base[skill]
        out[skill] = (scores[skill] - base[skill]) / gain if abs(gain) > 1e-9 else float("nan")
    out["mean"] = sum(out[s] for s in zoo.SKILLS) / len(zoo.SKILLS)
    return out


