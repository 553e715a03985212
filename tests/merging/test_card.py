"""The model card: Hub front matter, method and semantics, seed, lineage, the recipe itself."""

from __future__ import annotations

from pathlib import Path

import yaml

from merging import load_recipe
from merging.card import front_matter, render_card
from merging.io.refs import ModelRef
from merging.methods import get_method, resolve_params
from merging.sources import ResolvedModel

RECIPE = """\
merge_method: dare_ties
base_model: org/base
models:
  - model: org/math
    parameters: {density: 0.5, weight: 0.7}
  - model: ./local/code
    parameters: {density: 0.3}
parameters: {rescale: density}
seed: 1234
dtype: bfloat16
"""


def _resolved(tmp_path: Path, licence: str | None = "apache-2.0") -> dict[str, ResolvedModel]:
    out = {}
    for name, local in [("org/base", False), ("org/math", False), ("./local/code", True)]:
        folder = tmp_path / name.replace("/", "_")
        folder.mkdir()
        if licence is not None:
            (folder / "README.md").write_text(f"---\nlicense: {licence}\n---\n# card\n")
        commit = None if local else "a" * 40
        out[name] = ResolvedModel(ModelRef(name, None, local=local), folder, commit)
    return out


def _split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, meta, body = card.split("---", 2)
    return yaml.safe_load(meta), body


def test_front_matter_lists_only_hub_ids(tmp_path):
    recipe = load_recipe(RECIPE)
    meta = front_matter(recipe, _resolved(tmp_path))
    assert meta["base_model"] == ["org/base", "org/math"]  # the local path is not listed
    assert meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "transformers"
    assert meta["tags"] == ["merge", "hubmerge", "dare_ties"]
    assert meta["license"] == "apache-2.0"


def test_front_matter_for_local_sources_has_no_base_model(tmp_path):
    recipe = load_recipe(RECIPE)
    resolved = {
        name: ResolvedModel(ModelRef(str(tmp_path / str(i)), None, local=True), tmp_path)
        for i, name in enumerate(["org/base", "org/math", "./local/code"])
    }
    meta = front_matter(recipe, resolved)
    assert "base_model" not in meta
    assert "base_model_relation" not in meta


def test_licence_only_when_every_source_agrees(tmp_path):
    recipe = load_recipe(RECIPE)
    resolved = _resolved(tmp_path)
    (resolved["org/math"].path / "README.md").write_text("---\nlicense: mit\n---\n")
    assert "license" not in front_matter(recipe, resolved)
    (resolved["org/math"].path / "README.md").unlink()
    assert "license" not in front_matter(recipe, resolved)


def test_card_body_has_method_seed_lineage_and_recipe(tmp_path):
    recipe = load_recipe(RECIPE)
    method = get_method("dare_ties")
    params, _ = resolve_params(method, recipe, [], "", 0.0)
    card = render_card(recipe, method, params, _resolved(tmp_path))
    meta, body = _split(card)
    assert meta["base_model_relation"] == "merge"
    assert "**dare_ties**" in body
    assert method.paper in body
    assert method.formula in body
    assert "rescale = density" in body  # the semantics in effect
    assert "Seed: `1234` (used: random sparsification)" in body
    assert "output dtype: `bfloat16`" in body
    assert f"| base | `org/base` | `{'a' * 40}` |" in body
    assert f"| input | `org/math` | `{'a' * 40}` |" in body
    assert "| input | `./local/code` | `local` |" in body
    embedded = body.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert embedded == recipe.to_yaml()
    assert load_recipe(embedded) == recipe


def test_deterministic_method_card_does_not_claim_the_seed_is_used(tmp_path):
    recipe = load_recipe(RECIPE.replace("dare_ties", "ties").replace("rescale: density", ""))
    method = get_method("ties")
    params, _ = resolve_params(method, recipe, [], "", 0.0)
    _, body = _split(render_card(recipe, method, params, _resolved(tmp_path)))
    assert "Seed: `1234`\n" in body
    assert "**ties**" in body


def test_usage_snippet_loads_applies_the_chat_template_and_generates(tmp_path):
    """The card's usage snippet runs as written against a real (tiny) model folder, with and
    without a chat template."""
    import contextlib
    import io

    from merging.card import MODEL_ID_PLACEHOLDER, usage_snippet
    from tests.helpers.tiny import build_llama

    recipe = load_recipe(RECIPE)
    card = render_card(recipe, get_method("dare_ties"), None, _resolved(tmp_path))
    assert usage_snippet(MODEL_ID_PLACEHOLDER) in card.split("## Usage", 1)[1]
    folder = build_llama(tmp_path / "model", seed=0)
    from transformers import AutoTokenizer

    for template in (None, "{% for m in messages %}<s>{{ m['content'] }}{% endfor %}"):
        if template:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            tokenizer.chat_template = template
            tokenizer.save_pretrained(folder)
        printed = io.StringIO()
        code = usage_snippet(str(folder)).replace("max_new_tokens=128", "max_new_tokens=4")
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "usage_snippet", "exec"), {})  # the snippet as users run it
        assert printed.getvalue().endswith("\n")  # it printed the reply
