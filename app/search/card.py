"""The model card's record of a search: space, budget, seed, every candidate's score, the
examples' hash; and ``search.json`` beside it with the same facts in full."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.search.run import SearchResult

SECTION = "## Merge search"


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return "nan" if math.isnan(value) else f"{value:.5f}"


def render_search_section(result: SearchResult) -> str:
    """Markdown for the card: how the recipe above was found."""
    best, fixed = result.best, result.best_fixed()
    direction = "higher" if result.state.higher_is_better else "lower"
    lines = [
        SECTION,
        "",
        "The recipe above was found by hubmerge's merge search: candidates were merged in "
        f"memory and scored by **{result.metric}** ({direction} is better) on "
        f"{result.examples} selection example(s).",
        "",
        f"- Examples (sha256 of the canonical JSON lines): `{result.examples_hash}`",
        f"- Budget: {result.budget} candidate(s); scored {len(result.candidates)} "
        f"(stopped by: {result.stopped})",
        f"- Seed: `{result.seed}`; optimiser: `{result.sampler}`; backend: {result.backend} "
        f"({result.workers} worker(s))",
        f"- Best: candidate {best.index} ({best.origin}), selection score {_fmt(best.score)}; "
        f"the written merge scores {_fmt(result.reproduced)}",
    ]
    if fixed is not None:
        lines.append(f"- Best starting recipe: {fixed.origin}, {_fmt(fixed.score)}")
    if result.test_score is not None:
        lines.append(f"- Held-out test score (never used to choose): {_fmt(result.test_score)}"
                     f" (sha256 `{result.test_hash}`)")  # fmt: skip
    lines += ["", "Search space (bounded genes):", "", "| gene | low | high |", "|---|---|---|"]
    lines += [f"| `{g.name}` | {g.low} | {g.high} |" for g in result.space.genes]
    lines += ["", "Every candidate, in order:", "", "| # | origin | score | genome |",
              "|---|---|---|---|"]  # fmt: skip
    for c in result.candidates:
        genome = ", ".join(f"{v:.4f}" for v in c.genome) if c.genome is not None else "–"
        memo = " (memo)" if c.cached else ""
        lines.append(f"| {c.index} | {c.origin} | {_fmt(c.score)}{memo} | {genome} |")
    lines += ["", "All candidates' recipes are in `search.json`.", ""]
    return "\n".join(lines)


def write_search_card(folder: Path, result: SearchResult) -> None:
    """Append the search section to ``folder/README.md`` and write ``folder/search.json``."""
    folder = Path(folder)
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if SECTION in text:
        text = text.split(SECTION)[0].rstrip() + "\n"
    card.write_text(text.rstrip() + "\n\n" + render_search_section(result), encoding="utf-8")
    (folder / "search.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n",
                                        encoding="utf-8")  # fmt: skip
