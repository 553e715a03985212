"""Optimisers behind one ask/tell interface: Optuna's CMA-ES and TPE samplers, and nevergrad.

A proposer is told the starting candidates' genomes and scores, then asked for one genome at
a time and told each score as it comes back (no generation barrier: with several workers a
new genome is asked as soon as any score returns). Every proposer is seeded, so in process
the same seed gives the same candidates.

* ``cmaes``: Optuna's `CmaEsSampler`, started at the best starting candidate with a small
  first step (`CMA_ES_SIGMA0` of each gene's range, Optuna's default is 1/6): with a few
  examples per task a search that stays near the best fixed recipe over-fits them less
  (benchmarks/merge_search.py, worst skill's test retention at budget 96, median of 5
  seeds: 60 % vs 54 % with Optuna's default);
* ``tpe``: Optuna's multivariate `TPESampler`;
* ``nevergrad``: nevergrad's `NGOpt` (it picks its algorithm from the budget, the number of
  genes and the workers), on a bounded array whose bounds are an arctan transform: values
  are always inside the bounds and never folded back or clipped;
* ``auto``: CMA-ES from `CMA_ES_MIN_GENES` genes, TPE below (CMA-ES needs a few dimensions
  to adapt its covariance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal, Protocol

from app.search.errors import SearchError
from app.search.space import SearchSpace

CMA_ES_MIN_GENES = 4
CMA_ES_SIGMA0 = 0.1  # CMA-ES's first step from a starting recipe, in units of a gene's range
Told = Sequence[tuple[Sequence[float], float]]  # (genome, score) of the starting candidates


class Proposer(Protocol):
    name: str

    def ask(self) -> tuple[Any, list[float]]: ...  # a handle and its (unrounded) genome
    def tell(self, handle: Any, score: float) -> None: ...  # NaN: a failed candidate
    def fail(self, handle: Any) -> None: ...  # never scored (cancel)


def make_sampler(space: SearchSpace, *, seed: int, x0: Sequence[float] | None, startup: int,
                 kind: str = "auto") -> Any:  # fmt: skip
    """The Optuna sampler of `kind` (``auto``, ``cmaes``, ``tpe``)."""
    import optuna

    if kind == "cmaes" or (kind == "auto" and len(space) >= CMA_ES_MIN_GENES):
        start = dict(zip((g.name for g in space.genes), x0, strict=True)) if x0 else None
        with warnings.catch_warnings():  # x0, sigma0: deprecated in Optuna 4.9 (removal in 6.0)
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.CmaEsSampler(
                x0=start, sigma0=CMA_ES_SIGMA0 if start else None, seed=seed,
                warn_independent_sampling=False)  # fmt: skip
    with warnings.catch_warnings():  # multivariate TPE is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                          multivariate=True)  # fmt: skip


class OptunaProposer:
    """An Optuna study asked and told trial by trial."""

    def __init__(self, space: SearchSpace, told: Told, *, seed: int, higher_is_better: bool,
                 x0: Sequence[float] | None, budget: int, kind: str,
                 workers: int = 1) -> None:  # fmt: skip
        """`workers` is unused: a study is asked trial by trial, however many are open."""
        import optuna
        from optuna.distributions import BaseDistribution, FloatDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.distributions: dict[str, BaseDistribution] = {
            g.name: FloatDistribution(g.low, g.high) for g in space.genes}  # fmt: skip
        sampler = make_sampler(space, seed=seed, x0=x0, startup=max(2, min(10, budget // 5)),
                               kind=kind)  # fmt: skip
        self.name = type(sampler).__name__
        direction: Literal["minimize", "maximize"] = "maximize" if higher_is_better else "minimize"
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        for genome, score in told:
            if math.isfinite(score):
                self.study.add_trial(optuna.trial.create_trial(
                    params=dict(zip(self.distributions, genome, strict=True)),
                    distributions=self.distributions, value=score))  # fmt: skip

    def ask(self) -> tuple[Any, list[float]]:
        trial = self.study.ask(self.distributions)
        return trial, [trial.params[g.name] for g in self.space.genes]

    def tell(self, handle: Any, score: float) -> None:
        import optuna

        if math.isfinite(score):
            self.study.tell(handle, score)
        else:
            self.study.tell(handle, state=optuna.trial.TrialState.FAIL)

    def fail(self, handle: Any) -> None:
        import optuna

        self.study.tell(handle, state=optuna.trial.TrialState.FAIL)


class NevergradProposer:
    """nevergrad's `NGOpt` with `num_workers` asks in flight (it minimises: a score that is
    better higher is told negated; a failed candidate is told a loss worse than any seen)."""

    name = "nevergrad NGOpt"

    def __init__(self, space: SearchSpace, told: Told, *, seed: int, higher_is_better: bool,
                 x0: Sequence[float] | None, budget: int, workers: int) -> None:  # fmt: skip
        import nevergrad as ng
        import numpy as np

        self.np = np
        self.sign = -1.0 if higher_is_better else 1.0
        self.low = np.array([g.low for g in space.genes], dtype=float)
        self.high = np.array([g.high for g in space.genes], dtype=float)
        start = self._inside(x0 if x0 is not None else (self.low + self.high) / 2)
        self.parameter = ng.p.Array(init=start).set_bounds(self.low, self.high, method="arctan")
        self.parameter.random_state = np.random.RandomState(seed)
        self.optimizer = ng.optimizers.NGOpt(
            parametrization=self.parameter, budget=max(1, budget), num_workers=max(1, workers)
        )
        self.losses: list[float] = []
        for genome, score in told:
            if math.isfinite(score):
                child = self.parameter.spawn_child(new_value=self._inside(genome))
                self._tell(child, self.sign * score)

    def _inside(self, genome: Sequence[float]) -> Any:
        """`genome` strictly inside the bounds (the arctan transform's infinity is the bound;
        only starting points, which may lie on a bound, are moved, by 1e-6 of the range)."""
        margin = 1e-6 * (self.high - self.low)
        return self.np.minimum(self.np.maximum(self.np.asarray(genome, dtype=float),
                                               self.low + margin), self.high - margin)  # fmt: skip

    def _tell(self, handle: Any, loss: float) -> None:
        with warnings.catch_warnings():  # scipy's COBYLA warns about its own tolerances
            warnings.simplefilter("ignore", UserWarning)
            self.optimizer.tell(handle, loss)
        self.losses.append(loss)

    def ask(self) -> tuple[Any, list[float]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            candidate = self.optimizer.ask()
        return candidate, [float(v) for v in candidate.value]

    def tell(self, handle: Any, score: float) -> None:
        if math.isfinite(score):
            self._tell(handle, self.sign * score)
        else:
            self.fail(handle)

    def fail(self, handle: Any) -> None:
        worst = max(self.losses, default=0.0)
        self._tell(handle, worst + abs(worst) + 1.0)


OPTIMIZERS = ("auto", "cmaes", "tpe", "nevergrad")
_FACTORIES: dict[str, Callable[..., Proposer]] = {
    "auto": partial(OptunaProposer, kind="auto"),
    "cmaes": partial(OptunaProposer, kind="cmaes"),
    "tpe": partial(OptunaProposer, kind="tpe"),
    "nevergrad": NevergradProposer,
}


def make_proposer(kind: str, space: SearchSpace, told: Told, *, seed: int,
                  higher_is_better: bool, x0: Sequence[float] | None, budget: int,
                  workers: int) -> Proposer:  # fmt: skip
    """The proposer of `kind` (one of `OPTIMIZERS`), told the starting candidates; `budget`
    is how many genomes it will be asked for."""
    if kind not in _FACTORIES:
        raise SearchError(f"unknown optimizer {kind!r}; use one of {', '.join(OPTIMIZERS)}")
    return _FACTORIES[kind](space, told, seed=seed, higher_is_better=higher_is_better, x0=x0,
                            budget=budget, workers=workers)  # fmt: skip
