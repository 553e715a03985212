"""The demo suite's toy skills: prompts with one exact answer each, scored by exact match.

Two skills, each learnt by one demo fine-tune (``app.demo_zoo``) and tested by one
lm-evaluation-harness task (greedy generation up to the first ``.``, then exact match):

- ``math``: ``"double 7 is"`` → ``"14"`` (doubling 0…24);
- ``animals``: ``"the cow says"`` → ``"moo"`` (which animal makes which sound).

`ensure_demo_tasks` writes the items as jsonl and the task YAMLs (from
``evaluation/tasks/demo/_template.yaml``) into a folder for the harness's `include_path`.

>>> skill_items("math")[7]
('double 7 is', '14')
>>> skill_items("animals")[0]
('the cow says', 'moo')
"""

from __future__ import annotations

from pathlib import Path

import yaml

from evaluation.data import write_if_changed
from evaluation.errors import UnknownNameError

DEMO_TASK_PREFIX = "hubmerge_demo"
TEMPLATE = Path(__file__).parent / "tasks" / "demo" / "_template.yaml"
_FORMAT_VERSION = "1"

SOUNDS: dict[str, str] = {
    "cow": "moo",
    "dog": "woof",
    "cat": "meow",
    "duck": "quack",
    "sheep": "baa",
    "pig": "oink",
    "horse": "neigh",
    "owl": "hoot",
    "bee": "buzz",
    "frog": "croak",
    "lion": "roar",
    "snake": "hiss",
    "mouse": "squeak",
    "crow": "caw",
    "wolf": "howl",
    "hen": "cluck",
}
SKILLS = ("math", "animals")


def skill_items(skill: str) -> list[tuple[str, str]]:
    """Every (prompt, answer) pair of `skill`, in a fixed order.

    Raises:
        [`UnknownNameError`]: `skill` is not one of `SKILLS`.
    """
    if skill == "math":
        return [(f"double {n} is", str(2 * n)) for n in range(25)]
    if skill == "animals":
        return [(f"{article} {animal} says", sound) for article in ("the", "a")
                for animal, sound in SOUNDS.items()]  # fmt: skip
    raise UnknownNameError("demo skill", skill, list(SKILLS))


def skill_lines(skill: str) -> list[str]:
    """The skill's items as training sentences (``"3 plus 4 is 7."``)."""
    return [f"{prompt} {answer}." for prompt, answer in skill_items(skill)]


def task_name(skill: str) -> str:
    return f"{DEMO_TASK_PREFIX}_{skill}"


def demo_task_names() -> list[str]:
    """The harness task of each skill, `hubmerge_demo_<skill>`."""
    return [task_name(skill) for skill in SKILLS]


def write_demo_tasks(task_dir: str | Path) -> Path:
    """Write each skill's test items (jsonl) and task YAML into `task_dir`; return it."""
    import json

    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    write_if_changed(task_dir / "_template.yaml", TEMPLATE.read_text(encoding="utf-8"))
    for skill in SKILLS:
        data = task_dir / f"{task_name(skill)}.jsonl"
        rows = [{"prompt": p, "answer": a} for p, a in skill_items(skill)]
        write_if_changed(data, "".join(json.dumps(row) + "\n" for row in rows))
        config = {
            "include": "_template.yaml",
            "task": task_name(skill),
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "metadata": {"version": float(_FORMAT_VERSION), "skill": skill},
        }
        text = yaml.safe_dump(config, sort_keys=False)
        write_if_changed(task_dir / f"{task_name(skill)}.yaml", text)
    return task_dir


def ensure_demo_tasks(cache_dir: str | Path | None = None) -> Path:
    """The demo tasks' folder under `cache_dir` (default: `default_cache_dir()`), written
    or refreshed; pass it as the harness's `include_path`."""
    from evaluation.data import default_cache_dir

    root = Path(cache_dir if cache_dir is not None else default_cache_dir())
    return write_demo_tasks(root / "demo" / "tasks")
