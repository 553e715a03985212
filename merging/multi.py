"""Multi-stage recipes: several YAML documents, later ones merging earlier ones' outputs.

mergekit-multi's format (``mergekit/scripts/multimerge.py``, mergekit 0.1.x): each document is
a recipe; one with a ``name`` is a stage whose output is written to ``INTERMEDIATE/name``, and
a model reference equal to a stage's name (``model``, ``base_model``, a slice's sources and
base, a tokenizer source, ``align.to``; also as ``name+adapter``) reads that output. At most
one document has no name: the final merge, written to the output folder. Stages run in an
order where each follows the stages it reads (a cycle is refused before anything runs).

Every document is validated before the first merge, and every stage whose inputs exist is
checked from headers (`check_stages`); a stage that reads another is checked when its inputs
are there, before any of its weights are read, as every merge is. With ``lazy`` (mergekit's
default) a stage whose output folder exists and records the same recipe
(``hubmerge_recipe.yaml``) is not merged again, unless a stage it reads was merged in the same
run; one made from another recipe (or before its inputs changed) is an error unless
``overwrite`` (hubmerge's outputs appear only when complete, so an existing folder is never
half-written). A stage merged again by hand outside a run is not noticed by the stages that
read it: run those with ``overwrite`` and without ``lazy``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merging.check import CompatibilityReport, check_recipe
from merging.engine import MergeOptions, MergeResult, merge
from merging.errors import OutputError, RecipeError
from merging.outputs import RECIPE_FILE
from merging.recipe import Recipe
from merging.recipe_text import read_documents
from merging.validate import parse_recipe

STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
KEYWORDS = {"base", "union"}  # tokenizer_source values that are not model references


@dataclass(frozen=True)
class Stage:
    """One document: its recipe (stage names already replaced by their output folders)."""

    name: str | None  # None: the final merge, into the output folder
    recipe: Recipe
    needs: tuple[str, ...]  # the stages whose outputs it reads


@dataclass(frozen=True)
class MultiRecipe:
    stages: tuple[Stage, ...]  # in running order: each after the stages it needs
    intermediate: Path

    def folder(self, stage: Stage, output: Path | None) -> Path:
        if stage.name is not None:
            return self.intermediate / stage.name
        if output is None:
            raise RecipeError("the recipe has an unnamed final merge: give the output folder")
        return output


def _patch(value: Any, names: dict[str, Path], used: set[str]) -> Any:
    """A model reference, with a stage's name replaced by its output folder."""
    if not isinstance(value, str):
        return value
    model, plus, adapter = value.partition("+")
    if model not in names:
        return value
    used.add(model)
    return f"{names[model]}{plus}{adapter}"


def _patch_key(
    mapping: Any, key: str, names: dict[str, Path], used: set[str], *, tokenizer: bool = False
) -> None:
    """``mapping[key]``, a model reference, patched in place where ``mapping`` has it (for a
    ``tokenizer`` source, the keywords ``base`` / ``union`` are not references)."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if isinstance(value, str) and not (tokenizer and value in KEYWORDS):
        mapping[key] = _patch(value, names, used)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _patch_document(doc: dict[str, Any], names: dict[str, Path], used: set[str]) -> None:
    """Every model reference of one document, in place (malformed parts are left for the
    recipe's own validation to report)."""
    _patch_key(doc, "base_model", names, used)
    _patch_key(doc, "tokenizer_source", names, used, tokenizer=True)
    for entry in _list(doc.get("models")):
        _patch_key(entry, "model", names, used)
    for piece in _list(doc.get("slices")):
        _patch_key(piece, "base_model", names, used)
        for source in _list(piece.get("sources") if isinstance(piece, dict) else None):
            _patch_key(source, "model", names, used)
    tokenizer = doc.get("tokenizer")
    if isinstance(tokenizer, dict):
        _patch_key(tokenizer, "source", names, used, tokenizer=True)
        tokens = tokenizer.get("tokens")
        for token in tokens.values() if isinstance(tokens, dict) else []:
            _patch_key(token, "source", names, used, tokenizer=True)
    _patch_key(doc.get("align"), "to", names, used)


def _label(stage: Stage | str | None) -> str:
    name = stage.name if isinstance(stage, Stage) else stage
    return "the final merge" if name is None else f"stage {name!r}"


def _name_of(doc: Any, index: int) -> str | None:
    if not isinstance(doc, dict):
        raise RecipeError(f"document {index + 1}: a recipe must be a YAML mapping")
    name = doc.pop("name", None)
    if name is None:
        return None
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
        raise RecipeError(
            f"document {index + 1}: name {name!r} must be a folder name (letters, digits, "
            "'.', '_', '-'; no '/'): the stage's output is written to INTERMEDIATE/name"
        )
    return name


def _ordered(stages: dict[str | None, Stage]) -> tuple[Stage, ...]:
    """Stages after those they need (depth first, in document order); a cycle is refused."""
    done: list[Stage] = []
    state: dict[str | None, str] = {}

    def visit(name: str | None, path: list[str | None]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = " -> ".join(str(n) for n in [*path[path.index(name) :], name])
            raise RecipeError(f"stages depend on each other in a cycle: {cycle}")
        state[name] = "active"
        for need in stages[name].needs:
            visit(need, [*path, name])
        state[name] = "done"
        done.append(stages[name])

    for name in stages:
        visit(name, [])
    return tuple(done)


def parse_multi(
    source: str | Path, intermediate: Path | str, *, strict: bool = False
) -> MultiRecipe:
    """Every document of a multi-stage recipe file (or YAML text), validated; no weight read.

    Raises:
        `RecipeError`: broken YAML, a document that is not a valid recipe (named by its stage),
            a duplicate name, two unnamed documents, a name that is not a folder name, or a
            cycle.
    """
    _, documents = read_documents(source)
    intermediate = Path(intermediate).resolve()
    named: dict[str | None, dict[str, Any]] = {}
    for index, doc in enumerate(d for d in documents if d is not None):
        name = _name_of(doc, index)
        if name in named:
            raise RecipeError(
                f"two stages are named {name!r}" if name is not None else
                "two documents have no name: only the final merge may be unnamed"
            )  # fmt: skip
        named[name] = doc
    if not named:
        raise RecipeError("the recipe holds no document")
    folders = {name: intermediate / name for name in named if name is not None}
    stages: dict[str | None, Stage] = {}
    for name, doc in named.items():
        used: set[str] = set()
        _patch_document(doc, folders, used)
        try:
            recipe = parse_recipe(doc, strict=strict)
        except RecipeError as err:
            raise RecipeError(f"{_label(name)}: {err}") from None
        stages[name] = Stage(name, recipe, tuple(sorted(used)))
    return MultiRecipe(_ordered(stages), intermediate)


def up_to_date(stage: Stage, folder: Path) -> bool | None:
    """Whether ``folder`` holds this stage's merge (the same recipe recorded); None when there
    is no folder."""
    if not folder.exists():
        return None
    recorded = folder / RECIPE_FILE
    return recorded.is_file() and recorded.read_text(encoding="utf-8") == stage.recipe.to_yaml()


def check_stages(
    multi: MultiRecipe, output: Path | None, *, token: str | None = None
) -> dict[str | None, CompatibilityReport | None]:
    """Each stage's compatibility report from headers, where its inputs exist (``None``: it
    reads a stage not merged yet, and is checked when that one is)."""
    reports: dict[str | None, CompatibilityReport | None] = {}
    for stage in multi.stages:
        ready = all(up_to_date(s, multi.folder(s, output)) for s in multi.stages
                    if s.name in stage.needs)  # fmt: skip
        reports[stage.name] = check_recipe(stage.recipe, token=token) if ready else None
    return reports


def run_multi(
    multi: MultiRecipe,
    output: Path | None,
    *,
    options: MergeOptions | None = None,
    lazy: bool = True,
    on_stage: Callable[[Stage, Path, bool], None] | None = None,
) -> list[MergeResult | None]:
    """Merge every stage in order (``None`` for a stage left as it was: ``lazy`` and up to
    date). ``on_stage(stage, folder, merging)`` is called before each.

    Raises:
        `OutputError`: a stage's folder exists from another recipe (or without ``lazy``) and
            ``options.overwrite`` is off; and whatever `merge` raises.
    """
    options = options or MergeOptions()
    results: list[MergeResult | None] = []
    merged: set[str | None] = set()
    for stage in multi.stages:
        folder = multi.folder(stage, output)
        current = up_to_date(stage, folder)
        fed = sorted(n for n in stage.needs if n in merged)  # inputs merged again in this run
        skip = lazy and current is True and not fed
        if on_stage is not None:
            on_stage(stage, folder, not skip)
        if skip:
            results.append(None)
            continue
        if current is not None and not options.overwrite:
            why = (
                f"merged before {', '.join(fed)} was merged again" if current and fed else
                "merged already (lazy is off)" if current else
                "merged from another recipe" if (folder / RECIPE_FILE).is_file() else
                f"with no {RECIPE_FILE} to say what it holds (not a hubmerge output?)"
            )  # fmt: skip
            raise OutputError(
                f"{_label(stage)}: {folder} exists, {why}; give overwrite (--overwrite) to merge "
                "it again"
            )
        results.append(merge(stage.recipe, folder, options=options))
        merged.add(stage.name)
    return results


__all__ = ["MultiRecipe", "Stage", "check_stages", "parse_multi", "run_multi", "up_to_date"]
