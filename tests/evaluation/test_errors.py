import pytest

from evaluation.errors import (
    DataError,
    DataUnavailableError,
    EvaluationError,
    ModelLoadError,
    UnknownTaskError,
)


def test_unknown_task_suggests_close_names_and_stays_a_key_error():
    error = UnknownTaskError("hubmerge_mmlu_marketng", ["hubmerge_mmlu_marketing", "arc_easy"])
    assert isinstance(error, EvaluationError)
    assert isinstance(error, KeyError)
    assert "Did you mean 'hubmerge_mmlu_marketing'?" in str(error)
    assert error.suggestions == ["hubmerge_mmlu_marketing"]


@pytest.mark.parametrize(
    ("error", "builtin"),
    [(ModelLoadError, OSError), (DataError, ValueError), (DataUnavailableError, OSError)],
)
def test_errors_subclass_the_builtins_callers_catch(error, builtin):
    assert issubclass(error, EvaluationError)
    assert issubclass(error, builtin)
