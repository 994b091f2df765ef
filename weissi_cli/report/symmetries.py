"""Symmetries that are not chains (from a graph or a spec), solved together: payload part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from weissi_cli.balance.channelwise import ChannelSolution
from weissi_cli.ir import Stop, Symmetry
from weissi_cli.report.common import finite_or_none
from weissi_cli.report.graph import member_dict


@dataclass(frozen=True)
class SymmetryGroup:
    """All free symmetries of a checkpoint with their joint layer-wise optimum (one scale per
    symmetry) and, when asked for, the channel-wise one."""

    symmetries: tuple[Symmetry, ...]
    l2_penalty: float
    layer: ChannelSolution
    channel: ChannelSolution | None
    stops: tuple[Stop, ...]
    l2_after: float | None = None  # measured in a rewritten file

    def to_dict(self) -> dict[str, Any]:
        chosen = self.channel or self.layer
        return {
            "l2_penalty": finite_or_none(self.l2_penalty),
            "min_l2_penalty": finite_or_none(self.layer.l2_after),
            "min_l2_penalty_channel": finite_or_none(self.channel.l2_after)
            if self.channel
            else None,
            "l2_after": finite_or_none(self.l2_after),
            "sweeps": chosen.sweeps,
            "converged": chosen.converged,
            "symmetries": [self._symmetry(symmetry, chosen) for symmetry in self.symmetries],
            "stops": [stop_dict(stop) for stop in self.stops],
        }

    @staticmethod
    def _symmetry(symmetry: Symmetry, solution: ChannelSolution) -> dict[str, Any]:
        found = solution.symmetries.get(symmetry.id)
        scales = found.scales if found is not None else np.ones(symmetry.size)
        return {
            "id": symmetry.id,
            "size": symmetry.size,
            "tie": symmetry.tie,
            "exact": symmetry.exact,
            "origin": symmetry.origin,
            "note": symmetry.note,
            "members": [member_dict(member) for member in symmetry.members],
            "unbounded": bool(found and found.unbounded),
            "dead_units": list(found.dead) if found else [],
            "scale_min": finite_or_none(float(scales.min())) if scales.size else None,
            "scale_max": finite_or_none(float(scales.max())) if scales.size else None,
        }


def stop_dict(stop: Stop) -> dict[str, Any]:
    return {"producers": list(stop.producers), "node": stop.node, "reason": stop.reason}
