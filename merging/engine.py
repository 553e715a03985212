"""The streaming merge: plan from headers, then per tensor gather → method → cast → write.

Memory stays bounded by a few tensors per source: sources are memory-mapped, a small pool of
reader threads prefetches the next tensors (I/O and the float32 up-cast overlap the method's
arithmetic), and the writer streams each result straight into its shard.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.card import render_card
from merging.check import CompatibilityReport, compare_sources
from merging.errors import MergeCancelled, RecipeError
from merging.io.headers import TensorHeader
from merging.io.source import TensorSource
from merging.io.writer import DEFAULT_SHARD_SIZE, ShardWriter
from merging.methods import get_method, random_stream, resolve_params
from merging.recipe import Recipe
from merging.sources import (
    ResolvedModel,
    open_source,
    resolve_model,
    source_info,
    tokenizer_dir,
)
from merging.streaming import (
    Pipeline,
    Prefetcher,
    chunk_size,
    expect_reads,
    release_tensor,
    run_kernel,
    touch_pages,
)

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Progress:
    """One progress report: ``stage`` is "download" or "merge"; bytes are output bytes."""

    stage: str
    done: int
    total: int
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass
class MergeOptions:
    """How to run a merge (the recipe says *what* to merge).

    Attributes:
        device: "cpu", "cuda", "cuda:1", …; `None` picks the accelerator accelerate finds.
        shard_size: output shard cap in bytes.
        overwrite: replace an existing output folder (only once the new one is complete).
        token: Hub token for private/gated sources; used per call, never stored.
        endpoint: Hub endpoint (default: huggingface_hub's, i.e. ``HF_ENDPOINT``).
        progress: called after each tensor (and during downloads).
        cancel: set it to stop the merge; the output is then left absent.
        prefetch: tensors read ahead per reader thread.
        readers: reader threads.
        threads: compute threads (default: every core on CPU, 1 on an accelerator); on CPU each
            works on its own chunks with torch single-threaded per op, which stays fast when
            the machine is busy (OpenMP-parallel small ops do not).
    """

    device: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    overwrite: bool = False
    token: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    progress: ProgressCallback | None = None
    cancel: threading.Event | None = None
    prefetch: int = 2
    readers: int = 2
    threads: int | None = None


@dataclass(frozen=True)
class MergeResult:
    output: Path
    tensors: int
    bytes_written: int
    seconds: float
    resolved: dict[str, str]
    report: CompatibilityReport


def layer_index(tensor_name: str) -> int | None:
    match = _LAYER.search(tensor_name)
    return int(match.group(1)) if match else None


def layer_position(tensor_name: str, num_layers: int) -> float:
    """Gradient position t in [0, 1]: i/(n−1) for layer i of n; 0 outside the layers."""
    index = layer_index(tensor_name)
    if index is None or num_layers <= 1:
        return 0.0
    return min(1.0, index / (num_layers - 1))


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    from accelerate import PartialState

    return torch.device(PartialState().device)


def align_rows(tensors: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """Give every tensor ``rows`` rows: cut extra rows, fill missing ones from the first tensor
    (reference first) that has them, so a filled row contributes a zero task vector."""
    out = []
    for tensor in tensors:
        if tensor.shape[0] >= rows:
            out.append(tensor[:rows])
            continue
        donor = next(t for t in tensors if t.shape[0] >= rows)
        out.append(torch.cat([tensor, donor[tensor.shape[0] : rows]]))
    return out


def merge(
    recipe: Recipe, output: Path | str, *, options: MergeOptions | None = None
) -> MergeResult:
    """Run a recipe and write the merged model to ``output``.

    Args:
        recipe (`Recipe`): a validated recipe (see `merging.load_recipe`).
        output (`Path`): destination folder; appears only once complete.
        options (`MergeOptions`, *optional*): device, shard size, progress, cancellation, token.

    Returns:
        `MergeResult` with the output path, counts, timing and the pinned source revisions.

    Raises:
        `RecipeError`, `IncompatibleModelsError`, `CheckpointError`, `OutputError`, `HubError`,
        `MergeCancelled`.

    Example:
        >>> from merging import load_recipe, merge
        >>> merge(load_recipe("examples/ties.yaml"), "out/merged")  # doctest: +SKIP
    """
    options = options or MergeOptions()
    started = time.perf_counter()
    method = get_method(recipe.merge_method)
    resolved = _resolve_all(recipe, options)
    base_key = recipe.base_model if method.needs_base else None
    specs = recipe.inputs() if method.needs_base else list(recipe.models)
    open_ = _source_opener(recipe, resolved)
    base = open_(base_key) if base_key else None
    inputs = [open_(spec) for spec in specs]
    reference = base or inputs[0]
    report = compare_sources(
        source_info(reference),
        [source_info(s) for s in ([*inputs] if base else inputs[1:])],
        out_dtype=recipe.output_dtype(_config_dtype(reference.config)),
        vocab_policy=recipe.vocab_policy,
        prefetch=options.prefetch,
    )
    report.raise_for_errors()
    device = pick_device(options.device)
    compute = TORCH_DTYPES[recipe.compute_dtype]
    all_sources = [s for s in (base, *inputs) if s is not None]
    num_layers = _num_layers(reference)

    def load(name: str) -> list[torch.Tensor]:
        tensors = [src.get(name) for src in all_sources]
        for tensor in tensors:
            touch_pages(tensor)
        return tensors

    headers = report.output
    total_bytes = sum(h.nbytes for h in headers)
    out_dtype = TORCH_DTYPES[recipe.output_dtype(_config_dtype(reference.config))]
    threads = options.threads or ((os.cpu_count() or 1) if device.type == "cpu" else 1)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="merge") if threads > 1 else None
    context = _TensorContext(
        recipe, method, specs, base is not None, num_layers, device, compute, pool
    )
    for source in all_sources:
        expect_reads(source, [h.name for h in headers])
    torch_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    prefetcher = Prefetcher([h.name for h in headers], load, options.readers, options.prefetch)
    try:
        with ShardWriter(
            output, headers, max_shard_bytes=options.shard_size, overwrite=options.overwrite
        ) as writer:
            pipeline = Pipeline(context, max((h.numel for h in headers), default=0), out_dtype,
                                 in_flight=2 if threads > 1 else 1)  # fmt: skip
            bytes_done = written = 0

            def write_oldest() -> None:
                nonlocal bytes_done, written
                header, result = pipeline.oldest()
                writer.write(header.name, result)
                pipeline.recycle()
                for source in all_sources:
                    release_tensor(source, header.name)
                bytes_done += header.nbytes
                written += 1
                if options.progress is not None:
                    options.progress(
                        Progress("merge", written, len(headers), bytes_done, total_bytes)
                    )

            try:
                for header in headers:
                    if options.cancel is not None and options.cancel.is_set():
                        raise MergeCancelled(f"merge into {output} cancelled; nothing was written")
                    pipeline.submit(header, prefetcher.next())
                    while pipeline.full():
                        write_oldest()
                while len(pipeline):
                    write_oldest()
            finally:
                pipeline.close()
            _write_extras(writer, recipe, method, reference, resolved, report)
            path = writer.finish()
    finally:
        prefetcher.close()
        if pool is not None:
            pool.shutdown()
        torch.set_num_threads(torch_threads)
    pinned = {key: model.pinned for key, model in resolved.items()}
    seconds = time.perf_counter() - started
    logger.info("merged %d tensors into %s in %.1f s", len(headers), path, seconds)
    return MergeResult(path, len(headers), total_bytes, seconds, pinned, report)


@dataclass(frozen=True)
class _TensorContext:
    """What every tensor's merge needs besides its data."""

    recipe: Recipe
    method: Any
    specs: list[Any]
    has_base: bool
    num_layers: int
    device: torch.device
    compute: torch.dtype
    pool: ThreadPoolExecutor | None

    def merge(
        self, header: TensorHeader, tensors: list[torch.Tensor], workspace: torch.Tensor
    ) -> torch.Tensor:
        if header.dtype not in ("F32", "F16", "BF16") or not tensors[0].is_floating_point():
            return tensors[0]
        t = layer_position(header.name, self.num_layers)
        params, per_source = resolve_params(self.method, self.recipe, self.specs, header.name, t)
        rng = random_stream(self.recipe.seed, header.name)
        if any(x.shape != header.shape for x in tensors):
            # vocab policies: rows cut or filled in the stored dtype, then merged in chunks
            tensors = align_rows(tensors, header.shape[0])
        kernel = None
        if self.method.kernel is not None:  # a factory may decline (None)
            kernel = self.method.kernel(params, per_source, rng, header.shape)
        if kernel is not None:
            flats = [x.reshape(-1) for x in tensors]
            out = workspace[: header.numel]
            run_kernel(
                kernel, flats, out, has_base=self.has_base, device=self.device,
                dtype=self.compute, pool=self.pool, chunk=chunk_size(self.device),
            )  # fmt: skip
            return out.view(header.shape)
        full = [x.to(device=self.device, dtype=self.compute) for x in tensors]
        base_tensor, inputs = (full[0], full[1:]) if self.has_base else (None, full)
        return self.method.fn(base_tensor, inputs, per_source, params, rng)


def _resolve_all(recipe: Recipe, options: MergeOptions) -> dict[str, ResolvedModel]:
    names = [recipe.base_model] if recipe.base_model else []
    names += [s.model for s in recipe.models] + [s.adapter for s in recipe.models if s.adapter]
    if recipe.tokenizer_source not in (None, "base"):
        names.append(recipe.tokenizer_source)
    resolved: dict[str, ResolvedModel] = {}
    for index, name in enumerate(dict.fromkeys(names)):

        def downloaded(done: int, total: int, index: int = index) -> None:
            if options.progress is not None:
                options.progress(Progress("download", index, len(names), done, total))

        resolved[name] = resolve_model(
            name,
            token=options.token,
            endpoint=options.endpoint,
            allow_pickle=recipe.allow_pickle,
            progress=downloaded,
        )
    return resolved


def _source_opener(recipe: Recipe, resolved: dict[str, ResolvedModel]) -> Callable[[Any], Any]:
    def open_(spec: Any) -> TensorSource:
        if isinstance(spec, str):
            return open_source(spec, resolved[spec], None, allow_pickle=recipe.allow_pickle)
        adapter = resolved[spec.adapter] if spec.adapter else None
        return open_source(spec, resolved[spec.model], adapter, allow_pickle=recipe.allow_pickle)

    return open_


def _config_dtype(config: dict[str, Any]) -> str | None:
    value = config.get("torch_dtype") or config.get("dtype")
    return value if value in TORCH_DTYPES else None


def _num_layers(source: TensorSource) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(source.config.get(key), int):
            return int(source.config[key])
    found = [i for i in map(layer_index, source.headers) if i is not None]
    return max(found) + 1 if found else 1


def _write_extras(
    writer: ShardWriter,
    recipe: Recipe,
    method: Any,
    reference: TensorSource,
    resolved: dict[str, ResolvedModel],
    report: CompatibilityReport,
) -> None:
    out_dtype = recipe.output_dtype(_config_dtype(reference.config))
    if reference.config:
        config = dict(reference.config)
        config["torch_dtype"] = out_dtype
        if "dtype" in config:
            config["dtype"] = out_dtype
        rows = {h.shape[0] for h in report.output if h.name.endswith("embed_tokens.weight")}
        if rows and "vocab_size" in config:
            config["vocab_size"] = max(rows)
        writer.add_file("config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    reference_dir = resolved[recipe.base_model or recipe.models[0].model].path
    if (reference_dir / "generation_config.json").is_file():
        writer.copy_file(reference_dir / "generation_config.json")
    tokenizer = tokenizer_dir(recipe, resolved)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            writer.copy_file(tokenizer / name)
    params, _ = resolve_params(method, recipe, [], "", 0.0)
    writer.add_file("hubmerge_recipe.yaml", recipe.to_yaml())
    writer.add_file("README.md", render_card(recipe, method, params, resolved, out_dtype=out_dtype))


__all__ = ["MergeOptions", "MergeResult", "Progress", "RecipeError", "merge"]
