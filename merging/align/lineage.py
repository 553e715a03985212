"""Is alignment pointless? Fine-tunes of one base already share a basin (and a basis).

Two signals: the models' cards (``base_model`` front matter) and configs (``_name_or_path``)
name a common ancestor, or their weights are nearly parallel (cosine similarity of the
flattened tensors; independently initialised models sit near 0, fine-tunes near 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from merging.io.source import CheckpointSource

SIMILAR = 0.5  # mean cosine above this: one lineage (independent inits give ~0)


@dataclass(frozen=True)
class Lineage:
    pointless: bool
    reason: str
    cosine: float

    def to_json(self) -> dict[str, Any]:
        return {"pointless": self.pointless, "reason": self.reason, "weight_cosine": self.cosine}


def card_bases(path: Path) -> set[str]:
    """``base_model`` entries of a model card's front matter (empty when there is none)."""
    card = path / "README.md"
    if not card.is_file():
        return set()
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return set()
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return set()
    bases = meta.get("base_model") if isinstance(meta, dict) else None
    if isinstance(bases, str):
        return {bases}
    return {str(b) for b in bases} if isinstance(bases, list) else set()


def weight_cosine(
    reference: CheckpointSource, model: CheckpointSource, *, limit: int = 12
) -> float:
    """Mean cosine similarity of up to ``limit`` matrices (embedding first, then layers)."""
    names = [n for n, h in reference.headers.items() if len(h.shape) == 2][:limit]
    values = []
    for name in names:
        a = reference.get(name).float().reshape(-1)
        b = model.get(name).float().reshape(-1)
        values.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    return sum(values) / len(values) if values else 0.0


def lineage(
    reference: CheckpointSource, model: CheckpointSource, *, ids: tuple[str | None, str | None]
) -> Lineage:
    """Whether B is already in A's basis (a common base or near-identical weights)."""
    cosine = weight_cosine(reference, model)
    names_a = card_bases(Path(reference.path)) | {i for i in (ids[0],) if i}
    names_b = card_bases(Path(model.path)) | {i for i in (ids[1],) if i}
    for config, names in ((reference.config, names_a), (model.config, names_b)):
        origin = config.get("_name_or_path")
        if isinstance(origin, str) and origin and not Path(origin).is_absolute():
            names.add(origin)
    common = sorted((card_bases(Path(model.path)) & names_a) | (card_bases(Path(reference.path))
                                                                & names_b))  # fmt: skip
    if common:
        reason = (
            f"the models share the base {common[0]!r} (model card base_model): fine-tunes of one "
            "base are already aligned; alignment will change little and is not needed to merge"
        )
        return Lineage(True, reason, cosine)
    if cosine > SIMILAR:
        reason = (
            f"the weights are nearly parallel (mean cosine {cosine:.3f}): the models descend "
            "from one initialisation and are already aligned; alignment is pointless here"
        )
        return Lineage(True, reason, cosine)
    reason = f"independent-looking models (mean weight cosine {cosine:.3f}): alignment can help"
    return Lineage(False, reason, cosine)
