"""Lower bound for a merge: read every input byte once and write one output, no arithmetic.

Usage: python benchmarks/bare_copy.py RECIPE OUT  (uses the recipe only for its model paths)
"""

from __future__ import annotations

import sys

from merging import load_recipe
from merging.io.source import CheckpointSource
from merging.io.writer import ShardWriter


def main() -> None:
    recipe = load_recipe(sys.argv[1])
    paths = [recipe.base_model or recipe.models[0].model] + [s.model for s in recipe.inputs()]
    sources = [CheckpointSource(p) for p in paths]
    headers = list(sources[0].headers.values())
    with ShardWriter(sys.argv[2], headers) as writer:
        for header in headers:
            tensors = [s.get(header.name) for s in sources]
            for t in tensors[1:]:
                t.clone()  # a copy reads every page of the input
            writer.write(header.name, tensors[0].clone())
        writer.finish()


if __name__ == "__main__":
    main()
