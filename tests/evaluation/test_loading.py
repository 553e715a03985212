import pytest
import torch
from lm_eval.api.instance import Instance

from evaluation.errors import ModelLoadError
from evaluation.harness import EvalOptions, evaluate_model, make_hflm
from evaluation.loading import input_device, load_model, load_tokenizer
from evaluation.scoring import Scorer

EXAMPLES = [{"input": "The cat sees the", "output": " dog near the river."}]


def test_a_model_offloaded_to_disk_scores_like_one_in_memory(tiny_model, tmp_path):
    in_memory = load_model(tiny_model, device="cpu")
    offloaded = load_model(
        tiny_model, device="auto", max_memory={"cpu": 1}, offload_folder=tmp_path / "offload"
    )
    assert "disk" in set(offloaded.hf_device_map.values())
    assert input_device(offloaded) == torch.device("cpu")  # not `meta`
    tokenizer = load_tokenizer(tiny_model)
    request = [Instance("loglikelihood", doc={}, arguments=("The cat sees", " the dog"), idx=0)]
    expected = make_hflm(in_memory, tokenizer, batch_size=1).loglikelihood(request)
    got = make_hflm(offloaded, tokenizer, batch_size=1).loglikelihood(request)
    assert got[0][0] == pytest.approx(expected[0][0], abs=1e-5)
    assert Scorer(offloaded, tokenizer).loss(EXAMPLES) == pytest.approx(
        Scorer(in_memory, tokenizer).loss(EXAMPLES), rel=1e-5
    )


def test_harness_run_with_disk_offload_matches(tiny_model, tiny_task_dir, tmp_path):
    common = {"tasks": ("tiny_animals",), "limit": 4, "include_paths": (tiny_task_dir,),
              "include_defaults": False}  # fmt: skip
    offloaded = EvalOptions(**common, max_memory={"cpu": 1}, offload_folder=tmp_path)
    in_memory = EvalOptions(**common, device="cpu")
    acc = [evaluate_model(tiny_model, o).get("tiny_animals", "acc").value
           for o in (offloaded, in_memory)]  # fmt: skip
    assert acc[0] == acc[1]


def test_missing_model_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(tmp_path / "nowhere", device="cpu")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(tmp_path, dtype="float99")
