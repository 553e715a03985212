"""The merged model's card: Hub front matter plus the exact recipe, semantics and lineage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from merging.methods import Method, MethodParams
    from merging.recipe import Recipe
    from merging.sources import ResolvedModel


def _license(resolved: dict[str, ResolvedModel]) -> str | None:
    """The sources' licence when every source's card names the same one."""
    found = set()
    for model in resolved.values():
        card = model.path / "README.md"
        if not card.is_file():
            return None
        text = card.read_text(encoding="utf-8", errors="replace")
        if not text.startswith("---"):
            return None
        try:
            meta = yaml.safe_load(text.split("---", 2)[1]) or {}
        except yaml.YAMLError:
            return None
        found.add(meta.get("license"))
    return found.pop() if len(found) == 1 and None not in found else None


def front_matter(recipe: Recipe, resolved: dict[str, ResolvedModel]) -> dict[str, Any]:
    hub_ids = [m.hub_id for m in resolved.values() if m.hub_id]
    meta: dict[str, Any] = {}
    if hub_ids:
        meta["base_model"] = list(dict.fromkeys(hub_ids))
        meta["base_model_relation"] = "merge"
    meta["library_name"] = "transformers"
    meta["tags"] = ["merge", "hubmerge", recipe.merge_method]
    licence = _license(resolved)
    if licence:
        meta["license"] = licence
    return meta


def render_card(
    recipe: Recipe,
    method: Method[Any, Any],
    params: MethodParams | None,
    resolved: dict[str, ResolvedModel],
    *,
    out_dtype: str | None = None,
    warnings: list[str] | tuple[str, ...] = (),
    plan: list[str] | tuple[str, ...] = (),
) -> str:
    """Markdown model card: front matter, method and semantics, seed, lineage, the plan in
    short, warnings (keys of the recipe that had no effect), recipe YAML."""
    meta = yaml.safe_dump(front_matter(recipe, resolved), sort_keys=False, allow_unicode=True)
    lines = [
        "---",
        meta.rstrip(),
        "---",
        "",
        "# Merged model",
        "",
        f"Made with hubmerge using **{method.name}** ([paper]({method.paper})).",
        "",
        "## Method",
        "",
        f"`{method.formula}`",
        "",
    ]
    if params is not None and method.semantics is not None:
        lines += [method.semantics(params), ""]
    lines += [
        f"- Seed: `{recipe.seed}`"
        + (" (used: random sparsification)" if method.randomized else ""),
        f"- Compute dtype: `{recipe.compute_dtype}`; "
        f"output dtype: `{out_dtype or recipe.output_dtype()}`",
        f"- Vocabulary policy: `{recipe.vocab_policy}`",
        "",
        "## Sources (pinned)",
        "",
        "| role | reference | pinned revision |",
        "|---|---|---|",
    ]
    for name, model in resolved.items():
        role = "base" if name == recipe.base_model else "input"
        if any(s.adapter == name for s in recipe.models):
            role = "adapter"
        lines.append(f"| {role} | `{name}` | `{model.commit or 'local'}` |")
    if plan:
        lines += ["", "## Layers", "", *(f"- {line}" for line in plan)]
    if warnings:
        lines += ["", "## Warnings", "", "Accepted, but without effect on the merge:", ""]
        lines += [f"- {w}" for w in warnings]
    lines += ["", "## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
