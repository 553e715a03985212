import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from evaluation.ensemble import EnsembleLM, evaluate_ensemble, mean_log_probs
from evaluation.harness import EvalOptions, evaluate
from evaluation.loading import load_model, load_tokenizer

PAIRS = [
    ("The cat sees the dog near the", " garden."),
    ("Question: Where does the bird see the fish?\nAnswer:", " river"),
    ("The horse", " finds the mouse near the barn."),
]


def requests():
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(PAIRS)
    ]


@pytest.fixture(scope="module")
def loaded(tiny_models):
    tokenizer = load_tokenizer(tiny_models["a"])
    models = {name: load_model(path, device="cpu") for name, path in tiny_models.items()}
    return models, tokenizer


def test_mean_log_probs_is_the_log_of_the_mean_probability():
    logits = [torch.randn(2, 3, 5), torch.randn(2, 3, 5)]
    expected = torch.log((logits[0].softmax(-1) + logits[1].softmax(-1)) / 2)
    assert torch.allclose(mean_log_probs(logits), expected, atol=1e-6)


def test_ensemble_of_a_model_with_itself_equals_the_model(loaded):
    models, tokenizer = loaded
    single = HFLM(pretrained=models["a"], tokenizer=tokenizer, batch_size=4)
    double = EnsembleLM([models["a"], models["a"]], tokenizer, batch_size=4)
    for (ll_single, greedy_single), (ll_double, greedy_double) in zip(
        single.loglikelihood(requests()), double.loglikelihood(requests()), strict=True
    ):
        assert ll_double == pytest.approx(ll_single, abs=1e-4)
        assert greedy_double == greedy_single


def test_ensemble_log_likelihood_is_at_least_the_members_mean(loaded):
    """Jensen: log mean p >= mean log p, token by token, hence for whole continuations."""
    models, tokenizer = loaded
    members = [models["a"], models["b"]]
    ensemble = [ll for ll, _ in EnsembleLM(members, tokenizer).loglikelihood(requests())]
    each = [
        [ll for ll, _ in HFLM(pretrained=m, tokenizer=tokenizer).loglikelihood(requests())]
        for m in members
    ]
    for index, value in enumerate(ensemble):
        assert value >= (each[0][index] + each[1][index]) / 2 - 1e-4
        assert value != pytest.approx(each[0][index], abs=1e-3)


def test_harness_accuracy_of_the_self_ensemble_equals_the_model(tiny_model, tiny_task_dir):
    options = EvalOptions(
        tasks=("tiny_animals",),
        limit=8,
        include_paths=(tiny_task_dir,),
        device="cpu",
        include_defaults=False,
    )
    ensemble = evaluate_ensemble([tiny_model, tiny_model], options).models[0]
    single = evaluate(
        tiny_model,
        tasks=["tiny_animals"],
        limit=8,
        include_path=tiny_task_dir,
        device="cpu",
        include_defaults=False,
    ).models[0]
    assert ensemble.label == "ensemble"
    assert ensemble.get("tiny_animals", "acc").value == single.get("tiny_animals", "acc").value
