"""Turn a recipe's model references into readable sources: local dirs, Hub snapshots, adapters."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from merging import hub
from merging.io.headers import SourceInfo, TensorHeader
from merging.io.refs import ModelRef
from merging.io.source import CheckpointSource, TensorSource
from merging.lora.source import AdapterSource
from merging.recipe import Recipe, SourceSpec

logger = logging.getLogger(__name__)

DownloadProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference pinned to something on disk.

    Attributes:
        ref: what the recipe said.
        path: the local directory holding the files.
        commit: the Hub commit sha it was pinned to (`None` for local directories).
    """

    ref: ModelRef
    path: Path
    commit: str | None = None

    @property
    def hub_id(self) -> str | None:
        return None if self.ref.local else self.ref.name

    @property
    def pinned(self) -> str:
        return str(self.path) if self.ref.local else f"{self.ref.name}@{self.commit}"


def resolve_model(
    text: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    allow_pickle: bool = False,
    progress: DownloadProgress | None = None,
) -> ResolvedModel:
    """Find a model on disk, downloading it from the Hub (pinned to a commit) if needed."""
    ref = ModelRef.parse(text)
    if ref.local:
        return ResolvedModel(ref, Path(ref.name))
    commit = hub.resolve_revision(ref.name, ref.revision, token=token, endpoint=endpoint)
    path = hub.download_model(
        ref.name,
        revision=commit,
        token=token,
        endpoint=endpoint,
        allow_pickle=allow_pickle,
        progress=progress,
    )
    return ResolvedModel(ref, Path(path), commit)


def remote_info(
    text: str, *, token: str | None = None, endpoint: str | None = None
) -> tuple[SourceInfo, str | None]:
    """Headers and config of a model without reading weight data (Hub: one request to pin the
    commit with `token`, then range requests or the cache of `merging.hub.pinned`)."""
    ref = ModelRef.parse(text)
    if ref.local:
        source = CheckpointSource(ref.name, allow_pickle=True)
        return SourceInfo(str(ref), source.headers, source.config), None
    model = hub.remote_model(ref.name, revision=ref.revision, token=token, endpoint=endpoint)
    headers: dict[str, TensorHeader] = model.headers
    return SourceInfo(str(ref), headers, model.config), model.sha


def open_source(
    spec: SourceSpec | str,
    resolved: ResolvedModel,
    adapter: ResolvedModel | None,
    *,
    allow_pickle: bool,
) -> TensorSource:
    """A tensor source for one recipe entry; with an adapter, the base with the LoRA applied."""
    label = (
        spec if isinstance(spec, str) else spec.model + (f"+{spec.adapter}" if spec.adapter else "")
    )
    base = CheckpointSource(resolved.path, allow_pickle=allow_pickle, label=label)
    if adapter is None:
        return base
    return AdapterSource(base, adapter.path, label=label)


def source_info(source: TensorSource) -> SourceInfo:
    return SourceInfo(source.label, source.headers, source.config)


def tokenizer_dir(recipe: Recipe, resolved: dict[str, ResolvedModel]) -> Path:
    """The folder the output's tokenizer is copied from (``tokenizer_source``, default base);
    the engine resolves every named source, this one included, before merging."""
    choice = recipe.tokenizer_source or "base"
    key = (recipe.base_model or recipe.models[0].model) if choice == "base" else choice
    return resolved[key].path
