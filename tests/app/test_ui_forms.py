"""The method form is generated from the registry; recipe YAML and form update each other."""

from __future__ import annotations

import pytest

from app import forms
from app.settings import Settings, read_settings

MERGEKIT = """\
models:
  - model: org/base
  - model: org/math
    parameters: {weight: 0.7, density: 0.5}
  - model: org/code
    parameters: {weight: 0.3, density: 0.4}
merge_method: ties
base_model: org/base
parameters: {lambda: 0.8}
dtype: bfloat16
"""


def test_param_fields_cover_every_method_with_ranges():
    fields = forms.param_fields()
    assert {f.method for f in fields} <= set(forms.METHODS.names())
    slerp_t = next(f for f in fields if f.method == "slerp" and f.name == "t")
    assert slerp_t.required
    assert (slerp_t.minimum, slerp_t.maximum) == (0.0, 1.0)
    ties_sign = next(f for f in fields if f.method == "ties" and f.key == "sign_method")
    assert ties_sign.kind == "choice"
    assert "total" in ties_sign.choices
    assert forms.source_columns()[:3] == ["model", "weight", "density"]
    assert forms.GREEDY_SOUP in forms.method_names()
    assert "arxiv.org" in forms.method_info("ties")


def test_mergekit_yaml_fills_the_form_and_round_trips():
    form = forms.yaml_to_form(MERGEKIT)
    assert form.method == "ties"
    assert form.base == "org/base"
    columns = forms.source_columns()
    assert [r[0] for r in form.rows] == ["org/math", "org/code"]
    assert form.rows[0][columns.index("density")] == 0.5
    lambda_index = next(i for i, f in enumerate(forms.param_fields())
                        if f.method == "ties" and f.key == "lambda")  # fmt: skip
    assert form.values[lambda_index] == 0.8
    text = forms.form_to_yaml(MERGEKIT, form.method, form.base, form.rows, form.values)
    again = forms.yaml_to_form(text)
    assert again == form
    assert "dtype: bfloat16" in text  # keys the form does not control survive


def test_form_edit_rewrites_only_form_keys():
    form = forms.yaml_to_form(MERGEKIT)
    rows = [*form.rows, ["org/extra", 0.1] + [None] * (len(forms.source_columns()) - 2)]
    text = forms.form_to_yaml(MERGEKIT, "task_arithmetic", "org/base", rows, form.values)
    recipe = forms.parse_recipe(forms.load_yaml_mapping(text))
    assert recipe.merge_method == "task_arithmetic"
    assert [s.model for s in recipe.models] == ["org/math", "org/code", "org/extra"]
    assert "density" not in recipe.models[0].parameters  # not a task_arithmetic parameter
    assert recipe.dtype == "bfloat16"


def test_out_of_range_parameter_is_a_recipe_error():
    with pytest.raises(forms.RecipeError, match="density"):
        forms.yaml_to_form(MERGEKIT.replace("density: 0.5", "density: 1.5"))


def test_soup_choice_is_marked_in_the_yaml():
    text = forms.form_to_yaml("", forms.GREEDY_SOUP, "", [["org/a"], ["org/b"]], [])
    assert forms.is_soup(text)
    assert "merge_method: linear" in text
    assert forms.yaml_to_form(text, soup=True).method == forms.GREEDY_SOUP


def test_settings_come_from_the_environment(tmp_path):
    env = {"HUBMERGE_DATA_DIR": str(tmp_path), "HUBMERGE_CONCURRENCY": "3",
           "HF_ENDPOINT": "http://127.0.0.1:9", "HUBMERGE_PORT": "8000"}  # fmt: skip
    settings = read_settings(env)
    assert settings.data_dir == tmp_path
    assert (settings.concurrency, settings.port) == (3, 8000)
    assert settings.hub_endpoint == "http://127.0.0.1:9"
    assert not settings.on_spaces
    assert settings.allow_local_paths
    space = {**env, "SYSTEM": "spaces", "SPACE_ID": "me/app", "OAUTH_CLIENT_ID": "x"}
    spaces = read_settings({**space, "OAUTH_CLIENT_SECRET": "s"})
    assert spaces.on_spaces
    assert spaces.oauth_client == ("x", "s")
    assert "'s'" not in repr(spaces)  # the client secret never shows in logs
    assert not spaces.allow_local_paths
    # gradio mocks sign-in outside Spaces (SYSTEM unset): then the token field stays
    assert not read_settings({**space, "SYSTEM": ""}).on_spaces
    with pytest.raises(ValueError, match="HUBMERGE_CONCURRENCY"):
        read_settings({**env, "HUBMERGE_CONCURRENCY": "many"})


def test_build_demo_constructs_without_launching_and_keeps_history(tmp_path):
    from app.identity import LOCAL
    from app.ui import build_demo

    settings = Settings(data_dir=tmp_path)
    demo = build_demo(settings)
    store = demo.runner.store
    job = store.create("merge", owner=LOCAL, recipe="merge_method: linear\n")  # in-process caller
    store.update(job.id, state="succeeded")
    demo.runner.shutdown()
    store.close()
    again = build_demo(settings)  # the app restarted on the same data dir
    from app.handlers import Handlers

    rows = Handlers(settings, again.runner).list_jobs(10)
    assert [row[0] for row in rows] == [job.id]
    assert rows[0][2] == "succeeded"
    again.runner.shutdown()


SLICED = """\
slices:
  - sources:
      - {model: org/a, layer_range: [0, 2]}
  - sources:
      - {model: org/b, layer_range: [1, 3]}
merge_method: passthrough
"""


def test_form_never_overwrites_a_slices_recipe(tmp_path):
    from app.handlers_recipe import RecipeHandlers

    assert forms.has_slices(SLICED)
    assert not forms.has_slices("merge_method: linear\nmodels: [{model: a}]\n")
    assert not forms.has_slices("{broken")
    handlers = RecipeHandlers()
    handlers.settings = Settings(data_dir=tmp_path)
    values = [f.default for f in forms.param_fields()]
    assert handlers.form_to_yaml(SLICED, "linear", "", [["org/c", 1.0]], *values) == SLICED
    plain = handlers.form_to_yaml("", "linear", "", [["org/c", 1.0]], *values)
    assert "org/c" in plain
