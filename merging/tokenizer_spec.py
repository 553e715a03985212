"""The ``tokenizer:`` block of a recipe (mergekit's ``TokenizerConfig``): where the output
vocabulary comes from, and where single tokens' embedding rows come from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ModelToken(BaseModel):
    """A token's embedding taken from a token of one model (``kind: model_token``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["model_token"]
    model: str
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ModelToken:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of token_id or token")
        return self


class ZeroToken(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["zero"]


class TokenSpec(BaseModel):
    """Where one token's embedding row comes from; ``force`` overrides rows the models have."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: ModelToken | ZeroToken | str | None = None
    force: bool = False


class TokenizerSpec(BaseModel):
    """mergekit's ``tokenizer:`` block."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str = "union"
    tokens: dict[str, TokenSpec] = Field(default_factory=dict)
    pad_to_multiple_of: int | None = Field(None, gt=0)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return tokenizer_choice(value)

    @field_validator("tokens", mode="before")
    @classmethod
    def _null_tokens(cls, value: Any) -> Any:
        return {} if value is None else value


def tokenizer_choice(value: str) -> str:
    if value.startswith("model:"):
        raise ValueError(
            f"{value!r} is the legacy spelling; write the model itself: {value[len('model:'):]!r}"
        )
    return value


__all__ = ["ModelToken", "TokenSpec", "TokenizerSpec", "ZeroToken", "tokenizer_choice"]
