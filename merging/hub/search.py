"""Search the Hub for merge candidates and summarise each hit."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from merging.errors import HubError
from merging.hub._calls import call, download_one, hub_api

logger = logging.getLogger(__name__)


class ModelSummary(BaseModel):
    """One search hit, with what a merge planner wants to know before downloading."""

    model_config = ConfigDict(frozen=True)

    id: str
    sha: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    dtype: str | None = None
    license: str | None = None
    gated: bool | str = False
    private: bool = False
    base_models: tuple[str, ...] = ()
    library: str | None = None
    last_modified: datetime | None = None
    is_adapter: bool = False
    adapter_base_model: str | None = None


SEARCH_FIELDS = ["cardData", "config", "gated", "lastModified", "library_name", "private"]
SEARCH_FIELDS += ["safetensors", "sha", "siblings", "tags"]


def _summarise(info: Any, *, token: str | None, endpoint: str | None) -> ModelSummary:
    card = info.card_data.to_dict() if info.card_data is not None else {}
    architectures = (info.config or {}).get("architectures") or [None]
    files = {s.rfilename for s in info.siblings or []}
    parameters = dtype = None
    if info.safetensors is not None:
        parameters = info.safetensors.total
        dtype = max(info.safetensors.parameters.items(), key=lambda item: item[1])[0]
    base = card.get("base_model") or []
    is_adapter = "adapter_config.json" in files
    adapter_base = None
    if is_adapter and info.sha:
        try:
            path = download_one(
                info.id, "adapter_config.json", sha=info.sha, token=token, endpoint=endpoint
            )
            adapter_base = json.loads(path.read_text()).get("base_model_name_or_path")
        except (HubError, ValueError):
            logger.info("cannot read adapter_config.json of %s", info.id)
    return ModelSummary(
        id=info.id,
        sha=info.sha,
        architecture=architectures[0],
        parameters=parameters,
        dtype=dtype,
        license=card.get("license"),
        gated=info.gated or False,
        private=bool(info.private),
        base_models=tuple([base] if isinstance(base, str) else base),
        library=info.library_name,
        last_modified=info.last_modified,
        is_adapter=is_adapter,
        adapter_base_model=adapter_base,
    )


def search_models(
    query: str,
    *,
    author: str | None = None,
    library: str | None = None,
    sort: str = "downloads",
    limit: int = 20,
    token: str | None = None,
    endpoint: str | None = None,
) -> list[ModelSummary]:
    """Search Hub models and summarise each hit for merging.

    Args:
        query (`str`): substring of the repo id.
        author (`str`, *optional*): only this user or organisation.
        library (`str`, *optional*): e.g. ``"transformers"`` or ``"peft"`` (a tag filter).
        sort (`str`, *optional*, defaults to ``"downloads"``): also ``"likes"``,
            ``"last_modified"``, ``"created_at"``, ``"trending_score"``.
        limit (`int`, *optional*, defaults to 20): at most this many results.

    Returns:
        `list[ModelSummary]`: architecture, parameter count and dominant dtype (from the Hub's
        safetensors metadata), licence, gating, base-model lineage, adapter facts.
    """
    api = hub_api(token, endpoint)

    def run() -> list[Any]:
        return list(
            api.list_models(
                search=query or None,
                author=author,
                filter=library,
                sort=sort,  # type: ignore[arg-type]
                limit=limit,
                expand=SEARCH_FIELDS,  # type: ignore[arg-type]
            )
        )

    infos = call(run, action="searching", repo_id=f"models matching {query!r}")
    return [_summarise(info, token=token, endpoint=endpoint) for info in infos]
