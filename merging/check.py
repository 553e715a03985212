"""Compatibility check from config files and safetensors headers only: no tensor data is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from merging.errors import (
    AdapterError,
    IncompatibleModelsError,
    ShapeMismatchError,
    VocabMismatchError,
)
from merging.io.headers import SourceInfo, TensorHeader
from merging.io.refs import ModelRef
from merging.lora.adapter import LoraAdapter, fit_problems
from merging.plan import TensorPlan, build_plan, plan_sources
from merging.recipe import Recipe
from merging.sources import remote_info, resolve_model
from merging.tokenizer import build_vocab, vocab_models
from merging.validate import recipe_warnings

VOCAB_TENSOR_HINTS = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out", "word_embeddings")
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
OUT_DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass(frozen=True)
class Mismatch:
    tensor: str
    source: str
    shape: tuple[int, ...]
    expected: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.tensor}: {self.source} has shape {self.shape}, the reference {self.expected}"


@dataclass
class CompatibilityReport:
    """What `hubmerge check` prints; ``ok`` says whether the merge can run."""

    reference: str
    sources: list[SourceInfo]
    output: list[TensorHeader] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    vocab_rows: dict[str, int] = field(default_factory=dict)
    output_bytes: int = 0
    download_bytes: int = 0
    peak_memory_bytes: int = 0
    plan: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.ok:
            return
        text = "models cannot be merged:\n  " + "\n  ".join(self.errors)
        if self.mismatches:
            raise ShapeMismatchError(text)
        if any("vocab" in e for e in self.errors):
            raise VocabMismatchError(text)
        raise IncompatibleModelsError(text)

    def render(self) -> str:
        lines = ["Sources:"]
        for s in self.sources:
            tied = ", tied embeddings" if s.tied_embeddings else ""
            lines.append(
                f"  {s.label}: {s.architecture}, {s.parameters / 1e6:.1f}M params, "
                f"vocab {s.vocab_size}{tied}, {len(s.headers)} tensors"
            )
        if self.plan:
            lines += ["Plan:", *(f"  {line}" for line in self.plan)]
        lines.append(f"Output: {len(self.output)} tensors, {self.output_bytes / 1e9:.3f} GB")
        lines.append(
            f"Disk needed: {(self.output_bytes + self.download_bytes) / 1e9:.3f} GB "
            f"({self.download_bytes / 1e9:.3f} GB of downloads); "
            f"peak memory ≈ {self.peak_memory_bytes / 1e9:.3f} GB"
        )
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        lines.append("mergeable" if self.ok else "NOT mergeable")
        return "\n".join(lines)


def is_vocab_tensor(name: str) -> bool:
    return any(hint in name for hint in VOCAB_TENSOR_HINTS)


def output_dtype_code(header: TensorHeader, out_dtype: str) -> str:
    return OUT_DTYPE_CODES[out_dtype] if header.dtype in FLOAT_DTYPES else header.dtype


def compare_sources(
    reference: SourceInfo,
    others: list[SourceInfo],
    *,
    out_dtype: str,
    vocab_policy: str = "error",
    prefetch: int = 2,
    allow_crimes: bool = False,
) -> CompatibilityReport:
    """Check that every source has every reference tensor with the same shape.

    Vocabulary rows (embeddings, LM head) that differ follow ``vocab_policy``: ``error`` reports
    both sizes; ``base`` keeps the reference's row count; ``union`` takes the largest.
    """
    report = CompatibilityReport(reference.label, [reference, *others])
    _check_architectures(report, allow_crimes)
    _check_tied(report)
    for other in others:
        missing = [n for n in reference.headers if n not in other.headers]
        extra = [n for n in other.headers if n not in reference.headers]
        if missing:
            report.errors.append(
                f"{other.label} lacks {len(missing)} tensor(s) of {reference.label}: "
                + ", ".join(missing[:5])
                + (" …" if len(missing) > 5 else "")
            )
        if extra:
            report.warnings.append(f"{other.label}: {len(extra)} extra tensor(s) ignored")
    for name, header in reference.headers.items():
        rows = _reconcile(report, name, header, others, vocab_policy)
        shape = header.shape if rows is None else (rows, *header.shape[1:])
        report.output.append(TensorHeader(name, shape, output_dtype_code(header, out_dtype)))
    _estimate(report, prefetch)
    return report


def _estimate(report: CompatibilityReport, prefetch: int) -> None:
    report.output_bytes = sum(h.nbytes for h in report.output)
    largest = max((h.numel for h in report.output), default=0)
    # three output-sized buffers (two tensors computing, one being written), the tensors read
    # ahead per source (memory-mapped: page cache the OS can reclaim), small float32 chunks
    out_bytes = max((h.nbytes for h in report.output), default=0)
    read_ahead = largest * 2 * len(report.sources) * (2 * prefetch + 3)
    report.peak_memory_bytes = 3 * out_bytes + read_ahead + 64 * 2**20


def compare_plan(
    plan: TensorPlan,
    infos: dict[str, SourceInfo],
    *,
    out_dtype: str,
    vocab_policy: str = "error",
    prefetch: int = 2,
    vocab_rows: int | None = None,
    allow_crimes: bool = False,
) -> CompatibilityReport:
    """Check a plan's inputs from headers: each output tensor's inputs exist and agree in shape.

    ``models:`` plans are checked by `compare_sources`; ``slices:`` plans tensor by tensor
    (sources may differ in depth). With ``vocab_rows`` (a tokenizer setting) the embedding and
    LM-head rows are mapped by token, so their row counts may differ.
    """
    reference = infos[plan.reference]
    others = [infos[k] for k in plan.sources if k != plan.reference]
    if not plan.sliced:
        report = compare_sources(
            reference, others, out_dtype=out_dtype, prefetch=prefetch,
            vocab_policy="base" if vocab_rows else vocab_policy, allow_crimes=allow_crimes,
        )  # fmt: skip
    else:
        report = CompatibilityReport(reference.label, [reference, *others])
        _check_architectures(report, allow_crimes)
        _check_tied(report)
        report.errors += plan.errors
        if not plan.errors:
            for tensor in plan.tensors:
                first = tensor.inputs[0]
                header = infos[first.source].headers[first.name]
                shapes = {
                    f"{i.source} ({i.name})": infos[i.source].headers[i.name].shape
                    for i in tensor.inputs[1:]
                }
                rows = None
                if not vocab_rows:
                    rows = _reconcile_shapes(
                        report, tensor.name, f"{first.source} ({first.name})", header.shape,
                        shapes, vocab_policy,
                    )  # fmt: skip
                shape = header.shape if rows is None else (rows, *header.shape[1:])
                out = TensorHeader(tensor.name, shape, output_dtype_code(header, out_dtype))
                report.output.append(out)
    if vocab_rows:
        report.warnings = [w for w in report.warnings if "vocab rows" not in w]
        report.output = [
            TensorHeader(h.name, (vocab_rows, *h.shape[1:]), h.dtype) if is_vocab_tensor(h.name)
            else h
            for h in report.output
        ]  # fmt: skip
    report.plan = plan.summary()
    _estimate(report, prefetch)
    return report


def _check_architectures(report: CompatibilityReport, allow_crimes: bool) -> None:
    """Sources whose configs name different architectures: an error, or with ``allow_crimes``
    (mergekit's ``--allow-crimes``) a warning, the tensors still checked name by name."""
    archs = {s.architecture for s in report.sources if s.config}
    if len(archs) <= 1:
        return
    named = ", ".join(sorted(archs))
    if allow_crimes:
        report.warnings.append(
            f"architectures differ: {named} (allowed by allow_crimes); tensors are matched by "
            f"name and shape, and the output's config is {report.reference}'s"
        )
    else:
        report.errors.append(
            f"architectures differ: {named}; to merge them anyway where their tensors line "
            "up, set allow_crimes: true in the recipe (or pass --allow-crimes)"
        )


def _check_tied(report: CompatibilityReport) -> None:
    tied = {s.label: s.tied_embeddings for s in report.sources if s.config}
    if len(set(tied.values())) > 1:
        report.warnings.append(
            "tie_word_embeddings differs: "
            + ", ".join(f"{k}={v}" for k, v in tied.items())
            + "; the output follows the reference's config"
        )


def _reconcile(
    report: CompatibilityReport,
    name: str,
    header: TensorHeader,
    others: list[SourceInfo],
    vocab_policy: str,
) -> int | None:
    """Record shape problems for one tensor; return the output row count if vocab rows differ."""
    shapes = {o.label: o.headers[name].shape for o in others if name in o.headers}
    return _reconcile_shapes(report, name, report.reference, header.shape, shapes, vocab_policy)


def _reconcile_shapes(
    report: CompatibilityReport,
    name: str,
    reference: str,
    expected: tuple[int, ...],
    shapes: dict[str, tuple[int, ...]],
    vocab_policy: str,
) -> int | None:
    differing = {k: s for k, s in shapes.items() if s != expected}
    if not differing:
        return None
    rows_only = all(len(s) == len(expected) and s[1:] == expected[1:] for s in differing.values())
    if rows_only and is_vocab_tensor(name):
        all_rows = {reference: expected[0]} | {k: s[0] for k, s in shapes.items()}
        report.vocab_rows.update(all_rows)
        if vocab_policy == "error":
            sizes = ", ".join(f"{k}: {v}" for k, v in all_rows.items())
            report.errors.append(
                f"vocab sizes differ on {name} ({sizes}); set vocab_policy: base (keep the "
                "base's rows) or union (pad to the largest), or tokenizer_source: union (rows "
                "mapped by token) — rows are never dropped silently"
            )
            return None
        if vocab_policy == "base":
            report.warnings.append(f"{name}: vocab rows aligned to the base's {expected[0]}")
            return expected[0]
        rows = max(all_rows.values())
        report.warnings.append(f"{name}: vocab rows padded to the union size {rows}")
        return rows
    for label, shape in differing.items():
        report.mismatches.append(Mismatch(name, label, shape, expected))
        report.errors.append(str(report.mismatches[-1]))
    return None


def check_recipe(
    recipe: Recipe, *, token: str | None = None, endpoint: str | None = None
) -> CompatibilityReport:
    """`hubmerge check`: compare every source of a recipe from configs and headers only.

    Hub sources are read with HTTP range requests on the shard headers: no weight is
    downloaded, so a 7B and a 13B are found incompatible in seconds.
    """
    recipe.with_warnings(recipe_warnings(recipe))
    specs = plan_sources(recipe)
    fetched: dict[str, SourceInfo] = {}
    infos: dict[str, SourceInfo] = {}
    download = 0
    for key, spec in specs.items():
        if spec.model not in fetched:
            info, commit = remote_info(spec.model, token=token, endpoint=endpoint)
            fetched[spec.model] = info
            if commit is not None:
                download += sum(h.nbytes for h in info.headers.values())
        info = fetched[spec.model]
        infos[key] = info if key == info.label else SourceInfo(key, info.headers, info.config)
    plan = build_plan(recipe, infos)
    reference = infos[plan.reference]
    out_dtype = recipe.output_dtype(reference.config.get("torch_dtype"))
    if out_dtype not in OUT_DTYPE_CODES:
        out_dtype = recipe.output_dtype()
    vocab = None
    refs = {k: ModelRef.parse(s.model) for k, s in specs.items()}
    named = {n: ModelRef.parse(n) for n in vocab_models(recipe)}
    if all(ref.local for ref in [*refs.values(), *named.values()]):
        local = {k: Path(ref.name) for k, ref in refs.items()}
        folders = {n: Path(ref.name) for n, ref in named.items()}
        vocab = build_vocab(recipe, plan, local, infos, named=folders)
    report = compare_plan(
        plan, infos, out_dtype=out_dtype, vocab_policy=recipe.vocab_policy,
        vocab_rows=vocab.rows if vocab else None, allow_crimes=recipe.allow_crimes,
    )  # fmt: skip
    if vocab is None and (recipe.tokenizer or recipe.tokenizer_source):
        report.plan.append("embedding rows mapped by token (vocabulary built at merge time)")
    elif vocab is not None:
        report.plan.append(f"embedding rows mapped by token: {vocab.rows} rows")
        report.warnings += vocab.warnings
    report.warnings[:0] = list(recipe.warnings)
    report.download_bytes = download
    for spec in specs.values():
        if spec.adapter:
            report.errors += adapter_problems(
                spec.adapter, fetched[spec.model], token=token, endpoint=endpoint
            )
    return report


def adapter_problems(
    adapter: str, base: SourceInfo, *, token: str | None = None, endpoint: str | None = None
) -> list[str]:
    """Why an adapter (local folder or Hub ref) does not fit a base; empty when it fits.

    Only the adapter is downloaded (it is small); the base is judged from its headers.
    """
    try:
        resolved = resolve_model(adapter, token=token, endpoint=endpoint)
        loaded = LoraAdapter(resolved.path, label=adapter)
    except AdapterError as err:
        return [str(err)]
    return fit_problems(loaded, base.headers, base.config)


__all__ = [
    "CompatibilityReport",
    "SourceInfo",
    "adapter_problems",
    "check_recipe",
    "compare_sources",
]
