"""Lower bound for a merge: read every input byte once and write one output, no arithmetic.

Reads run ahead in two threads (as hubmerge's readers do) while the main thread writes, so the
bound is as parallel as the engine it bounds.

Usage: python benchmarks/bare_copy.py RECIPE OUT  (uses the recipe only for its model paths)
"""

from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from merging import load_recipe
from merging.io.source import CheckpointSource
from merging.io.writer import ShardWriter


def main() -> None:
    recipe = load_recipe(sys.argv[1])
    paths = [recipe.base_model or recipe.models[0].model] + [s.model for s in recipe.inputs()]
    sources = [CheckpointSource(p) for p in paths]
    headers = list(sources[0].headers.values())

    def read(name: str):  # a copy reads every page of every input
        return [s.get(name).clone() for s in sources]

    with ThreadPoolExecutor(2) as pool, ShardWriter(sys.argv[2], headers) as writer:
        pending = deque(pool.submit(read, h.name) for h in headers[:4])
        for index, header in enumerate(headers):
            tensors = pending.popleft().result()
            if index + 4 < len(headers):
                pending.append(pool.submit(read, headers[index + 4].name))
            writer.write(header.name, tensors[0])
        writer.finish()


if __name__ == "__main__":
    main()
