"""The architecture as the code's own import graph shows it: imports run one way.

- `merging` and `evaluation` never import gradio or each other; only `app` composes them.
- Inside `merging`, module-level imports form no circle, and no function imports a `merging`
  module (a function-level import exists only to dodge a circle; heavy third-party imports such
  as transformers may stay lazy).
- Every public import the README and docs show keeps working.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(tree: ast.AST, *, module: str, is_package: bool) -> list[tuple[str, ast.AST]]:
    """(imported module, node) for every import in `tree`, relative imports resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, node))
            out += [(f"{base}.{alias.name}", node) for alias in node.names]
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids |= {id(n) for child in node.body for n in ast.walk(child)}
    return ids


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("merging", ("gradio", "evaluation", "app")), ("evaluation", ("gradio", "merging", "app"))],
)
def test_core_packages_never_import_gradio_or_each_other(package, forbidden):
    bad = []
    for name, path in _modules(package).items():
        tree = ast.parse(path.read_text())
        for target, node in _imports(tree, module=name, is_package=path.name == "__init__.py"):
            if target.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert not bad, "\n".join(sorted(set(bad)))


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules("merging")
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lazy = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = _type_checking_nodes(tree)
        functions = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)
        }
        for target, node in _imports(tree, module=name, is_package=path.name == "__init__.py"):
            if not target.startswith("merging") or id(node) in typing_only:
                continue
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target not in modules or target == name:
                continue
            if id(node) in functions:
                lazy.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
            else:
                graph[name].add(target)
    return graph, lazy


def test_no_function_level_imports_inside_merging():
    _, lazy = _graph()
    assert not lazy, "function-level imports of merging modules:\n" + "\n".join(sorted(set(lazy)))


def test_merging_module_imports_form_no_circle():
    graph, _ = _graph()
    # a package's __init__ importing its own submodules is how re-exports work, not a circle
    edges = {m: {t for t in ts if not (m.count(".") < t.count(".") and t.startswith(m + "."))}
             for m, ts in graph.items()}  # fmt: skip
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("merging", ["load_recipe", "parse_recipe", "merge", "MergeOptions", "MergeResult",
                     "Recipe", "SourceSpec", "METHODS", "get_method", "MergeError", "RecipeError",
                     "align_models"]),
        ("merging.hub", ["push_folder", "download_model", "resolve_revision", "search_models",
                         "remote_tensor_headers", "remote_config", "write_eval_results_to_card"]),
        ("merging.lora", ["LoraAdapter", "lora_scale", "pattern_value", "fit_problems"]),
        ("merging.lora.merge", ["merge_into_base", "merge_into_base_recipe"]),
        ("merging.lora.combine", ["combine_adapters", "CombineParams"]),
        ("merging.lora.lorahub", ["lorahub", "lorahub_search"]),
        ("merging.check", ["check_recipe", "compare_sources", "SourceInfo"]),
    ],
)  # fmt: skip
def test_public_imports_shown_in_docs_keep_working(module, names):
    loaded = importlib.import_module(module)
    missing = [n for n in names if not hasattr(loaded, n)]
    assert not missing, f"{module} lacks {missing}"
