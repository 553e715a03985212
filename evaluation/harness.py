"""A thin adapter over `lm_eval.simple_evaluate`: one model load, fixed items, a typed `Report`.

Each model is loaded once (`evaluation.loading.load_model`, accelerate placement) and handed
to the harness as ``HFLM(pretrained=model, tokenizer=...)``. Every run uses the first `limit`
items of each task in dataset order and seeds all of the harness's RNGs with `seed`, so two
models (or a model and an ensemble) are scored on exactly the same items.

>>> report = evaluate("out/merge", tasks=["hubmerge_mmlu_marketing"], limit=20)  # doctest: +SKIP
>>> print(comparison_table(report))  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from evaluation.data import MMLU_TASK_PREFIX, ensure_mmlu
from evaluation.demo_tasks import DEMO_TASK_PREFIX, ensure_demo_tasks
from evaluation.errors import HarnessError, UnknownTaskError
from evaluation.loading import input_device, load_model, load_tokenizer
from evaluation.report import ModelResult, Report, TaskResult
from evaluation.suites import DEFAULT_SEED, Suite, get_suite

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

logger = logging.getLogger(__name__)

_LOCAL_DATASET_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}


class EvalOptions(BaseModel):
    """How to run the harness; the same options for every model of a comparison.

    Args:
        tasks (`tuple[str, ...]`): harness task or group names.
        limit (`int`, *optional*): first `limit` items per task; `None` for all.
        seed (`int`): seeds python, numpy, torch and few-shot sampling in the harness.
        num_fewshot (`int`, *optional*): in-context examples; `None` keeps each task's default.
        include_paths (`tuple[Path, ...]`): extra folders of task YAMLs.
        cache_dir (`Path`, *optional*): where the local MMLU data and tasks live.
        batch_size (`int`): harness batch size.
        device (`str`): ``"auto"`` (accelerate placement) or one device.
        dtype (`str`): ``"auto"`` or a torch dtype name.
        offload_folder (`Path`, *optional*): accelerate's disk offload folder.
        max_memory (`dict`, *optional*): accelerate's per-device budget with ``"auto"``.
        trust_remote_code (`bool`): run code shipped with checkpoints (off by default).
        include_defaults (`bool`, *optional*): search the harness's ~10k built-in tasks
            (slow to index, and their data comes from the Hub): `None` does so only when a
            task is not found in the project's folders; `False` never.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = Field(min_length=1)
    limit: int | None = Field(default=None, gt=0)
    seed: int = DEFAULT_SEED
    num_fewshot: int | None = Field(default=None, ge=0)
    include_paths: tuple[Path, ...] = ()
    cache_dir: Path | None = None
    batch_size: int = Field(default=8, gt=0)
    device: str = "auto"
    dtype: str = "auto"
    offload_folder: Path | None = None
    max_memory: dict[int | str, int | str] | None = None
    trust_remote_code: bool = False
    include_defaults: bool | None = None

    @classmethod
    def from_suite(cls, suite: str | Suite, **overrides: Any) -> EvalOptions:
        """Options from a named suite; `overrides` (not `None`) replace its values."""
        suite = get_suite(suite) if isinstance(suite, str) else suite
        values: dict[str, Any] = {
            "tasks": suite.tasks,
            "limit": suite.limit,
            "num_fewshot": suite.num_fewshot,
            "seed": suite.seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def build_task_manager(options: EvalOptions) -> TaskManager:
    """A task manager that knows `options.tasks`, indexing the harness's tasks only if needed.

    The project's folders (`include_paths`, the local MMLU tasks when a `hubmerge_mmlu*`
    task is named, the demo skills when a `hubmerge_demo*` one is) are indexed first; the
    harness's ~10k built-in tasks only when a task is not found there.

    Raises:
        [`UnknownTaskError`]: a task is in neither (with close matches).
    """
    from lm_eval.tasks import TaskManager

    paths = [Path(p) for p in options.include_paths]
    if any(task.startswith(MMLU_TASK_PREFIX) for task in options.tasks):
        paths.append(ensure_mmlu(options.cache_dir))
    if any(task.startswith(DEMO_TASK_PREFIX) for task in options.tasks):
        paths.append(ensure_demo_tasks(options.cache_dir))
    manager = TaskManager(
        include_path=[str(p) for p in paths], include_defaults=bool(options.include_defaults)
    )
    if options.include_defaults is not None or all(t in manager.all_tasks for t in options.tasks):
        _check_known(options.tasks, manager.all_tasks)
        return manager
    logger.info("indexing lm-evaluation-harness's built-in tasks")
    manager = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=True)
    _check_known(options.tasks, manager.all_tasks)
    return manager


def _check_known(tasks: Sequence[str], known: list[str]) -> None:
    for task in tasks:
        if task not in known:
            raise UnknownTaskError(task, known)


def _dataset_of(config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    metadata = config.get("metadata") or {}
    if metadata.get("dataset"):
        return str(metadata["dataset"]), metadata.get("dataset_config")
    path = config.get("dataset_path")
    if not path or path in _LOCAL_DATASET_BUILDERS:
        return None, None
    return str(path), config.get("dataset_name")


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def results_to_model_result(
    results: Mapping[str, Any], *, label: str, path: str, options: EvalOptions
) -> ModelResult:
    """Convert `simple_evaluate`'s output into a `ModelResult` (every task, metric and filter)."""
    rows: list[TaskResult] = []
    for task, metrics in results["results"].items():
        config = results.get("configs", {}).get(task, {})
        dataset_type, dataset_config = _dataset_of(config)
        n_samples = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or _finite_or_none(value) is None:
                continue
            metric, filter_ = key.split(",", 1)
            rows.append(
                TaskResult(
                    task=task,
                    metric=metric,
                    filter=filter_,
                    value=float(value),
                    stderr=_finite_or_none(metrics.get(f"{metric}_stderr,{filter_}")),
                    higher_is_better=results.get("higher_is_better", {}).get(task, {}).get(metric),
                    limit=options.limit,
                    num_samples=n_samples,
                    num_fewshot=int(results.get("n-shot", {}).get(task) or 0),
                    seed=options.seed,
                    dataset_type=dataset_type,
                    dataset_config=dataset_config,
                )
            )
    return ModelResult(label=label, path=path, results=tuple(rows))


def run_harness(
    lm: LM,
    options: EvalOptions,
    *,
    task_manager: TaskManager | None = None,
    log_samples: bool = False,
) -> dict:
    """`lm_eval.simple_evaluate` on a built LM with `options`' tasks, items and seeds;
    `log_samples` keeps every document's metrics under ``results["samples"]`` (paired tests)."""
    import lm_eval

    manager = task_manager if task_manager is not None else build_task_manager(options)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(options.tasks),
            num_fewshot=options.num_fewshot,
            limit=options.limit,
            task_manager=manager,
            log_samples=log_samples,
            bootstrap_iters=1000,
            random_seed=options.seed,
            numpy_random_seed=options.seed,
            torch_random_seed=options.seed,
            fewshot_random_seed=options.seed,
        )
    except (KeyError, ValueError, RuntimeError, OSError) as err:
        raise HarnessError(f"lm-evaluation-harness failed on {list(options.tasks)}: {err}") from err
    if not results or "results" not in results:
        raise HarnessError("lm-evaluation-harness returned no results")
    return dict(results)


def make_hflm(model: Any, tokenizer: Any, *, batch_size: int) -> LM:
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm._device = input_device(model)  # not `meta` when parts are offloaded to disk
    return lm


def evaluate_model(
    model: str | Path,
    options: EvalOptions,
    *,
    label: str | None = None,
    task_manager: TaskManager | None = None,
) -> ModelResult:
    """Load `model` once, run the harness, free the model; return its results."""
    loaded = load_model(
        model,
        device=options.device,
        dtype=options.dtype,
        offload_folder=options.offload_folder,
        trust_remote_code=options.trust_remote_code,
        max_memory=options.max_memory,
    )
    tokenizer = load_tokenizer(model, trust_remote_code=options.trust_remote_code)
    try:
        lm = make_hflm(loaded, tokenizer, batch_size=options.batch_size)
        results = run_harness(lm, options, task_manager=task_manager)
    finally:
        del loaded
        gc.collect()
    return results_to_model_result(
        results, label=label or _default_label(model), path=str(model), options=options
    )


def _default_label(model: str | Path) -> str:
    return Path(model).name or str(model)


def compare(
    models: Mapping[str, str | Path], options: EvalOptions, *, base: str | None = None
) -> Report:
    """Evaluate several models, one loaded at a time, on the same items.

    Args:
        models (`Mapping[str, str | Path]`): label → model directory (or Hub id), in
            display order (e.g. base, inputs…, merge).
        options (`EvalOptions`): tasks, items, seed and loading options shared by all.
        base (`str`, *optional*): label deltas are taken against (default: the first).

    Returns:
        `Report`: one `ModelResult` per model.
    """
    manager = build_task_manager(options)
    results = [
        evaluate_model(path, options, label=label, task_manager=manager)
        for label, path in models.items()
    ]
    return Report(harness_version=harness_version(), models=results, base=base)


def evaluate(
    model: str | Path,
    *,
    tasks: Sequence[str],
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    num_fewshot: int | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    offload_folder: str | Path | None = None,
    trust_remote_code: bool = False,
    include_defaults: bool | None = None,
    label: str | None = None,
) -> Report:
    """Evaluate one model on harness tasks (see `EvalOptions` for the options).

    Returns:
        `Report`: a report with one model.

    Raises:
        [`UnknownTaskError`], [`ModelLoadError`], [`HarnessError`]
    """
    if include_path is None:
        include_paths: tuple[Path, ...] = ()
    elif isinstance(include_path, (str, Path)):
        include_paths = (Path(include_path),)
    else:
        include_paths = tuple(Path(p) for p in include_path)
    options = EvalOptions(
        tasks=tuple(tasks),
        limit=limit,
        seed=seed,
        num_fewshot=num_fewshot,
        include_paths=include_paths,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        offload_folder=Path(offload_folder) if offload_folder is not None else None,
        trust_remote_code=trust_remote_code,
        include_defaults=include_defaults,
    )
    result = evaluate_model(model, options, label=label)
    return Report(harness_version=harness_version(), models=[result])
