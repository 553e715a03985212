"""Keep heavy jobs from stalling light requests: one-time costs moved to start-up.

The app answers web requests and runs heavy jobs on threads of one process, which share one
GIL. Measured on the demo app under `benchmarks/app_load.py` (py-spy ``--gil``): the first
evaluation imported transformers' model code and lm-evaluation-harness (~5 s of CPU with
the GIL held), and the evaluator's ``gc.collect()`` after each model walked the ~500,000
objects alive in the process (0.75–1 s each, every thread stopped meanwhile): 13 % of the
GIL time, and the slowest light requests. Gradio also rebuilt its monitoring summary (a pandas
group-by over up to 10,000 past events) after every event.

`warm_up` imports the evaluation stack once at start and then moves every object alive into
the garbage collector's permanent generation (`gc.freeze`), so later collections walk only
what was made after; `quiet_monitoring` has gradio rebuild its summary every 1,000 events.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import time

logger = logging.getLogger(__name__)

# what the first merge evaluation would import (transformers' loading path, the harness)
WARM_MODULES = (
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.generation",
    "lm_eval",
    "lm_eval.evaluator",
    "lm_eval.models.huggingface",
    "evaluation.harness",
)
MONITORING_EVERY = "1000"  # events between two rebuilds of gradio's monitoring summary


def quiet_monitoring() -> None:
    """Have gradio rebuild its monitoring summary every `MONITORING_EVERY` events instead of
    after each one (an operator's ``GRADIO_ANALYTICS_CACHE_FREQUENCY`` wins); call before
    ``Blocks.queue``, which reads it."""
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", MONITORING_EVERY)


def warm_up(modules: tuple[str, ...] = WARM_MODULES) -> list[str]:
    """Import `modules` (those not installed are skipped), collect once, then `gc.freeze`.

    Returns:
        `list[str]`: the modules that could not be imported (an extra not installed).
    """
    started, missing = time.monotonic(), []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    gc.collect()
    gc.freeze()
    logger.info("warmed up in %.1f s: %d objects frozen%s", time.monotonic() - started,
                gc.get_freeze_count(), f"; not installed: {', '.join(missing)}" if missing
                else "")  # fmt: skip
    return missing


__all__ = ["MONITORING_EVERY", "WARM_MODULES", "quiet_monitoring", "warm_up"]
