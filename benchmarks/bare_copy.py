"""Lower bound for a merge: read every input file's bytes once and write the output's bytes.

No tensors, no parsing, no per-tensor copies: two reader threads read the input
``*.safetensors`` files (split between them, largest first) into reused buffers, as two ``cat``
processes would, while a writer thread writes as many bytes as the merged model has (one
output file per base shard, the same sizes, from a reused buffer). A merge reads and writes at
least this much, so no merge of the same models can be faster on the same machine. A recipe
with ``slices`` writes as many layers as its slices take (the base's per-layer bytes times
that count, plus its other tensors: the headers are read for the split, nothing else).

Nothing heavy is imported (no torch): the bound is the I/O, not an interpreter's start-up.

Usage: python benchmarks/bare_copy.py RECIPE OUT  (uses the recipe only for its local model
paths: ``base_model``, ``models[].model`` and the slices' sources)
"""

from __future__ import annotations

import json
import re
import struct
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


def _output_sizes(base: Path, recipe: dict) -> list[int]:
    """Bytes per output shard: the base's shards, scaled for the layers a slice plan takes."""
    shards = sorted(base.glob("*.safetensors"))
    sizes = [f.stat().st_size for f in shards]
    slices = recipe.get("slices") or []
    if not slices:
        return sizes
    layer_bytes, layers = 0, set()
    for f in shards:
        with open(f, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            found = re.match(r"model\.layers\.(\d+)\.", name)  # (the benchmark's Llamas)
            if found:
                layers.add(int(found.group(1)))
                start, stop = entry["data_offsets"]
                layer_bytes += stop - start
    taken = sum(b - a for a, b in (part["sources"][0]["layer_range"] for part in slices))
    extra = layer_bytes * taken // max(1, len(layers)) - layer_bytes
    total = sum(sizes)
    return [size + extra * size // total for size in sizes]


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
    sizes = _output_sizes(Path(base), recipe)
    threads = [threading.Thread(target=_read, args=(half,)) for half in halves]
    threads.append(threading.Thread(target=_write, args=(Path(sys.argv[2]), sizes)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
