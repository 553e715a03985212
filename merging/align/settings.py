"""The recipe's ``align:`` block (syntax only; `merging.align.recipe_step` runs it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AlignSettings(BaseModel):
    """``align: {to: base}``: permute every other source into one model's basis first.

    Attributes:
        to: ``base`` (the recipe's base model) or a model reference among the sources.
        method: ``weights`` (weight matching) or ``activations`` (activation matching).
        examples: calibration texts for ``activations`` (jsonl ``{"input","output"}`` or lines).
        max_iter: at most this many weight-matching sweeps.
        seed: seeds the order of the sweeps (default: the recipe's seed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    to: str = Field("base", min_length=1)
    method: Literal["weights", "activations"] = "weights"
    examples: str | None = None
    max_iter: int = Field(20, ge=1, le=1000)
    seed: int | None = None
