"""Prove an alignment changed no function: logits of B and of aligned B on fixed tokens."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.errors import AlignmentError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionCheck:
    """Result of `check_function`: the largest logit difference and the tolerance it met."""

    max_abs_diff: float
    tolerance: float
    sequences: int
    tokens: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "max_abs_logit_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "sequences": self.sequences,
            "tokens_per_sequence": self.tokens,
        }


def fixed_tokens(
    vocab: int, *, sequences: int = 3, tokens: int = 24, seed: int = 0
) -> torch.Tensor:
    """Seeded random token ids ``[sequences, tokens]`` (the same on every run)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (sequences, tokens), generator=generator)


def model_logits(path: Path, ids: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """float32 logits of the model in ``path`` on ``ids`` (loaded, run, released)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, device_map={"": str(device)}
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise AlignmentError(f"cannot load {path} for the function check: {err}") from err
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids.to(device)).logits.float().cpu()
    del model
    gc.collect()
    return logits


def check_function(
    original: Path,
    aligned: Path,
    *,
    vocab: int,
    device: torch.device,
    sequences: int = 3,
    tokens: int = 24,
    rtol: float = 1e-4,
) -> FunctionCheck:
    """Compare float32 logits of ``original`` and ``aligned`` on fixed token sequences.

    The tolerance is ``rtol · max(1, max|logit|)``: a permutation only reorders float sums.

    Raises:
        `AlignmentError`: the logits differ by more than the tolerance.
    """
    ids = fixed_tokens(vocab, sequences=sequences, tokens=tokens)
    before = model_logits(original, ids, device=device)
    after = model_logits(aligned, ids, device=device)
    diff = float((before - after).abs().max())
    tolerance = rtol * max(1.0, float(before.abs().max()))
    logger.info("function check: max |Δlogit| = %.3g (tolerance %.3g)", diff, tolerance)
    if not diff <= tolerance:
        raise AlignmentError(
            f"alignment changed the function: logits of {original} and its permuted copy differ "
            f"by up to {diff:.4g} (tolerance {tolerance:.3g}) on {sequences} fixed sequences; "
            "nothing was written"
        )
    return FunctionCheck(diff, tolerance, sequences, tokens)
