import pytest
import torch
from pydantic import ValidationError

from evaluation.errors import DataError
from evaluation.scoring import Example, Scorer, load_examples

EXAMPLES = [
    {"input": "The cat sees the dog near the", "output": " garden."},
    {"input": "The bird", "output": " likes the fish near the river."},
    {"input": "The horse finds the mouse near", "output": " the barn."},
]


@pytest.fixture(scope="module")
def scorer(tiny_model):
    return Scorer.from_pretrained(tiny_model, device="cpu", batch_size=2)


def reference_loss(scorer, examples):
    """Hand-computed: HF's own loss with every input position masked out (-100)."""
    total, count = 0.0, 0
    for example in examples:
        context = scorer.tokenizer(example["input"])["input_ids"]
        output = scorer.tokenizer(example["output"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context + output])
        labels = torch.tensor([[-100] * len(context) + output])
        with torch.no_grad():
            loss = scorer.model(input_ids=ids, labels=labels).loss
        total += float(loss) * len(output)
        count += len(output)
    return total / count


def test_loss_counts_only_output_tokens(scorer):
    expected = reference_loss(scorer, EXAMPLES)
    assert scorer.loss(EXAMPLES) == pytest.approx(expected, rel=1e-5)
    # scoring input tokens too would give a different number
    whole = [{"input": "", "output": e["input"] + e["output"]} for e in EXAMPLES]
    assert scorer.loss(whole) != pytest.approx(expected, rel=1e-3)


def test_loss_does_not_depend_on_batching_or_padding(scorer, tiny_model):
    single = Scorer(scorer.model, scorer.tokenizer, batch_size=1)
    assert single.loss(EXAMPLES) == pytest.approx(scorer.loss(EXAMPLES), rel=1e-5)


def test_exact_match_is_the_teacher_forced_greedy_check(scorer):
    context = scorer.tokenizer("The cat sees the")["input_ids"]
    with torch.no_grad():
        generated = scorer.model.generate(
            torch.tensor([context]),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=scorer.tokenizer.pad_token_id,
        )[0, len(context) :].tolist()
    greedy_text = scorer.tokenizer.decode(generated)
    if scorer.tokenizer(greedy_text, add_special_tokens=False)["input_ids"] != generated:
        pytest.skip("greedy continuation does not re-tokenize identically")
    hit = {"input": "The cat sees the", "output": greedy_text}
    miss = {"input": "The cat sees the", "output": greedy_text + greedy_text}
    assert scorer.exact_match([hit]) == 1.0
    assert scorer.exact_match([hit, miss]) == 0.5


def test_multiple_choice_matches_the_harness_on_the_same_task(scorer, tiny_model, tiny_task_dir):
    from evaluation.harness import evaluate
    from tests.evaluation.conftest import tiny_task_docs

    docs = tiny_task_docs(12)[:8]
    examples = [
        {
            "input": f"Question: {d['question']}\nAnswer:",
            "output": " " + d["choices"][d["answer"]],
            "choices": [" " + c for c in d["choices"]],
        }
        for d in docs
    ]
    harness = (
        evaluate(
            tiny_model,
            tasks=["tiny_animals"],
            limit=8,
            include_path=tiny_task_dir,
            device="cpu",
            include_defaults=False,
        )
        .models[0]
        .get("tiny_animals", "acc")
    )
    assert scorer.multiple_choice(examples) == pytest.approx(harness.value)
    assert scorer.score(examples, metric="multiple_choice") == pytest.approx(harness.value)


def test_examples_are_validated(write_examples):
    path = write_examples([{"input": "a", "output": "b"}, {"input": "a", "outptu": "b"}])
    with pytest.raises(DataError, match=":2:"):
        load_examples(path)
    with pytest.raises(ValidationError, match="not one of the choices"):
        Example(input="q", output="x", choices=("a", "b"))
    assert load_examples(write_examples([{"input": "a", "output": "b"}])) == [
        Example(input="a", output="b")
    ]


def test_multiple_choice_needs_choices(scorer):
    with pytest.raises(DataError, match="choices"):
        scorer.multiple_choice(EXAMPLES)
