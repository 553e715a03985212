"""The name registry, and that every method module registers what it should."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import merging.methods
from merging import METHODS, RecipeError, get_method
from merging.errors import MergeError, RegistryError
from merging.registry import Registry


def test_register_get_names_contains_len():
    registry: Registry[int] = Registry("widget")
    registry.add("beta", 2)
    registry.add("alpha_one", 1)
    assert registry.get("beta") == 2
    assert registry.names() == ["alpha_one", "beta"]
    assert list(registry) == ["alpha_one", "beta"]
    assert "beta" in registry
    assert "gamma" not in registry
    assert len(registry) == 2


def test_duplicate_names_are_rejected():
    registry: Registry[int] = Registry("widget")
    registry.add("one", 1)
    with pytest.raises(RegistryError, match="'one' is already registered"):
        registry.add("one", 2)
    assert registry.get("one") == 1


@pytest.mark.parametrize("name", ["", "CamelCase", "has space", "dash-name", "dot.name"])
def test_names_must_be_lower_snake_case(name):
    with pytest.raises(RegistryError, match="lower_snake_case"):
        Registry("widget").add(name, 0)


def test_unknown_name_suggests_close_matches():
    registry: Registry[int] = Registry("widget")
    for name in ("task_arithmetic", "ties", "dare_ties"):
        registry.add(name, 0)
    with pytest.raises(RegistryError) as caught:
        registry.get("tie")
    message = str(caught.value)
    assert message.startswith("unknown widget 'tie'.")
    assert "Did you mean 'ties'" in message
    assert "Known: dare_ties, task_arithmetic, ties" in message
    with pytest.raises(KeyError):  # still catchable as the builtin
        registry.get("zzzzzz")


def test_unknown_name_without_close_match_has_no_hint():
    registry: Registry[int] = Registry("widget")
    registry.add("linear", 0)
    with pytest.raises(RegistryError) as caught:
        registry.get("qqqqq")
    assert "Did you mean" not in str(caught.value)


def test_decorator_registers_the_made_entry():
    registry: Registry[str] = Registry("widget")

    @registry.decorator("shout", lambda fn: fn.__name__.upper())
    def shout() -> None: ...

    assert shout == "SHOUT"
    assert registry.get("shout") == "SHOUT"


def test_get_method_turns_unknown_names_into_recipe_errors():
    with pytest.raises(RecipeError, match=r"merge_method: unknown merge method 'slurp'.*'slerp'"):
        get_method("slurp")
    assert issubclass(RecipeError, MergeError)


def test_the_expected_methods_are_registered():
    expected = {
        "linear",
        "slerp",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "model_stock",
    }
    assert expected <= set(METHODS.names())


def _method_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.iter_modules(merging.methods.__path__)
        if not info.name.startswith("_")
    ]


@pytest.mark.parametrize("module", _method_modules())
def test_every_method_module_registers_something(module):
    importlib.import_module(f"merging.methods.{module}")
    owners = {METHODS.get(name).fn.__module__ for name in METHODS.names()}
    assert f"merging.methods.{module}" in owners


def test_every_method_module_is_imported_by_the_package():
    """A module that methods/__init__ does not import would silently register nothing."""
    tree = ast.parse(Path(merging.methods.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "merging.methods":
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "merging.methods."
        ):
            imported.add(node.module.rsplit(".", 1)[1])
    assert set(_method_modules()) <= imported
