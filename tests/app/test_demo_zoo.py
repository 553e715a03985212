"""The demo zoo teaches: scored on the demo suite, the base is poor at both skills, each
fine-tune is good at its own, task arithmetic and TIES keep most of both, a uniform soup
loses more. Real merges (merging.merge) and real harness runs (evaluation.harness)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.demo import DEMO_VERSION, build_demo_models
from evaluation.demo_tasks import SKILLS, skill_items, task_name

RECIPES = {
    "task_arithmetic": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
    "  - model: {math}\n    parameters: {{weight: 1.0}}\n"
    "  - model: {animals}\n    parameters: {{weight: 1.0}}\n",
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n"
    "  - model: {math}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
    "  - model: {animals}\n    parameters: {{weight: 1.0, density: 0.5}}\n",
    "soup": "merge_method: linear\nmodels:\n  - model: {math}\n  - model: {animals}\n",
    "lora": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
    "  - model: {base}+{lora}\n",  # the adapter's ΔW added to the base
}


@pytest.fixture(scope="module")
def scores(demo_models, tmp_path_factory) -> dict[str, dict[str, float]]:
    from evaluation.harness import EvalOptions, compare
    from merging import load_recipe, merge

    out = tmp_path_factory.mktemp("zoo-merges")
    folders = {k: str(v) for k, v in demo_models.models.items()}
    names = {"base": folders["tiny-base"], "math": folders["tiny-math"],
             "animals": folders["tiny-animals"], "lora": folders["tiny-lora-math"]}  # fmt: skip
    models = {"base": names["base"], "tiny-math": names["math"],
              "tiny-animals": names["animals"]}  # fmt: skip
    for label, text in RECIPES.items():
        merge(load_recipe(text.format(**names)), out / label)
        models[label] = str(out / label)
    options = EvalOptions.from_suite("demo", device="cpu", cache_dir=out / "cache")
    report = compare(models, options)
    table = {m.label: {s: m.get(task_name(s), "exact_match").value for s in SKILLS}
             for m in report.models}  # fmt: skip
    (out / "scores.json").write_text(json.dumps(table, indent=2))
    return table


@pytest.mark.slow
def test_the_demo_table_shows_what_merging_keeps(scores):
    base, math, animals = scores["base"], scores["tiny-math"], scores["tiny-animals"]
    assert max(base.values()) <= 0.25, scores  # poor at both
    assert math["math"] >= 0.8, scores  # good at its own…
    assert animals["animals"] >= 0.8, scores
    assert math["animals"] <= base["animals"] + 0.25, scores  # …and only at its own
    assert animals["math"] <= base["math"] + 0.25, scores
    mean = {label: sum(row.values()) / len(row) for label, row in scores.items()}
    assert min(scores["task_arithmetic"].values()) >= 0.7, scores  # keeps most of both
    assert min(scores["ties"].values()) >= 0.6, scores
    assert mean["soup"] <= min(mean["task_arithmetic"], mean["ties"]) - 0.05, scores
    assert scores["lora"]["math"] >= 0.7, scores  # the LoRA adapter learnt the math skill too
    assert scores["lora"]["animals"] <= base["animals"] + 0.25, scores


def test_demo_skills_have_exact_answers_and_the_suite_covers_them():
    from evaluation.suites import get_suite

    assert get_suite("demo").tasks == tuple(task_name(s) for s in SKILLS)
    for skill in SKILLS:
        items = skill_items(skill)
        assert len({prompt for prompt, _ in items}) == len(items)  # one answer per prompt
    assert ("double 12 is", "24") in skill_items("math")
    assert ("a cow says", "moo") in skill_items("animals")


def test_a_build_is_cached_and_an_interrupted_one_is_redone(tmp_path, monkeypatch):
    import app.demo_zoo as zoo

    calls = []

    def fake_build(root: Path, *, quick: bool) -> None:  # records the call; writes a model
        calls.append(quick)
        (root / "tiny-base").mkdir()
        if len(calls) == 1:
            raise KeyboardInterrupt  # the first start is interrupted mid-build

    monkeypatch.setattr(zoo, "build_zoo", fake_build)
    with pytest.raises(KeyboardInterrupt):
        build_demo_models(tmp_path, quick=True)
    assert not (tmp_path / f"v{DEMO_VERSION}-quick" / "complete.json").exists()
    first = build_demo_models(tmp_path, quick=True)
    again = build_demo_models(tmp_path, quick=True)
    assert calls == [True, True]  # rebuilt once, then reused
    assert first == again
    assert json.loads((first.root / "complete.json").read_text())["version"] == DEMO_VERSION


def test_the_demo_recipe_fills_the_form_with_the_zoo_merge():
    """The Models tab's "Use the demo recipe": task arithmetic of both skill fine-tunes."""
    from app import forms
    from app.ui import demo_recipe
    from merging import load_recipe

    recipe = load_recipe(demo_recipe())
    assert recipe.merge_method == "task_arithmetic"
    assert recipe.base_model == "demo/tiny-base"
    assert [(s.model, s.parameters["weight"]) for s in recipe.models] == [
        ("demo/tiny-math", 1.0),
        ("demo/tiny-animals", 1.0),
    ]
    form = forms.yaml_to_form(demo_recipe())
    assert (form.method, form.base) == ("task_arithmetic", "demo/tiny-base")
    assert [row[0] for row in form.rows] == ["demo/tiny-math", "demo/tiny-animals"]
