"""``hubmerge multi``: mergekit-multi's command line (``-I``, ``--out-path``, ``--lazy``)."""

from __future__ import annotations

import pytest
import yaml

from app.cli import main


def _recipe(tmp_path, models) -> str:
    blend = {"name": "blend", "merge_method": "linear", "dtype": "bfloat16",
             "models": [{"model": str(models["ft1"])}, {"model": str(models["ft2"])}]}  # fmt: skip
    blended = {"model": "blend", "parameters": {"weight": 0.7}}
    final = {"merge_method": "task_arithmetic", "base_model": str(models["base"]),
             "dtype": "bfloat16", "models": [blended]}  # fmt: skip
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump_all([blend, final]))
    return str(path)


def test_multi_merges_each_stage_then_leaves_them(tiny_models, tmp_path, capsys):
    recipe, inter, out = _recipe(tmp_path, tiny_models), tmp_path / "inter", tmp_path / "out"
    argv = ["multi", recipe, "-I", str(inter), "--out-path", str(out), "--quiet"]
    assert main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "stage blend:" in text
    assert "final merge: reads blend; checked once merged" in text
    assert not inter.exists() or not any(inter.iterdir())
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "stage blend: merging into" in text
    assert "2 of 2 stage(s) merged" in text
    assert (inter / "blend" / "config.json").is_file()
    assert (out / "README.md").is_file()
    assert main(argv) == 0
    assert "0 of 2 stage(s) merged" in capsys.readouterr().out
    assert main([*argv, "--no-lazy"]) == 0  # mergekit's --no-lazy: merged again over them
    assert "2 of 2 stage(s) merged" in capsys.readouterr().out


def test_multi_needs_an_output_for_its_unnamed_final_merge(tiny_models, tmp_path):
    with pytest.raises(SystemExit, match="unnamed final merge"):
        main(["multi", _recipe(tmp_path, tiny_models), "-I", str(tmp_path / "i")])


def test_merge_points_a_multi_document_recipe_to_multi(tiny_models, tmp_path, capsys):
    assert main(["merge", _recipe(tmp_path, tiny_models), str(tmp_path / "o")]) == 1
    assert "runs with `hubmerge multi`" in capsys.readouterr().err
