"""Evaluation of merged models: lm-evaluation-harness runs, a fast scorer, probes, reports.

The light parts (errors, suites, reports, local data) import eagerly; the parts that need
torch, transformers or lm_eval load on first use, so ``import evaluation`` stays cheap.

>>> from evaluation import get_suite
>>> get_suite("quick").tasks[0]
'hubmerge_mmlu_high_school_geography'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from evaluation.data import MMLU_SUBJECTS, default_cache_dir, ensure_mmlu, mmlu_task_names
from evaluation.errors import (
    DataError,
    DataUnavailableError,
    EvaluationError,
    HarnessError,
    IncompatibleModelsError,
    ModelLoadError,
    UnknownNameError,
    UnknownSuiteError,
    UnknownTaskError,
)
from evaluation.report import (
    ModelResult,
    Report,
    TaskResult,
    comparison_table,
    load_report,
    report_to_model_index,
    save_report,
)
from evaluation.suites import SUITES, Suite, get_suite, suite_names

_LAZY = {
    "EvalOptions": "evaluation.harness",
    "evaluate": "evaluation.harness",
    "compare": "evaluation.harness",
    "build_task_manager": "evaluation.harness",
    "EnsembleLM": "evaluation.ensemble",
    "evaluate_ensemble": "evaluation.ensemble",
    "Example": "evaluation.scoring",
    "Scorer": "evaluation.scoring",
    "load_examples": "evaluation.scoring",
    "ProbeResult": "evaluation.probe",
    "interpolation_probe": "evaluation.probe",
    "plot_probe": "evaluation.probe",
    "load_model": "evaluation.loading",
    "load_tokenizer": "evaluation.loading",
}

__all__ = [
    "MMLU_SUBJECTS",
    "SUITES",
    "DataError",
    "DataUnavailableError",
    "EvaluationError",
    "HarnessError",
    "IncompatibleModelsError",
    "ModelLoadError",
    "ModelResult",
    "Report",
    "Suite",
    "TaskResult",
    "UnknownNameError",
    "UnknownSuiteError",
    "UnknownTaskError",
    "comparison_table",
    "default_cache_dir",
    "ensure_mmlu",
    "get_suite",
    "load_report",
    "mmlu_task_names",
    "report_to_model_index",
    "save_report",
    "suite_names",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
