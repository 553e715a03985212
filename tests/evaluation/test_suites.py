import pytest
from pydantic import ValidationError

from evaluation.data import MMLU_SUBJECTS, mmlu_task_names
from evaluation.errors import EvaluationError, UnknownSuiteError
from evaluation.suites import SUITES, Suite, SuiteRegistry, get_suite, suite_names


def test_quick_suite_uses_local_mmlu_subjects_with_fixed_limit():
    quick = get_suite("quick")
    assert quick.limit == 20
    assert quick.num_fewshot == 0
    assert len(quick.tasks) >= 3
    assert set(quick.tasks) <= set(mmlu_task_names())


def test_hub_suite_names_the_harness_tasks_for_the_same_subjects():
    local = [t.removeprefix("hubmerge_mmlu_") for t in get_suite("quick").tasks]
    hub = [t.removeprefix("mmlu_") for t in get_suite("quick_hub").tasks]
    assert local == hub
    assert set(hub) <= set(MMLU_SUBJECTS)


def test_unknown_suite_says_did_you_mean():
    with pytest.raises(UnknownSuiteError, match="Did you mean 'quick'"):
        get_suite("quik")


def test_registry_rejects_duplicates():
    registry = SuiteRegistry()
    registry.register(Suite(name="one", tasks=("t",)))
    with pytest.raises(EvaluationError, match="already registered"):
        registry.register(Suite(name="one", tasks=("u",)))


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "Bad Name", "tasks": ("t",)},
        {"name": "ok", "tasks": ()},
        {"name": "ok", "tasks": ("t",), "limit": 0},
        {"name": "ok", "tasks": ("t",), "typo": 1},
    ],
)
def test_suite_validation(fields):
    with pytest.raises(ValidationError):
        Suite(**fields)


def test_names_are_sorted_and_complete():
    assert suite_names() == sorted(suite_names())
    assert len(suite_names()) == len(SUITES)
    assert "quick" in SUITES
