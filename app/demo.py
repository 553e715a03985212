"""The offline demo: a zoo of tiny models built locally, a local Hub server seeded with them.

``hubmerge serve --demo`` calls `start_demo`, which

1. builds (once, cached under ``<data dir>/demo/models``) the skill zoo of `app.demo_zoo`: a
   tiny Llama base that half-knows two toy skills, a fine-tune per skill, a harmful "noisy"
   fine-tune (for the greedy-soup demo) and a LoRA adapter, plus held-out examples;
2. starts the local Hub server of `app.hub_server` on 127.0.0.1 with its repositories under
   ``<data dir>/demo/hub`` and seeds it with those models (public repos under ``demo/``).

The ``demo`` suite (`evaluation.suites`) scores both skills, so evaluating a merge of the
fine-tunes shows what merging keeps. Everything is seeded and CPU-only; a cold build takes
about 30 s of one core (measured: 26 s CPU, 70 s wall on a 2-core machine at load ~10).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.demo_zoo import (
    CORPUS,
    MODEL_NAMES,
    ZOO_VERSION,
    animal_lines,
    llama_config,
    math_lines,
    train_lm,
    train_tokenizer,
)

logger = logging.getLogger(__name__)

DEMO_VERSION = ZOO_VERSION
DEMO_TOKEN = "hf_demo_local_token"
DEMO_USER = "demo"
DEMO_SUITE = "demo"
# the demo's default recipe: both skill fine-tunes as task vectors on the base
DEFAULT_RECIPE = """\
merge_method: task_arithmetic
base_model: demo/tiny-base
models:
  - model: demo/tiny-math
    parameters: {weight: 1.0}
  - model: demo/tiny-animals
    parameters: {weight: 1.0}
"""

__all__ = ["CORPUS", "DEFAULT_RECIPE", "DemoModels", "animal_lines", "build_demo_models",
           "llama_config", "math_lines", "seed_hub", "start_demo", "train_lm",
           "train_tokenizer"]  # fmt: skip


@dataclass(frozen=True)
class DemoModels:
    """Local folders of the demo models (name → folder) and of the held-out examples."""

    root: Path
    models: dict[str, Path]
    examples: Path


def build_demo_models(root: Path, *, quick: bool = False) -> DemoModels:
    """Build the demo zoo under ``root`` (skipped when a complete build is cached).

    ``quick`` trains far fewer steps: distinct, loadable models for tests that need no skill.
    A build is marked complete only once every model is written, so an interrupted build is
    redone on the next start.
    """
    root = Path(root) / f"v{DEMO_VERSION}{'-quick' if quick else ''}"
    marker = root / "complete.json"
    result = DemoModels(root, {name: root / name for name in MODEL_NAMES}, root / "heldout.jsonl")
    if marker.is_file():
        return result
    import time

    import torch

    from app.demo_zoo import build_zoo

    logger.info("building the demo models in %s (first start only)", root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started, cpu = time.monotonic(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is much faster than many
    try:
        build_zoo(root, quick=quick)
    finally:
        torch.set_num_threads(threads)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    marker.write_text(json.dumps({"version": DEMO_VERSION, "seconds": round(seconds, 1),
                                  "cpu_seconds": round(cpu, 1)}))  # fmt: skip
    logger.info("demo models built in %.0f s (%.0f s of CPU)", seconds, cpu)
    return result


def seed_hub(url: str, models: DemoModels, *, token: str = DEMO_TOKEN) -> list[str]:
    """Upload the demo models to the Hub at ``url`` (only those not there yet)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=url, token=token)
    repos = []
    for name, folder in models.models.items():
        repo_id = f"{DEMO_USER}/{name}"
        repos.append(repo_id)
        if api.repo_exists(repo_id):
            continue
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="demo model")
        logger.info("seeded %s", repo_id)
    return repos


def require_no_xet() -> None:
    """The local Hub does not speak Xet: ``HF_HUB_DISABLE_XET=1`` must precede the import."""
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    import huggingface_hub.constants as constants

    if not constants.HF_HUB_DISABLE_XET:
        constants.HF_HUB_DISABLE_XET = True


@contextlib.contextmanager
def start_demo(
    data_dir: Path, *, port: int = 0, oauth_clients: dict[str, str] | None = None
) -> Iterator[tuple[str, DemoModels]]:
    """Build (or reuse) the demo models, start the seeded local Hub; yield (url, models).

    ``oauth_clients`` (client id → secret) turns on the Hub's "Sign in with the Hub" provider.
    """
    require_no_xet()
    from app.hub_server import running_server

    models = build_demo_models(Path(data_dir) / "demo" / "models")
    hub_dir = Path(data_dir) / "demo" / "hub"
    tokens = {DEMO_TOKEN: DEMO_USER}
    with running_server(hub_dir, tokens=tokens, port=port, oauth_clients=oauth_clients) as url:
        seed_hub(url, models)
        logger.info("demo Hub on %s (token %s…)", url, DEMO_TOKEN[:6])
        yield url, models
