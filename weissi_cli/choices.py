"""The choices options take, as string enums: the CLI's option types and the API's argument
types, validated in one place (`choose`)."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from weissi_cli.errors import UsageError


class Scales(StrEnum):
    """auto: power-of-two scales for 16-bit tensors, real ones otherwise; real: the exact
    optimum; pow2: powers of two (only exponents change)."""

    AUTO = "auto"
    REAL = "real"
    POW2 = "pow2"


class Granularity(StrEnum):
    """One scale per layer (per symmetry), or one per channel (hidden unit)."""

    LAYER = "layer"
    CHANNEL = "channel"


class OutputFormat(StrEnum):
    """same: the input's format; safetensors: just the tensors."""

    SAME = "same"
    SAFETENSORS = "safetensors"


class VerifyWith(StrEnum):
    """transformers: run the architecture's own code on both folders; none: do not."""

    TRANSFORMERS = "transformers"
    NONE = "none"


class TrendOrder(StrEnum):
    """step: by the training step in each name; given: as listed."""

    STEP = "step"
    GIVEN = "given"


Choice = TypeVar("Choice", bound=StrEnum)


def choose(kind: type[Choice], value: str, option: str) -> Choice:
    """`value` as a member of `kind`, or a usage error naming `option` and its choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise UsageError(f"{option} must be one of {choices}, not {value!r}") from None
