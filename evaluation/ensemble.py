"""Output-ensemble baseline: run every input model and average their next-token probabilities.

log p_ens(x_t | x_<t) = log( (1/K) Σ_k p_k(x_t | x_<t) ). An `EnsembleLM` is an `lm_eval`
`HFLM` whose model call returns those log-probabilities (the harness's own log-softmax leaves
them unchanged), so log-likelihood tasks score the ensemble on the same items as the merge.
That shows what a merge gives up (or gains) relative to running all its inputs.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lm_eval.models.huggingface import HFLM

from evaluation.errors import HarnessError, IncompatibleModelsError
from evaluation.harness import (
    EvalOptions,
    build_task_manager,
    harness_version,
    results_to_model_result,
    run_harness,
)
from evaluation.loading import input_device, load_model, load_tokenizer
from evaluation.report import ModelResult, Report


def mean_log_probs(logits: Sequence[Any]) -> Any:
    """log of the mean of softmax(logits_k) over models k, computed stably in float32.

    Args:
        logits (`Sequence[torch.Tensor]`): one ``[batch, seq, vocab]`` tensor per model.
    """
    import torch

    log_probs = torch.stack([torch.log_softmax(x.float(), dim=-1) for x in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


class EnsembleLM(HFLM):  # type: ignore[misc]
    """An `HFLM` over several causal LMs that share one tokenizer.

    Args:
        models (`Sequence[PreTrainedModel]`): the members; the first one's device receives
            the inputs, the others may sit anywhere.
        tokenizer (`PreTrainedTokenizerBase`): the shared tokenizer.
        batch_size (`int`): harness batch size.

    Raises:
        [`IncompatibleModelsError`]: fewer than one model, or output vocabularies differ.
    """

    def __init__(self, models: Sequence[Any], tokenizer: Any, *, batch_size: int = 8) -> None:
        if not models:
            raise IncompatibleModelsError("an ensemble needs at least one model")
        sizes = {m.get_output_embeddings().weight.shape[0] for m in models}
        if len(sizes) != 1:
            raise IncompatibleModelsError(f"ensemble members' output vocabularies differ: {sizes}")
        super().__init__(pretrained=models[0], tokenizer=tokenizer, batch_size=batch_size)
        self._device = input_device(models[0])
        self._members = list(models)

    def _model_call(self, inps: Any, attn_mask: Any = None, labels: Any = None) -> Any:
        import torch

        if attn_mask is not None or labels is not None:
            raise HarnessError("the output ensemble supports decoder-only (causal) models only")
        with torch.no_grad():
            logits = [m(inps.to(input_device(m))).logits.to(inps.device) for m in self._members]
        return mean_log_probs(logits)

    def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
        raise HarnessError(
            "the output ensemble scores log-likelihood tasks only (multiple choice, perplexity); "
            "generation tasks are not supported"
        )


def _check_tokenizers(paths: Sequence[str | Path], trust_remote_code: bool) -> Any:
    tokenizers = [load_tokenizer(p, trust_remote_code=trust_remote_code) for p in paths]
    first = tokenizers[0].get_vocab()
    for path, tokenizer in zip(paths[1:], tokenizers[1:], strict=True):
        if tokenizer.get_vocab() != first:
            raise IncompatibleModelsError(
                f"{path} has a different vocabulary from {paths[0]}; an output ensemble "
                "needs one shared tokenizer"
            )
    return tokenizers[0]


def evaluate_ensemble_model(
    paths: Sequence[str | Path],
    options: EvalOptions,
    *,
    label: str = "ensemble",
    task_manager: Any = None,
) -> ModelResult:
    """Load all `paths` at once, evaluate their output ensemble, free them."""
    if not paths:
        raise IncompatibleModelsError("an ensemble needs at least one model")
    tokenizer = _check_tokenizers(paths, options.trust_remote_code)
    models = [
        load_model(
            p,
            device=options.device,
            dtype=options.dtype,
            offload_folder=options.offload_folder,
            trust_remote_code=options.trust_remote_code,
        )
        for p in paths
    ]
    try:
        lm = EnsembleLM(models, tokenizer, batch_size=options.batch_size)
        results = run_harness(lm, options, task_manager=task_manager)
    finally:
        del models
        gc.collect()
    described = "+".join(str(p) for p in paths)
    return results_to_model_result(results, label=label, path=described, options=options)


def evaluate_ensemble(
    paths: Sequence[str | Path] | Mapping[str, str | Path],
    options: EvalOptions,
    *,
    label: str = "ensemble",
) -> Report:
    """Evaluate the output ensemble of `paths` (all loaded at once) with `options`.

    >>> options = EvalOptions(tasks=("hubmerge_mmlu_marketing",), limit=20)
    >>> report = evaluate_ensemble(["in1", "in2"], options)  # doctest: +SKIP
    """
    if isinstance(paths, Mapping):
        paths = list(paths.values())
    manager = build_task_manager(options)
    result = evaluate_ensemble_model(list(paths), options, label=label, task_manager=manager)
    return Report(harness_version=harness_version(), models=[result])
