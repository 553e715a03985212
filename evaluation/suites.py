"""Named benchmark suites: which harness tasks, how many items, how many shots, which seed.

A suite is data, not code: the app offers suites by name, and a run of a suite on two
models scores exactly the same items, so their numbers can be compared.

>>> get_suite("quick").limit
20
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from evaluation.errors import EvaluationError, UnknownSuiteError

DEFAULT_SEED = 1234

QUICK_SUBJECTS = (
    "high_school_geography",
    "marketing",
    "world_religions",
    "elementary_mathematics",
)


class Suite(BaseModel):
    """A named benchmark subset.

    Args:
        name (`str`): registry name, lower_snake_case.
        description (`str`): one line shown in the app.
        tasks (`tuple[str, ...]`): lm-evaluation-harness task or group names.
        limit (`int`, *optional*): items per task (the first `limit`, in dataset order);
            `None` runs every item.
        num_fewshot (`int`): in-context examples per item.
        seed (`int`): seeds the harness's RNGs (few-shot sampling).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    tasks: tuple[str, ...] = Field(min_length=1)
    limit: int | None = Field(default=None, gt=0)
    num_fewshot: int = Field(default=0, ge=0)
    seed: int = DEFAULT_SEED


class SuiteRegistry:
    """Suites by name; rejects duplicates and answers unknown names with "did you mean"."""

    def __init__(self) -> None:
        self._suites: dict[str, Suite] = {}

    def register(self, suite: Suite) -> Suite:
        if suite.name in self._suites:
            raise EvaluationError(f"suite {suite.name!r} is already registered")
        self._suites[suite.name] = suite
        return suite

    def get(self, name: str) -> Suite:
        try:
            return self._suites[name]
        except KeyError:
            raise UnknownSuiteError(name, self._suites) from None

    def names(self) -> list[str]:
        return sorted(self._suites)

    def __contains__(self, name: object) -> bool:
        return name in self._suites

    def __len__(self) -> int:
        return len(self._suites)


SUITES = SuiteRegistry()

SUITES.register(
    Suite(
        name="quick",
        description="4 MMLU subjects × 20 questions, zero-shot (local data, works offline)",
        tasks=tuple(f"hubmerge_mmlu_{subject}" for subject in QUICK_SUBJECTS),
        limit=20,
    )
)
SUITES.register(
    Suite(
        name="quick_hub",
        description="the `quick` subjects from the harness's own MMLU (needs the Hub)",
        tasks=tuple(f"mmlu_{subject}" for subject in QUICK_SUBJECTS),
        limit=20,
    )
)
SUITES.register(
    Suite(
        name="mmlu_small",
        description="all 57 MMLU subjects × 10 questions, zero-shot (local data)",
        tasks=("hubmerge_mmlu",),
        limit=10,
    )
)
SUITES.register(
    Suite(
        name="mmlu_5shot",
        description="all 57 MMLU subjects × 20 questions, 5-shot (local data)",
        tasks=("hubmerge_mmlu",),
        limit=20,
        num_fewshot=5,
    )
)
SUITES.register(
    Suite(
        name="demo",
        description="the demo's two toy skills (doubling, animal sounds), exact match (local)",
        tasks=("hubmerge_demo_math", "hubmerge_demo_animals"),
    )
)


def get_suite(name: str) -> Suite:
    """Look up a registered suite.

    Raises:
        [`UnknownSuiteError`]: no suite has that name (the message suggests close ones).
    """
    return SUITES.get(name)


def suite_names() -> list[str]:
    """Names of all registered suites, sorted."""
    return SUITES.names()
