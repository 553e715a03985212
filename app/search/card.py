"""The model card's record of a search: space, budget, seed, every candidate's score, the
examples' hash; and ``search.json`` beside it with the same facts in full."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from app.search.rescore import GUARD_SES, HarnessScore, RescoreResult, TaskSpec

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
        f"- Examples (sha256 of the canonical JSON lines): `{result.examples_hash}`"
        + (f"; the documents of the harness tasks {_spec(result.examples_from)}"
           if result.examples_from is not None else ""),
        f"- Budget: {result.budget} candidate(s); scored {len(result.candidates)} "
        f"(stopped by: {result.stopped})",
        f"- Seed: `{result.seed}`; optimiser: `{result.sampler}`; backend: {result.backend} "
        f"({result.workers} worker(s))",
        f"- Best: candidate {best.index} ({best.origin}), selection score {_fmt(best.score)}; "
        f"the written merge scores {_fmt(result.reproduced)}"
        + (" (chosen by the harness re-scoring below)" if result.rescored else ""),
    ]
    if fixed is not None:
        lines.append(f"- Best starting recipe: {fixed.origin}, {_fmt(fixed.score)}")
    if result.test_score is not None:
        lines.append(f"- Held-out test score (never used to choose): {_fmt(result.test_score)}"
                     f" (sha256 `{result.test_hash}`)")  # fmt: skip
    if result.rescored is not None:
        lines += rescore_section(result.rescored)
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


def _spec(spec: TaskSpec) -> str:
    limit = f", {spec.limit} item(s) each" if spec.limit else ", every item"
    return ", ".join(f"`{t}`" for t in spec.tasks) + limit


def _score(score: HarnessScore | None) -> str:
    if score is None:
        return "–"
    return f"{score.score:.4f}" + (f" ± {score.stderr:.4f}" if score.stderr is not None else "")


def rescore_section(rescored: RescoreResult) -> list[str]:
    """The card's lines on the harness re-scoring and the guard."""
    lines = ["", f"The best {len(rescored.rescored)} distinct candidates (with your recipe) "
             "were re-scored by lm-evaluation-harness, merged in memory:", ""]  # fmt: skip
    if rescored.tasks is not None:
        lines.append(f"- Tasks (the best score wins): {_spec(rescored.tasks)}")
    if rescored.guard is not None:
        lines.append(f"- Damage guard: {_spec(rescored.guard)}; reference: "
                     f"{'the base model' if rescored.guard_reference == 'base' else 'your recipe'}"
                     f" at {_score(rescored.reference)}; a candidate more than {GUARD_SES:g} "
                     "standard errors below it is not chosen (the standard error of the "
                     "per-document differences on the same documents where the harness "
                     "logged them: paired; else the reference's)")  # fmt: skip
        excluded = [str(r.index) for r in rescored.rescored if r.excluded]
        lines.append(f"- Excluded by the guard: {', '.join(excluded) if excluded else 'none'}")
    if rescored.fallback:
        lines.append("- The guard excluded every re-scored candidate; the least damaging won")
    lines += ["", "| # | origin | selection | tasks | guard | guard drop | SE used | chosen |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rescored.rescored:
        drop = "–" if r.guard_drop is None else f"{r.guard_drop:.4f}"
        se = "–" if r.guard_stderr is None else (
            f"{r.guard_stderr:.4f}" + (" (paired)" if r.paired else ""))  # fmt: skip
        chosen = "**winner**" if r.index == rescored.winner else (
            "excluded" if r.excluded else "")  # fmt: skip
        lines.append(f"| {r.index} | {r.origin} | {_fmt(r.selection)} | {_score(r.tasks)} | "
                     f"{_score(r.guard)} | {drop} | {se} | {chosen} |")  # fmt: skip
    return lines


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
