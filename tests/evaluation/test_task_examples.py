"""Harness tasks as scoring examples: the documents lm-eval scores, with its prompts, and the
fast scorer's numbers on them equal the harness's own (per document)."""

from __future__ import annotations

import pytest

from evaluation import DataError
from evaluation.demo_tasks import skill_items
from evaluation.harness import EvalOptions, make_hflm, run_harness
from evaluation.scoring import Scorer, as_examples
from evaluation.task_examples import task_examples

from .conftest import tiny_task_docs


def _options(tiny_task_dir, **values):
    return EvalOptions(tasks=("tiny_animals",), include_paths=(tiny_task_dir,),
                       include_defaults=False, **values)  # fmt: skip


def test_multiple_choice_documents_become_examples_with_their_choices(tiny_task_dir):
    rows = task_examples(_options(tiny_task_dir, limit=5))
    docs = tiny_task_docs(12)[:5]  # the first `limit` documents, in order
    assert len(rows) == 5
    for row, doc in zip(rows, docs, strict=True):
        assert row["input"] == f"Question: {doc['question']}\nAnswer:"
        assert row["choices"] == [f" {c}" for c in doc["choices"]]  # the target delimiter
        assert row["output"] == f" {doc['choices'][doc['answer']]}"
        assert row["task"] == "tiny_animals"
    as_examples([{k: v for k, v in row.items() if k != "task"} for row in rows])  # valid rows


def test_few_shot_contexts_are_the_harness_ones(tiny_task_dir):
    rows = task_examples(_options(tiny_task_dir, limit=3, num_fewshot=2))
    for row in rows:
        assert row["input"].count("Question:") == 3  # two solved examples, then the question
        assert row["input"].endswith("\nAnswer:")


def test_generation_tasks_give_the_delimited_target():
    rows = task_examples(EvalOptions(tasks=("hubmerge_demo_math",), limit=4))
    expected = [(prompt, f" {answer}") for prompt, answer in skill_items("math")[:4]]
    assert [(r["input"], r["output"]) for r in rows] == expected
    assert all("choices" not in r for r in rows)


def test_an_unknown_output_type_is_refused():
    from types import SimpleNamespace

    from evaluation.task_examples import document_examples

    task = SimpleNamespace(OUTPUT_TYPE="something_else", config=SimpleNamespace(task="odd"))
    with pytest.raises(DataError, match="cannot be turned into examples"):
        document_examples(task, [SimpleNamespace(doc_id=0)])


@pytest.mark.slow
def test_the_scorer_on_these_examples_agrees_with_the_harness_document_by_document(
    tiny_model, tiny_task_dir
):
    """The log-likelihood of every choice, and so the accuracy, is the harness's own."""
    from evaluation.loading import load_model, load_tokenizer

    options = _options(tiny_task_dir, limit=12)
    rows = task_examples(options)
    model = load_model(tiny_model, device="cpu", dtype="float32")
    tokenizer = load_tokenizer(tiny_model)
    results = run_harness(make_hflm(model, tokenizer, batch_size=4), options, log_samples=True)
    samples = sorted(results["samples"]["tiny_animals"], key=lambda s: s["doc_id"])
    scorer = Scorer(model, tokenizer)
    assert len(samples) == len(rows) == 12
    for row, sample in zip(rows, samples, strict=True):
        ours = [c.logprob for c in scorer.continuations([(row["input"], c)
                                                         for c in row["choices"]])]  # fmt: skip
        theirs = [float(r[0]) for r in sample["filtered_resps"]]
        assert ours == pytest.approx(theirs, abs=1e-4)
    accuracy = scorer.multiple_choice(as_examples(
        [{k: v for k, v in row.items() if k != "task"} for row in rows]))  # fmt: skip
    assert accuracy == pytest.approx(results["results"]["tiny_animals"]["acc,none"])
