"""The streaming merge: plan from headers, then per tensor gather → method → cast → write.

Memory stays bounded by a few tensors per source: sources are memory-mapped, a small pool of
reader threads prefetches the next tensors (I/O and the float32 up-cast overlap the method's
arithmetic), and the writer streams each result straight into its shard.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.align.recipe_step import merge_aligned
from merging.check import CompatibilityReport, compare_plan, is_vocab_tensor
from merging.errors import MergeCancelled, RecipeError
from merging.io.headers import TensorHeader
from merging.io.source import TensorSource
from merging.io.writer import DEFAULT_SHARD_SIZE, ShardWriter
from merging.methods import get_method, random_stream, release_scratch
from merging.outputs import TOKENIZER_FILES, TORCH_DTYPES, Extras, config_dtype, write_extras
from merging.plan import PlannedTensor, build_plan, layer_index, plan_sources
from merging.progress import Progress, ProgressCallback
from merging.recipe import Recipe
from merging.sources import ResolvedModel, open_source, resolve_model, source_info
from merging.streaming import (
    Pipeline,
    Prefetcher,
    chunk_size,
    expect_reads,
    release_tensor,
    run_kernel,
    touch_pages,
)
from merging.tokenizer import build_vocab, vocab_models
from merging.validate import recipe_warnings

logger = logging.getLogger(__name__)


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
        copy_tokenizer: copy the reference's tokenizer files into the output (mergekit's
            ``--copy-tokenizer``, on by default). A tokenizer the recipe builds
            (``tokenizer_source`` / ``tokenizer:``) is always written: the embedding rows
            follow it.
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
    copy_tokenizer: bool = True


@dataclass(frozen=True)
class MergeResult:
    output: Path
    tensors: int
    bytes_written: int
    seconds: float
    resolved: dict[str, str]
    report: CompatibilityReport


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
    if recipe.align is not None:  # align sources into one basis first, then merge the copies
        return merge_aligned(recipe, output, options=options, merge=merge)
    started = time.perf_counter()
    recipe.with_warnings(recipe_warnings(recipe))  # binds the method: fails before any read
    method = get_method(recipe.merge_method)
    resolved = _resolve_all(recipe, options)
    open_ = _source_opener(recipe, resolved)
    sources = {key: open_(spec) for key, spec in plan_sources(recipe).items()}
    infos = {key: source_info(source) for key, source in sources.items()}
    plan = build_plan(recipe, infos)
    reference = sources[plan.reference]
    paths = {k: resolved[s.model].path for k, s in plan.sources.items()}
    named = {name: resolved[name].path for name in vocab_models(recipe)}
    vocab = build_vocab(recipe, plan, paths, infos, named=named)
    out_dtype_name = recipe.output_dtype(config_dtype(reference.config))
    report = compare_plan(
        plan, infos, out_dtype=out_dtype_name, vocab_policy=recipe.vocab_policy,
        prefetch=options.prefetch, vocab_rows=vocab.rows if vocab else None,
        allow_crimes=recipe.allow_crimes,
    )  # fmt: skip
    report.warnings[:0] = list(recipe.warnings)
    report.warnings += vocab.warnings if vocab else []  # tokens beyond a model's vocab_size
    report.raise_for_errors()
    device = pick_device(options.device)
    compute = TORCH_DTYPES[recipe.compute_dtype]
    planned = {t.name: t for t in plan.tensors}
    vocab_names = {t.name for t in plan.tensors if is_vocab_tensor(t.name)} if vocab else set()

    def load(name: str) -> list[torch.Tensor]:
        entry = planned[name]
        tensors = [sources[i.source].get(i.name) for i in entry.inputs]
        for tensor in tensors:
            touch_pages(tensor)
        if name in vocab_names:
            assert vocab is not None
            tensors = vocab.map_rows([i.source for i in entry.inputs], tensors)
        return tensors

    headers = report.output
    total_bytes = sum(h.nbytes for h in headers)
    out_dtype = TORCH_DTYPES[out_dtype_name]
    threads = options.threads or ((os.cpu_count() or 1) if device.type == "cpu" else 1)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="merge") if threads > 1 else None
    context = _TensorContext(recipe, method, planned, device, compute, pool)
    for key, source in sources.items():
        expect_reads(source, plan.reads(key))
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
                for source in planned[header.name].inputs:
                    release_tensor(sources[source.source], source.name)
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
            extras = Extras(recipe, method, plan, infos, resolved, report, out_dtype_name,
                            copy_tokenizer=options.copy_tokenizer)  # fmt: skip
            write_extras(writer, extras, vocab)
            path = writer.finish()
    finally:
        prefetcher.close()
        if pool is not None:
            pool.shutdown()
        torch.set_num_threads(torch_threads)
        release_scratch()  # (the kernels' reused buffers: an idle process keeps none)
    pinned = {key: model.pinned for key, model in resolved.items()}
    seconds = time.perf_counter() - started
    logger.info("merged %d tensors into %s in %.1f s", len(headers), path, seconds)
    return MergeResult(path, len(headers), total_bytes, seconds, pinned, report)


@dataclass(frozen=True)
class _TensorContext:
    """What every tensor's merge needs besides its data: the plan gives inputs and params."""

    recipe: Recipe
    method: Any
    planned: dict[str, PlannedTensor]
    device: torch.device
    compute: torch.dtype
    pool: ThreadPoolExecutor | None

    def merge(
        self, header: TensorHeader, tensors: list[torch.Tensor], workspace: torch.Tensor
    ) -> torch.Tensor:
        if header.dtype not in ("F32", "F16", "BF16") or not tensors[0].is_floating_point():
            return tensors[0]
        entry = self.planned[header.name]
        params, per_source = entry.params, list(entry.per_source)
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
                kernel, flats, out, has_base=entry.has_base, device=self.device,
                dtype=self.compute, pool=self.pool, chunk=chunk_size(self.device),
            )  # fmt: skip
            return out.view(header.shape)
        full = [x.to(device=self.device, dtype=self.compute) for x in tensors]
        base_tensor, inputs = (full[0], full[1:]) if entry.has_base else (None, full)
        return self.method.fn(base_tensor, inputs, per_source, params, rng)


def _resolve_all(recipe: Recipe, options: MergeOptions) -> dict[str, ResolvedModel]:
    specs = recipe.referenced_models()
    names = [s.model for s in specs] + [s.adapter for s in specs if s.adapter]
    names += vocab_models(recipe)
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


__all__ = [
    "TOKENIZER_FILES",
    "TORCH_DTYPES",
    "MergeOptions",
    "MergeResult",
    "Progress",
    "RecipeError",
    "layer_index",
    "layer_position",
    "merge",
    "run_kernel",
]
