"""Multi-stage recipes (mergekit-multi's format): stages in dependency order, names replaced by
their output folders, everything validated before the first merge, lazy re-runs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merging import MergeOptions, RecipeError, merge, parse_recipe
from merging.errors import OutputError
from merging.multi import check_stages, parse_multi, run_multi
from tests.helpers.tiny import state_dict

OPTIONS = MergeOptions(device="cpu", threads=1)


def _entry(model: str | Path, **parameters: float) -> dict[str, Any]:
    return {"model": str(model), "parameters": parameters}


def _stage_recipe(models: dict[str, Path], weight: float = 0.5) -> dict[str, Any]:
    entries = [_entry(models["ft1"], weight=weight), _entry(models["ft2"], weight=1 - weight)]
    return {"merge_method": "linear", "dtype": "float32", "models": entries}


def _final_recipe(models: dict[str, Path], blend: str) -> dict[str, Any]:
    entries = [_entry(blend, weight=1.0, density=0.5),
               _entry(models["ft3"], weight=0.5, density=0.5)]  # fmt: skip
    return {"merge_method": "ties", "base_model": str(models["base"]), "dtype": "float32",
            "models": entries}  # fmt: skip


def _documents(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def _same(a: Path, b: Path) -> bool:
    first, second = state_dict(a), state_dict(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_two_stage_recipe_equals_its_merges_run_by_hand(tiny_models, tmp_path):
    # the final document first: stages run after the stages they read, whatever the order
    text = _documents(_final_recipe(tiny_models, "blend"),
                      {"name": "blend", **_stage_recipe(tiny_models)})  # fmt: skip
    multi = parse_multi(text, tmp_path / "inter")
    assert [s.name for s in multi.stages] == ["blend", None]
    assert multi.stages[1].needs == ("blend",)
    assert multi.stages[1].recipe.models[0].model == str((tmp_path / "inter" / "blend").resolve())
    results = run_multi(multi, tmp_path / "final", options=OPTIONS)
    assert all(r is not None for r in results)
    by_hand = merge(parse_recipe(_stage_recipe(tiny_models)), tmp_path / "a", options=OPTIONS)
    final = parse_recipe(_final_recipe(tiny_models, str(by_hand.output)))
    merge(final, tmp_path / "b", options=OPTIONS)
    assert _same(tmp_path / "inter" / "blend", tmp_path / "a")
    assert _same(tmp_path / "final", tmp_path / "b")


def test_lazy_reruns_leave_up_to_date_stages_and_refuse_stale_ones(tiny_models, tmp_path):
    inter, final = tmp_path / "inter", tmp_path / "final"
    text = _documents({"name": "blend", **_stage_recipe(tiny_models)},
                      _final_recipe(tiny_models, "blend"))  # fmt: skip
    run_multi(parse_multi(text, inter), final, options=OPTIONS)
    stamp = (inter / "blend" / "model.safetensors").stat().st_mtime_ns
    seen: list[tuple[str | None, bool]] = []
    again = run_multi(parse_multi(text, inter), final, options=OPTIONS,
                      on_stage=lambda stage, _, go: seen.append((stage.name, go)))  # fmt: skip
    assert again == [None, None]
    assert seen == [("blend", False), (None, False)]
    assert (inter / "blend" / "model.safetensors").stat().st_mtime_ns == stamp
    changed = _documents({"name": "blend", **_stage_recipe(tiny_models, weight=0.8)},
                         _final_recipe(tiny_models, "blend"))  # fmt: skip
    with pytest.raises(OutputError, match=r"stage 'blend'.*another recipe"):
        run_multi(parse_multi(changed, inter), final, options=OPTIONS)
    shutil.rmtree(inter / "blend")  # blend is merged again: what reads it is stale
    with pytest.raises(OutputError, match=r"final merge.*before blend was merged again"):
        run_multi(parse_multi(text, inter), final, options=OPTIONS)
    assert (inter / "blend").is_dir()
    (final / "hubmerge_recipe.yaml").unlink()  # e.g. a folder mergekit wrote
    with pytest.raises(OutputError, match=r"final merge.*with no hubmerge_recipe\.yaml"):
        run_multi(parse_multi(text, inter), final, options=OPTIONS)
    before = state_dict(final)
    overwrite = MergeOptions(device="cpu", threads=1, overwrite=True)
    assert all(run_multi(parse_multi(changed, inter), final, options=overwrite))
    after = state_dict(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the new blend fed it


def test_every_model_reference_names_a_stage(tiny_models, tmp_path):
    sources = [{"model": "blend", "layer_range": [0, 2]},
               {"model": "blend+some/adapter", "layer_range": [1, 2]}]  # fmt: skip
    deep = {"merge_method": "passthrough", "tokenizer_source": "blend",
            "slices": [{"sources": [source]} for source in sources]}  # fmt: skip
    multi = parse_multi(_documents({"name": "blend", **_stage_recipe(tiny_models)}, deep),
                        tmp_path)  # fmt: skip
    final = multi.stages[1].recipe
    folder = str(tmp_path.resolve() / "blend")
    assert final.tokenizer_source == folder
    assert final.slices is not None
    assert [s.sources[0].model for s in final.slices] == [folder, folder]
    assert final.slices[1].sources[0].adapter == "some/adapter"
    keyword = {**_final_recipe(tiny_models, "blend"), "tokenizer_source": "base"}
    named_base = parse_multi(_documents({"name": "base", **_stage_recipe(tiny_models)}, keyword),
                             tmp_path)  # fmt: skip
    assert named_base.stages[1].recipe.tokenizer_source == "base"  # the keyword, not the stage


def test_checks_run_where_the_inputs_exist(tiny_models, tmp_path):
    text = _documents({"name": "blend", **_stage_recipe(tiny_models)},
                      _final_recipe(tiny_models, "blend"))  # fmt: skip
    multi = parse_multi(text, tmp_path / "inter")
    reports = check_stages(multi, tmp_path / "final")
    assert reports["blend"] is not None
    assert reports["blend"].ok
    assert reports[None] is None  # reads blend, not merged yet
    run_multi(multi, tmp_path / "final", options=OPTIONS)
    reports = check_stages(multi, tmp_path / "final")
    assert reports[None] is not None
    assert reports[None].ok


STAGE = {"merge_method": "linear", "models": [{"model": "org/a"}, {"model": "org/b"}]}


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([{"name": "x", **STAGE}, {"name": "x", **STAGE}], "two stages are named 'x'"),
        ([STAGE, STAGE], "two documents have no name"),
        ([{"name": "a", "merge_method": "linear", "models": [{"model": "b"}]},
          {"name": "b", "merge_method": "linear", "models": [{"model": "a"}]}],
         "cycle: a -> b -> a"),
        ([{"name": "org/x", **STAGE}], "must be a folder name"),
        ([{"name": "x", **STAGE, "merge_method": "tie"}], r"stage 'x': .*Did you mean 'ties'"),
        ([["not", "a", "mapping"]], "document 1: a recipe must be a YAML mapping"),
    ],
    ids=["duplicate", "two unnamed", "cycle", "path name", "bad stage", "not a mapping"],
)  # fmt: skip
def test_bad_multi_stage_recipes_fail_before_any_merge(tmp_path, docs, message):
    with pytest.raises(RecipeError, match=message):
        parse_multi(_documents(*docs), tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_unnamed_final_merge_needs_an_output_folder(tmp_path):
    multi = parse_multi(_documents(STAGE), tmp_path)
    with pytest.raises(RecipeError, match="give the output folder"):
        run_multi(multi, None)


names = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "a/b", "..", ""]), st.integers(),
                  st.lists(st.text(max_size=3), max_size=2))  # fmt: skip
mappings = st.dictionaries(st.text(max_size=4), st.text(max_size=4))
references = st.one_of(st.sampled_from(["a", "b", "c", "a+x/y", "org/m"]), st.integers(),
                       st.none(), mappings)  # fmt: skip


@st.composite
def _stage_documents(draw: st.DrawFn) -> list[Any]:
    docs: list[Any] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 9)) == 0:
            docs.append(draw(st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2))))
            continue
        doc: dict[str, Any] = {"merge_method": draw(st.sampled_from(["linear", "ties", "x"]))}
        if draw(st.booleans()):
            doc["name"] = draw(names)
        doc["models"] = [{"model": draw(references)} for _ in range(draw(st.integers(0, 3)))]
        for key in draw(st.lists(st.sampled_from(["base_model", "tokenizer_source"]),
                                 max_size=2)):  # fmt: skip
            doc[key] = draw(references)
        if draw(st.booleans()):
            doc["slices"] = [{"sources": [{"model": draw(references), "layer_range": [0, 1]}]}]
        docs.append(doc)
    return docs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stage_documents())
def test_arbitrary_multi_stage_documents_parse_or_are_refused(docs: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            multi = parse_multi(yaml.safe_dump_all(docs), folder)
        except RecipeError as err:
            message = str(err)
            assert message.strip(), "a RecipeError must say what is wrong"
            return
        order = [stage.name for stage in multi.stages]
        for index, stage in enumerate(multi.stages):  # each stage after what it reads
            assert all(order.index(need) < index for need in stage.needs)
