"""The `rebalance` payload (weissi.rebalance/1): scales, penalties, verification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from weissi_cli.report.common import TOOL_VERSION, Source, finite_or_none
from weissi_cli.report.symmetries import SymmetryGroup
from weissi_cli.verification import ChainVerification, Verification

SCHEMA = "weissi.rebalance/1"

# Per verification level: its mark, and what it claims. Only a run of the real network
# earns the check mark.
LEVEL_MARKS: dict[str, tuple[str, str]] = {
    "real_network": ("✓", "exact for the real network"),
    "declared_structure": ("◇", "exact for the declared structure; the real network was not run"),
    "values_only": ("○", "values only; the function was not run"),
    "approximate": ("≈", "approximate; the function changed"),
}
FAILED_MARK = ("✗", "verification failed")


def verdict_line(verification: Verification) -> tuple[str, str]:
    """(mark, words) of a verification's verdict."""
    if not verification.passed:
        return FAILED_MARK
    return LEVEL_MARKS[verification.level]


@dataclass(frozen=True)
class ChannelResult:
    """Per-channel rebalancing of one chain."""

    min_l2_penalty: float
    sweeps: int
    converged: bool
    tolerance: float
    dead_units: dict[str, tuple[int, ...]]  # symmetry id -> channels left at 1
    unbounded: tuple[str, ...]
    path_norm_before: float | None
    path_norm_after: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_l2_penalty": finite_or_none(self.min_l2_penalty),
            "sweeps": self.sweeps,
            "converged": self.converged,
            "tolerance": self.tolerance,
            "dead_units": {key: list(value) for key, value in self.dead_units.items()},
            "unbounded": list(self.unbounded),
            "path_norm_before": finite_or_none(self.path_norm_before),
            "path_norm_after": finite_or_none(self.path_norm_after),
        }


@dataclass(frozen=True)
class ChainResult:
    id: str
    origin: str
    scales: str  # "real" | "pow2" | "none" (left alone)
    layers: tuple[str, ...]
    gammas: tuple[float, ...]
    bias_scales: tuple[float, ...]
    l2_before: float | None
    l2_after: float | None
    min_l2_penalty: float | None
    weissi_before: float | None
    weissi_after: float | None
    skipped: str | None
    channel: ChannelResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "origin": self.origin,
            "scales": self.scales,
            "layers": list(self.layers),
            "gammas": [finite_or_none(gamma) for gamma in self.gammas],
            "bias_scales": [finite_or_none(scale) for scale in self.bias_scales],
            "l2_before": finite_or_none(self.l2_before),
            "l2_after": finite_or_none(self.l2_after),
            "min_l2_penalty": finite_or_none(self.min_l2_penalty),
            "weissi_before": finite_or_none(self.weissi_before),
            "weissi_after": finite_or_none(self.weissi_after),
            "skipped": self.skipped,
            "channel": self.channel.to_dict() if self.channel else None,
        }


@dataclass(frozen=True)
class RebalanceReport:
    """What `rebalance` did: the scales per chain or symmetry, L2 and WEISSI before and after,
    the verification and whether the output was written (weissi.rebalance/1)."""

    source: Source
    output_path: str
    output_format: str
    written: bool
    scales: str
    granularity: str
    include_bias: bool
    chains: tuple[ChainResult, ...]
    verification: Verification
    warnings: tuple[str, ...]
    group: SymmetryGroup | None = None  # symmetries that are not chains, solved together
    group_scales: str = "none"  # "real" | "pow2" for the group
    nothing_to_do: bool = False  # every scale was 1: nothing rewritten

    def to_dict(self) -> dict[str, Any]:
        """The weissi.rebalance/1 JSON payload."""
        return {
            "schema": SCHEMA,
            "tool_version": TOOL_VERSION,
            "source": self.source.to_dict(),
            "output": {
                "path": self.output_path,
                "format": self.output_format,
                "written": self.written,
            },
            "nothing_to_do": self.nothing_to_do,
            "settings": {
                "scales": self.scales,
                "granularity": self.granularity,
                "include_bias": self.include_bias,
            },
            "chains": [chain.to_dict() for chain in self.chains],
            "symmetries": (
                {**self.group.to_dict(), "scales": self.group_scales} if self.group else None
            ),
            "verification": verification_dict(self.verification),
            "warnings": list(self.warnings),
        }


def verification_dict(verification: Verification) -> dict[str, Any]:
    return {
        "method": verification.method,
        "passed": verification.passed,
        "max_abs_diff": finite_or_none(verification.max_abs_diff),
        "max_rel_diff": finite_or_none(verification.max_rel_diff),
        "probes": verification.probes,
        "level": verification.level,
        "caveats": list(verification.caveats),
        "chains": [chain_verification_dict(result) for result in verification.chains],
    }


def chain_verification_dict(result: ChainVerification) -> dict[str, Any]:
    return {
        "id": result.chain_id,
        "method": result.method,
        "passed": result.passed,
        "max_abs_diff": finite_or_none(result.max_abs_diff),
        "max_rel_diff": finite_or_none(result.max_rel_diff),
        "bit_identical": result.bit_identical,
        "detail": result.detail,
        "level": result.level,
        "caveat": result.caveat or None,
        "probes": result.probes,
    }
