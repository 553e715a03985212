"""Lower bound for a merge: read every input file's bytes once and write the output's bytes.

No tensors, no parsing, no per-tensor copies: two reader threads read the input
``*.safetensors`` files (split between them, largest first) into reused buffers, as two ``cat``
processes would, while a writer thread writes as many bytes as the merged model has (one
output file per base shard, the same sizes, from a reused buffer). A merge reads and writes at
least this much, so no merge of the same models can be faster on the same machine.

Nothing heavy is imported (no torch): the bound is the I/O, not an interpreter's start-up.

Usage: python benchmarks/bare_copy.py RECIPE OUT  (uses the recipe only for its local model
paths: ``base_model``, ``models[].model`` and the slices' sources)
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import yaml

BUFFER = 16 << 20  # bytes per read / write call


def _read(files: list[Path]) -> None:
    buffer = bytearray(BUFFER)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def _write(out: Path, sizes: list[int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    view = memoryview(bytearray(BUFFER))
    for index, size in enumerate(sizes, start=1):
        with open(out / f"model-{index:05d}-of-{len(sizes):05d}.safetensors", "wb") as f:
            left = size
            while left:
                left -= f.write(view[: min(left, BUFFER)])


def main() -> None:
    recipe = yaml.safe_load(Path(sys.argv[1]).read_text())
    names = [m["model"] for m in recipe.get("models") or []]
    names += [s["model"] for part in recipe.get("slices") or [] for s in part["sources"]]
    base = recipe.get("base_model") or names[0]
    models = [base] + [m for m in names if m != base]
    files = sorted(
        (f for m in models for f in Path(m).glob("*.safetensors")),
        key=lambda f: f.stat().st_size,
        reverse=True,
    )
    halves: list[list[Path]] = [[], []]
    loads = [0, 0]
    for f in files:  # largest first onto the less loaded reader
        lighter = loads.index(min(loads))
        halves[lighter].append(f)
        loads[lighter] += f.stat().st_size
    sizes = [f.stat().st_size for f in sorted(Path(base).glob("*.safetensors"))]
    threads = [threading.Thread(target=_read, args=(half,)) for half in halves]
    threads.append(threading.Thread(target=_write, args=(Path(sys.argv[2]), sizes)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
