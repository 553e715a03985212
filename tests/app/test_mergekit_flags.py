"""``hubmerge merge`` takes mergekit-yaml's command line: the output as the second argument,
mergekit's options mapped to hubmerge's settings or answered with a note (never silent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from app.cli import build_parser, main
from app.commands import mergekit_flags
from merging import parse_recipe
from merging.outputs import TOKENIZER_FILES
from tests.helpers.tiny import state_dict


def _recipe(tmp_path: Path, models: dict[str, Path], name: str = "r", **extra: Any) -> str:
    entries = [{"model": str(models[name]), "parameters": {"density": 0.5, "weight": weight}}
               for name, weight in (("ft1", 0.6), ("ft2", 0.4))]  # fmt: skip
    data = {"merge_method": "dare_ties", "base_model": str(models["base"]), "models": entries,
            "dtype": "bfloat16", **extra}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _same(a: Path, b: Path) -> bool:
    first, second = state_dict(a), state_dict(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def test_lazymergekits_command_line_runs_as_written(tiny_models, tmp_path, capsys):
    recipe = _recipe(tmp_path, tiny_models)
    argv = ["--copy-tokenizer", "--allow-crimes", "--out-shard-size", "1B", "--lazy-unpickle"]
    assert main(["merge", recipe, str(tmp_path / "merge"), *argv]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert "--lazy-unpickle has no effect here" in notes[0]
    assert main(["merge", recipe, "-o", str(tmp_path / "plain")]) == 0
    assert _same(tmp_path / "merge", tmp_path / "plain")
    assert (tmp_path / "merge" / "tokenizer.json").is_file()
    written = yaml.safe_load((tmp_path / "merge" / "hubmerge_recipe.yaml").read_text())
    assert written["allow_crimes"] is True  # recorded with the recipe


def test_out_shard_size_counts_parameters_at_the_output_dtype(tiny_models, tmp_path):
    recipe = _recipe(tmp_path, tiny_models)  # bfloat16: 2 bytes a parameter
    assert main(["merge", recipe, str(tmp_path / "params"), "--out-shard-size", "15K"]) == 0
    assert main(["merge", recipe, str(tmp_path / "bytes"), "--shard-size", "30KB"]) == 0
    assert main(["merge", recipe, str(tmp_path / "one")]) == 0
    assert len(_shards(tmp_path / "params")) > 1
    assert _shards(tmp_path / "params") == _shards(tmp_path / "bytes")
    index = json.loads((tmp_path / "params" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads(
        (tmp_path / "bytes" / "model.safetensors.index.json").read_text()
    )["weight_map"]
    assert _shards(tmp_path / "one") == ["model.safetensors"]
    assert mergekit_flags.parse_kmb("500M") == 500_000_000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["merge", recipe, "o", "--out-shard-size", "1GB"])


def test_random_seed_is_the_recipes_seed(tiny_models, tmp_path):
    assert main(["merge", _recipe(tmp_path, tiny_models), str(tmp_path / "flag"),
                 "--random-seed", "7"]) == 0  # fmt: skip
    assert main(["merge", _recipe(tmp_path, tiny_models, "s7", seed=7), str(tmp_path / "key")]) == 0
    assert main(["merge", _recipe(tmp_path, tiny_models), str(tmp_path / "zero")]) == 0
    assert _same(tmp_path / "flag", tmp_path / "key")
    assert not _same(tmp_path / "flag", tmp_path / "zero")  # DARE's drops follow the seed


def test_no_copy_tokenizer_leaves_the_tokenizer_out_unless_the_recipe_builds_one(
    tiny_models, tmp_path, capsys
):
    assert main(["merge", _recipe(tmp_path, tiny_models), str(tmp_path / "bare"),
                 "--no-copy-tokenizer"]) == 0  # fmt: skip
    assert not any((tmp_path / "bare" / name).exists() for name in TOKENIZER_FILES)
    assert (tmp_path / "bare" / "config.json").is_file()
    templated = _recipe(tmp_path, tiny_models, "t", chat_template="chatml")
    assert main(["merge", templated, str(tmp_path / "templ"), "--no-copy-tokenizer"]) == 0
    assert "chat_template: not written" in (tmp_path / "templ" / "README.md").read_text()
    built = _recipe(tmp_path, tiny_models, "u", tokenizer_source="union")
    assert main(["merge", built, str(tmp_path / "union"), "--no-copy-tokenizer"]) == 0
    assert (tmp_path / "union" / "tokenizer.json").is_file()  # the rows follow it: written


def test_allow_crimes_merges_a_relabelled_architecture(tiny_models, tmp_path, capsys):
    mistral = tmp_path / "mistral"
    shutil.copytree(tiny_models["ft2"], mistral)
    config = json.loads((mistral / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (mistral / "config.json").write_text(json.dumps(config))
    recipe = _recipe(tmp_path, {**tiny_models, "ft2": mistral})
    assert main(["merge", recipe, str(tmp_path / "refused")]) == 1
    assert "--allow-crimes" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main(["check", "--allow-crimes", recipe]) == 0
    assert main(["merge", recipe, str(tmp_path / "crimes"), "--allow-crimes"]) == 0
    card = (tmp_path / "crimes" / "README.md").read_text()
    assert "allowed by allow_crimes" in card
    config = json.loads((tmp_path / "crimes" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # the reference's


def test_the_output_folder_may_follow_the_options(tiny_models, tmp_path, capsys):
    recipe = _recipe(tmp_path, tiny_models)  # as click lets mergekit-yaml take it
    assert main(["merge", recipe, "--lazy-unpickle", str(tmp_path / "late")]) == 0
    assert (tmp_path / "late" / "config.json").is_file()
    with pytest.raises(SystemExit):
        main(["merge", recipe, "--quiet", str(tmp_path / "x"), str(tmp_path / "y")])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_output_folder_is_given_once(tiny_models, tmp_path):
    recipe = _recipe(tmp_path, tiny_models)
    with pytest.raises(SystemExit, match="two output folders"):
        main(["merge", recipe, str(tmp_path / "a"), "-o", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="give the output folder"):
        main(["merge", recipe])
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def _applied(*argv: str, **settings: Any) -> tuple[Any, dict[str, Any], list[str]]:
    args = build_parser().parse_args(["merge", "r.yaml", "out", *argv])
    recipe = parse_recipe({"merge_method": "linear", "models": [{"model": "a/b"}]})
    return mergekit_flags.apply(args, recipe, {"device": args.device, **settings})


def test_device_flags_map_to_the_device():
    assert _applied("--cuda")[1]["device"] == "cuda"
    assert _applied("--gpu-rich")[1]["device"] == "cuda"
    assert _applied("--cuda", "--device", "cuda:1")[1]["device"] == "cuda:1"
    assert _applied("--device", "auto")[1]["device"] is None  # hubmerge's own pick
    assert _applied()[1] == {"device": None}
    assert _applied("-j", "3")[1]["threads"] == 3
    assert "--gpu-rich" in _applied("--gpu-rich")[2][0]


@pytest.mark.parametrize("flag", mergekit_flags.NO_EFFECT, ids=lambda f: f.name)
def test_every_option_without_effect_says_so(flag):
    spelled = f"--{flag.name}" if flag.when else f"--no-{flag.name}"
    argv = [spelled, "2" if flag.value is int else "x"] if flag.value is not None else [spelled]
    recipe, settings, notes = _applied(*argv)
    assert len(notes) == 1
    assert notes[0].startswith(f"{spelled} has no effect here: ")
    assert settings == {"device": None}
    assert recipe.allow_crimes is False
    if flag.value is None:  # the switch's other value is hubmerge's behaviour: no note
        other = f"--no-{flag.name}" if flag.when else f"--{flag.name}"
        assert _applied(other)[2] == []


def test_every_option_of_mergekits_merge_options_is_taken():
    # mergekit 0.1.x's MergeOptions fields (mergekit/options.py), less `verbosity` (-v) and
    # `device` (hubmerge's own --device)
    mergekit = {
        "allow_crimes", "transformers_cache", "lora_merge_cache", "lora_merge_dtype", "cuda",
        "low_cpu_memory", "out_shard_size", "copy_tokenizer", "clone_tensors",
        "trust_remote_code", "random_seed", "lazy_unpickle", "write_model_card",
        "safe_serialization", "quiet", "read_to_gpu", "multi_gpu", "num_threads", "gpu_rich",
        "async_write", "write_threads",
    }  # fmt: skip
    assert {f.name.replace("-", "_") for f in mergekit_flags.FLAGS} == mergekit
    args = build_parser().parse_args(["merge", "r.yaml", "out", "-v", "-v"])
    assert args.mergekit_verbosity == 2
