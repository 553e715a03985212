"""Where a merge's CPU goes, per kernel stage: thread CPU seconds summed over every chunk.

Runs one merge in this process with the kernel's `reduce` and `reduce_into` (per pass: a
speculative output written during a pass counts as that pass), `end_pass` and `apply`
wrapped in per-thread CPU timers, and prints one JSON line: wall and process CPU seconds and
CPU seconds per stage ("other" is reading, writing, conversion and the driver). Run it against
another checkout with ``PYTHONPATH=/path/to/checkout`` to compare versions paired.

Usage:
    python benchmarks/merge_profile.py RECIPE OUT [--label NAME]

Not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from collections import defaultdict
from typing import Any

from merging import MergeOptions, load_recipe, merge
from merging.methods import _kernels

_totals: dict[str, float] = defaultdict(float)
_lock = threading.Lock()


def _timed(stage: str, fn: Any, *, by_step: bool = False) -> Any:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(self, *args, **kwargs)
        finally:
            spent = time.thread_time() - start
            key = f"{stage}.{args[0]}" if by_step else stage
            with _lock:
                _totals[key] += spent

    return wrapper


def _subclasses(cls: type) -> list[type]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]


def _instrument() -> None:
    """Wrap the stages of every kernel class (the methods each class defines itself, so an
    inherited stage is timed once)."""
    stages = {"reduce": "reduce", "reduce_into": "reduce", "end_pass": "end_pass",
              "apply": "apply", "apply_into": "apply"}  # fmt: skip
    for cls in _subclasses(_kernels.Kernel):
        for attr, stage in stages.items():
            if attr in vars(cls):
                wrapped = _timed(stage, vars(cls)[attr], by_step=stage == "reduce")
                setattr(cls, attr, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("out")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    _instrument()
    shutil.rmtree(args.out, ignore_errors=True)
    before = os.times()
    start = time.perf_counter()
    merge(load_recipe(args.recipe), args.out, options=MergeOptions(device="cpu"))
    wall = time.perf_counter() - start
    after = os.times()
    shutil.rmtree(args.out, ignore_errors=True)
    cpu = (after.user - before.user) + (after.system - before.system)
    stages = {k: round(v, 2) for k, v in sorted(_totals.items())}
    other = cpu - sum(_totals.values())
    print(json.dumps({"label": args.label, "wall": round(wall, 2), "cpu": round(cpu, 2),
                      **stages, "other": round(other, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
