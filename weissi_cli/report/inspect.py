"""The `inspect` payload (weissi.inspect/1): per-tensor statistics, per-chain penalties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from weissi_cli.balance.analysis import ChainAnalysis
from weissi_cli.balance.channelwise import ChannelSolution
from weissi_cli.ir import Unassigned
from weissi_cli.report.common import TOOL_VERSION, Source, finite_or_none, unassigned_dict
from weissi_cli.report.symmetries import SymmetryGroup

SCHEMA = "weissi.inspect/1"


@dataclass(frozen=True)
class TensorRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    fro_norm: float | None
    max_abs: float | None
    l1_direction: float | None
    nonfinite: int
    skipped: str | None  # why no statistics (non-float dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "fro_norm": finite_or_none(self.fro_norm) if not self.nonfinite else None,
            "max_abs": finite_or_none(self.max_abs) if not self.nonfinite else None,
            "l1_direction": finite_or_none(self.l1_direction) if not self.nonfinite else None,
            "nonfinite": self.nonfinite,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class InspectSettings:
    """The penalty `inspect` reports: its weights λ1 and λ2, whether biases count, the
    granularity of the optimum."""

    lambda1: float
    lambda2: float
    include_bias: bool
    granularity: str = "layer"

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON."""
        return {
            "lambda1": self.lambda1,
            "lambda2": self.lambda2,
            "include_bias": self.include_bias,
            "granularity": self.granularity,
        }


@dataclass(frozen=True)
class InspectReport:
    """What `inspect` found: every tensor's statistics, every chain's penalties and optimum,
    the free symmetries solved together (weissi.inspect/1)."""

    source: Source
    settings: InspectSettings
    tensors: tuple[TensorRow, ...]
    chains: tuple[ChainAnalysis, ...]
    channel: dict[str, ChannelSolution]  # chain id -> per-channel optimum (when asked for)
    group: SymmetryGroup | None  # symmetries that are not chains (graph, spec)
    dtypes: dict[str, str]  # weight tensor -> dtype, for the rendering of chain rows
    unassigned: tuple[Unassigned, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The weissi.inspect/1 JSON payload (a dict;
        `pandas.DataFrame(report.to_dict()["tensors"])` is the per-tensor table)."""
        return {
            "schema": SCHEMA,
            "tool_version": TOOL_VERSION,
            "source": self.source.to_dict(),
            "settings": self.settings.to_dict(),
            "tensors": [row.to_dict() for row in self.tensors],
            "chains": [
                chain_dict(analysis, self.channel.get(analysis.chain.id))
                for analysis in self.chains
            ],
            "symmetries": self.group.to_dict() if self.group else None,
            "unassigned": [entry.name for entry in self.unassigned],
            "unassigned_reasons": [unassigned_dict(entry) for entry in self.unassigned],
            "warnings": list(self.warnings),
        }


def chain_dict(analysis: ChainAnalysis, channel: ChannelSolution | None = None) -> dict[str, Any]:
    chain = analysis.chain
    l2 = analysis.l2_penalty
    layers = []
    for layer in analysis.layers:
        layers.append(
            {
                "name": layer.layer.prefix,
                "weight": layer.layer.weight,
                "bias": layer.layer.bias,
                "shape": list(layer.layer.shape),
                "fro_norm": finite_or_none(layer.fro_norm),
                "bias_norm": finite_or_none(layer.bias_norm),
                "log_norm": finite_or_none(layer.log_norm),
                "l1_direction": finite_or_none(layer.l1_direction),
                "gamma": finite_or_none(layer.gamma),
                "bias_scale": finite_or_none(layer.bias_scale),
                "rebalanced_norm": finite_or_none(layer.rebalanced_norm),
                "rebalanced_bias_norm": finite_or_none(layer.rebalanced_bias_norm),
                "share_of_l2": finite_or_none(layer.fro_norm**2 / l2) if l2 else None,
            }
        )
    return {
        "id": chain.id,
        "origin": chain.origin,
        "activation": chain.activation,
        "depth": chain.depth,
        "layers": layers,
        "l2_penalty": finite_or_none(analysis.l2_penalty),
        "log_norm_sum": finite_or_none(analysis.log_norm_sum),
        "l1_direction_sum": finite_or_none(analysis.l1_direction_sum),
        "weissi_penalty": finite_or_none(analysis.weissi_penalty),
        "geometric_mean": finite_or_none(analysis.geometric_mean),
        "min_l2_penalty": finite_or_none(analysis.min_l2_penalty),
        "min_l2_penalty_pow2": finite_or_none(analysis.pow2_l2_penalty),
        "l2_slack": finite_or_none(analysis.l2_slack),
        "imbalance": finite_or_none(analysis.imbalance),
        "notes": list(chain.notes),
        "problem": analysis.problem,
        "min_l2_penalty_channel": finite_or_none(channel.l2_after) if channel else None,
        "channel": channel_dict(channel) if channel else None,
    }


def channel_dict(solution: ChannelSolution) -> dict[str, Any]:
    return {
        "min_l2_penalty": finite_or_none(solution.l2_after),
        "sweeps": solution.sweeps,
        "converged": solution.converged,
        "tolerance": solution.tolerance,
        "dead_units": {
            key: list(item.dead) for key, item in solution.symmetries.items() if item.dead
        },
        "unbounded": [key for key, item in solution.symmetries.items() if item.unbounded],
    }
