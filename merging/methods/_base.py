"""What a merge method is: a pure function plus its parameter models, registered by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor

from merging.methods._ops import RandomStream
from merging.registry import Registry


class MethodParams(BaseModel):
    """Global parameters of a method (one value per tensor)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SourceParams(BaseModel):
    """Per-source parameters of a method (one value per source and tensor)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    weight: float = 1.0


P = TypeVar("P", bound=MethodParams)
S = TypeVar("S", bound=SourceParams)
P_in = TypeVar("P_in", bound=MethodParams, contravariant=True)
S_in = TypeVar("S_in", bound=SourceParams, contravariant=True)


class MergeFunction(Protocol[P_in, S_in]):
    def __call__(
        self,
        base: Tensor | None,
        inputs: Sequence[Tensor],
        sources: Sequence[S_in],
        params: P_in,
        rng: RandomStream,
    ) -> Tensor: ...


@dataclass(frozen=True)
class Method(Generic[P, S]):
    """A registered merge method.

    Attributes:
        name: registry name (snake_case, following the paper).
        fn: the tensor function; pure, float32 in and out, no I/O, randomness only from ``rng``.
        params / source_params: pydantic models of the global and per-source parameters.
        formula: the update rule in one line, shown in the UI and in model cards.
        paper: link to the method's paper.
        needs_base: whether ``base_model`` is required (and excluded from the inputs).
        optional_base: with ``needs_base`` false, whether a ``base_model`` the recipe names is
            still used as the base (mergekit's optional base: NuSLERP and Multi-SLERP of task
            vectors); the function then receives it as ``base``, else ``None``.
        base_as_point: for a method that takes no base, whether a ``base_model`` the recipe
            names, and does not list under ``models:``, counts as one more input after the
            models (mergekit 0.1.5 adds it to the inputs of every ``models:`` recipe), given
            the recipe's global parameters; `None`: never.
        min_inputs / max_inputs: how many non-base inputs it accepts.
        randomized: whether the result depends on the seed.
        semantics: renders the exact rules in effect for given parameters (for model cards).
        kernel: builds, from (params, per-source params, rng, tensor shape), the chunked kernel
            computing the same result in bounded memory (see `merging.methods._kernels`);
            `None`, or a factory returning `None` for some parameters, means whole tensors.
    """

    name: str
    fn: MergeFunction[P, S]
    params: type[P]
    source_params: type[S]
    formula: str
    paper: str
    needs_base: bool = True
    optional_base: bool = False
    base_as_point: Callable[[Mapping[str, Any]], bool] | None = None
    min_inputs: int = 1
    max_inputs: int | None = None
    randomized: bool = False
    semantics: Callable[[P], str] | None = None
    kernel: Callable[[P, Sequence[S], RandomStream, tuple[int, ...]], Any] | None = None

    def describe(self, params: P) -> str:
        text = f"{self.name}: {self.formula}"
        if self.semantics is not None:
            text += "\n" + self.semantics(params)
        return text

    def parameter_names(self) -> set[str]:
        return set(_names(self.params)) | set(_names(self.source_params))


def _names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


METHODS: Registry[Method[Any, Any]] = Registry("merge method")


def register(
    name: str,
    *,
    params: type[MethodParams] = MethodParams,
    source_params: type[SourceParams] = SourceParams,
    formula: str,
    paper: str,
    **options: Any,
) -> Callable[[MergeFunction[Any, Any]], MergeFunction[Any, Any]]:
    """Register a merge function under ``name``; returns the function unchanged."""

    def wrap(fn: MergeFunction[Any, Any]) -> MergeFunction[Any, Any]:
        METHODS.add(
            name,
            Method(name, fn, params, source_params, formula=formula, paper=paper, **options),
        )
        return fn

    return wrap
