"""The `diff` payload (weissi.diff/1): is B the same network as A, up to scale shifts?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from weissi_cli.report.common import TOOL_VERSION, Source, finite_or_none

SCHEMA = "weissi.diff/1"
# identical: every tensor equal bit for bit; equal up to rounding: values within the
# storage dtype's rounding; equal up to scale shift: the canonical (rebalanced) forms agree.
VERDICTS = ("identical", "equal up to rounding", "equal up to scale shift", "different")


@dataclass(frozen=True)
class TensorDiff:
    name: str
    max_abs_diff: float  # raw
    max_rel_diff: float  # raw, relative to the largest |a|
    canonical_rel_diff: float | None  # after rebalancing both (tensors in a symmetry)
    bitwise_equal: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_abs_diff": finite_or_none(self.max_abs_diff),
            "max_rel_diff": finite_or_none(self.max_rel_diff),
            "canonical_rel_diff": finite_or_none(self.canonical_rel_diff),
            "bitwise_equal": self.bitwise_equal,
        }


@dataclass(frozen=True)
class Shift:
    """The layer-wise shift taking A to B on one chain or symmetry: B's weight = factor × A's."""

    scope: str
    factors: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "factors": {k: finite_or_none(v) for k, v in self.factors.items()},
        }


@dataclass(frozen=True)
class StructureBasis:
    """The structure a comparison up to scale shift stands on: its origin, how far it is
    known (exact: the program's graph or a registered architecture; declared: a spec file;
    assumed: names and shapes; none), in words, and what names and shapes could not place.
    `compared`: False when the comparison up to scale shift was not made on it."""

    origin: str
    level: str
    description: str
    refusals: tuple[str, ...]
    compared: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "level": self.level,
            "description": self.description,
            "refusals": list(self.refusals),
            "compared": self.compared,
        }


@dataclass(frozen=True)
class DiffReport:
    """What `diff` found: the verdict on A and B, the structure it stands on, the shifts found
    and the tensors that differ most (weissi.diff/1)."""

    first: Source
    second: Source
    verdict: str
    reasons: tuple[str, ...]
    tensors: tuple[TensorDiff, ...]
    shifts: tuple[Shift, ...]
    tolerance: float
    granularity: str
    warnings: tuple[str, ...]
    include_bias: bool = False
    structure: StructureBasis = StructureBasis("none", "none", "no scale symmetry found", ())

    @property
    def same_function(self) -> bool:
        return self.verdict != "different"

    @property
    def qualifier(self) -> str:
        """What "equal up to scale shift" stands on, when that is less than exact."""
        if self.verdict != "equal up to scale shift" or self.structure.level == "exact":
            return ""
        return (
            f"{self.structure.level} structure, {self.structure.description}: the same "
            "function only if that structure is the model's"
        )

    def most_different(self, count: int = 5) -> list[TensorDiff]:
        """The `count` tensors that differ most, largest difference first."""

        def key(item: TensorDiff) -> float:
            # A tensor in a symmetry differs by its canonical form: raw differences there
            # include the shift itself.
            if item.canonical_rel_diff is not None:
                return item.canonical_rel_diff
            return item.max_rel_diff

        return sorted(self.tensors, key=key, reverse=True)[:count]

    def to_dict(self) -> dict[str, Any]:
        """The weissi.diff/1 JSON payload."""
        return {
            "schema": SCHEMA,
            "tool_version": TOOL_VERSION,
            "a": self.first.to_dict(),
            "b": self.second.to_dict(),
            "verdict": self.verdict,
            "same_function": self.same_function,
            "reasons": list(self.reasons),
            "settings": {
                "granularity": self.granularity,
                "tolerance": self.tolerance,
                "include_bias": self.include_bias,
            },
            "structure": self.structure.to_dict(),
            "qualifier": self.qualifier or None,
            "shifts": [shift.to_dict() for shift in self.shifts],
            "most_different": [t.name for t in self.most_different()],
            "tensors": [t.to_dict() for t in self.tensors],
            "warnings": list(self.warnings),
        }
