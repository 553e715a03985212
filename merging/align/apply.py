"""Write B permuted into A's basis: same tensor names, order, shapes and dtypes, as gathers."""

from __future__ import annotations

from pathlib import Path

from merging.align.perms import Permutations
from merging.align.spec import Axis
from merging.io.source import CheckpointSource
from merging.io.writer import DEFAULT_SHARD_SIZE, ShardWriter
from merging.outputs import TOKENIZER_FILES

COPIED_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def write_aligned(
    model: CheckpointSource,
    axes: dict[str, tuple[Axis, ...]],
    perms: Permutations,
    destination: Path,
    *,
    files: dict[str, str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> Path:
    """Stream every tensor of ``model`` through its gathers into ``destination`` (atomic: the
    folder appears only when complete). Config, generation config and tokenizer files are
    copied unchanged; ``files`` (name → text) are added.

    Returns:
        The written folder.
    """
    headers = list(model.headers.values())
    model.expect([h.name for h in headers])
    with ShardWriter(destination, headers, max_shard_bytes=shard_size) as writer:
        for header in headers:
            tensor = perms.apply(model.get(header.name), axes[header.name])
            writer.write(header.name, tensor.contiguous())
            model.release(header.name)
        for name in COPIED_FILES:
            source = Path(model.path) / name
            if source.is_file():
                writer.copy_file(source)
        for name, text in (files or {}).items():
            writer.add_file(name, text)
        return writer.finish()
