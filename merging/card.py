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
    lines += ["## Usage", "", "```python", usage_snippet(MODEL_ID_PLACEHOLDER), "```", ""]
    return "\n".join(lines)


# the card is written before the merge has a repo; `push` puts the repo id in its place
MODEL_ID_PLACEHOLDER = "<namespace>/<this-merge>"


def usage_snippet(model_id: str) -> str:
    """Python that loads the model with transformers, applies the tokenizer's chat template
    (when it has one) and generates, as model cards on the Hub usually show."""
    return f"""\
from transformers import AutoModelForCausalLM, AutoTokenizer

model_id = "{model_id}"
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, torch_dtype="auto")

messages = [{{"role": "user", "content": "What is a large language model?"}}]
if tokenizer.chat_template:
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
else:  # a base model without a chat template: plain text
    inputs = tokenizer(messages[0]["content"], return_tensors="pt")
outputs = model.generate(**inputs, max_new_tokens=128, do_sample=True, temperature=0.7, top_p=0.95)
print(tokenizer.decode(outputs[0][inputs["input_ids"].shape[-1]:], skip_special_tokens=True))"""
