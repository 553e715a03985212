"""Compatibility check from config files and safetensors headers only: no tensor data is read."""

from __future__ import annotations

from dataclasses import dataclass, field

from merging.errors import (
    AdapterError,
    IncompatibleModelsError,
    ShapeMismatchError,
    VocabMismatchError,
)
from merging.io.headers import SourceInfo, TensorHeader
from merging.lora.adapter import LoraAdapter, fit_problems
from merging.methods import get_method
from merging.recipe import Recipe
from merging.sources import remote_info, resolve_model

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
) -> CompatibilityReport:
    """Check that every source has every reference tensor with the same shape.

    Vocabulary rows (embeddings, LM head) that differ follow ``vocab_policy``: ``error`` reports
    both sizes; ``base`` keeps the reference's row count; ``union`` takes the largest.
    """
    report = CompatibilityReport(reference.label, [reference, *others])
    archs = {s.architecture for s in report.sources if s.config}
    if len(archs) > 1:
        report.errors.append(f"architectures differ: {', '.join(sorted(archs))}")
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
    report.output_bytes = sum(h.nbytes for h in report.output)
    largest = max((h.numel for h in report.output), default=0)
    # three output-sized buffers (two tensors computing, one being written), the tensors read
    # ahead per source (memory-mapped: page cache the OS can reclaim), small float32 chunks
    out_bytes = max((h.nbytes for h in report.output), default=0)
    read_ahead = largest * 2 * len(report.sources) * (2 * prefetch + 3)
    report.peak_memory_bytes = 3 * out_bytes + read_ahead + 64 * 2**20
    return report


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
    differing = {k: s for k, s in shapes.items() if s != header.shape}
    if not differing:
        return None
    rows_only = all(
        len(s) == len(header.shape) and s[1:] == header.shape[1:] for s in differing.values()
    )
    if rows_only and is_vocab_tensor(name):
        all_rows = {report.reference: header.shape[0]} | {k: s[0] for k, s in shapes.items()}
        report.vocab_rows.update(all_rows)
        if vocab_policy == "error":
            sizes = ", ".join(f"{k}: {v}" for k, v in all_rows.items())
            report.errors.append(
                f"vocab sizes differ on {name} ({sizes}); set vocab_policy: base (keep the "
                "base's rows) or union (pad to the largest) — rows are never dropped silently"
            )
            return None
        if vocab_policy == "base":
            report.warnings.append(f"{name}: vocab rows aligned to the base's {header.shape[0]}")
            return header.shape[0]
        rows = max(all_rows.values())
        report.warnings.append(f"{name}: vocab rows padded to the union size {rows}")
        return rows
    for label, shape in differing.items():
        report.mismatches.append(Mismatch(name, label, shape, header.shape))
        report.errors.append(str(report.mismatches[-1]))
    return None


def check_recipe(
    recipe: Recipe, *, token: str | None = None, endpoint: str | None = None
) -> CompatibilityReport:
    """`hubmerge check`: compare every source of a recipe from configs and headers only.

    Hub sources are read with HTTP range requests on the shard headers: no weight is
    downloaded, so a 7B and a 13B are found incompatible in seconds.
    """
    method = get_method(recipe.merge_method)
    names = ([recipe.base_model] if method.needs_base and recipe.base_model else []) + [
        s.model for s in (recipe.inputs() if method.needs_base else recipe.models)
    ]
    infos: dict[str, SourceInfo] = {}
    download = 0
    for name in dict.fromkeys(names):
        info, commit = remote_info(name, token=token, endpoint=endpoint)
        infos[name] = info
        if commit is not None:
            download += sum(h.nbytes for h in info.headers.values())
    ordered = [infos[n] for n in names]
    reference = ordered[0]
    out_dtype = recipe.output_dtype(reference.config.get("torch_dtype"))  # type: ignore[arg-type]
    if out_dtype not in OUT_DTYPE_CODES:
        out_dtype = recipe.output_dtype()
    report = compare_sources(
        reference, ordered[1:], out_dtype=out_dtype, vocab_policy=recipe.vocab_policy
    )
    report.download_bytes = download
    adapters = [s for s in recipe.models if s.adapter]
    for spec in adapters:
        assert spec.adapter is not None
        report.errors += adapter_problems(
            spec.adapter, infos.get(spec.model) or reference, token=token, endpoint=endpoint
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
