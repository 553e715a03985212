"""Reading recipe files: the YAML text and its documents, with errors that name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from merging.errors import RecipeError


def read_recipe_data(source: str | Path) -> Any:
    """The parsed YAML of a recipe file path, or of YAML text when ``source`` has a newline.

    Raises:
        `RecipeError`: unreadable file, broken YAML (naming the line), or several YAML documents
            (mergekit-yaml reads exactly one; `merging.multi` runs mergekit-multi's).
    """
    text, documents = read_documents(source)
    if len(documents) > 1:
        lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("---")]
        seps = [n for n in lines if n > 1] or lines
        raise RecipeError(
            f"recipe holds {len(documents)} YAML documents (separated by '---' at line "
            f"{seps[0] if seps else '?'}); a recipe is one document, as in mergekit-yaml. A "
            "multi-stage recipe (mergekit-multi's: each document a recipe, earlier ones with a "
            "'name' later ones merge) runs with `hubmerge multi`"
        )
    return documents[0] if documents else None


def read_documents(source: str | Path) -> tuple[str, list[Any]]:
    """(the text, its parsed YAML documents) of a recipe file path, or of YAML text when
    ``source`` has a newline.

    Raises:
        `RecipeError`: unreadable file or broken YAML (naming the line).
    """
    text = str(source)
    if "\n" not in text:
        path = Path(text)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise RecipeError(f"cannot read recipe {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise RecipeError(f"recipe {path} is not UTF-8 text (byte {err.object[err.start]:#04x} "
                              f"at offset {err.start}); a recipe is a YAML file") from None
        except ValueError as err:  # a NUL character in the path
            raise RecipeError(f"cannot read recipe {text[:80]!r}: {err}") from None
    try:
        return text, list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(err, "problem", None) or err)
        context, mark_of_context = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and mark_of_context is not None:
            problem += f" ({context} at line {mark_of_context.line + 1})"
        raise RecipeError(f"recipe is not valid YAML{where}: {problem}") from None
