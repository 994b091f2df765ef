"""Symmetries that are not chains (from a graph or a spec), solved together: payload part."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weissi_cli.balance.channelwise import ChannelSolution
from weissi_cli.balance.layerwise import weissi_penalty
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
    # Per weight tensor (log ‖W‖, ‖W/‖W‖‖₁), for the WEISSI terms of each kind of symmetry.
    weissi_terms: dict[str, tuple[float, float]] = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = ()
    lambdas: tuple[float, float] = (1.0, 1.0)

    def kinds(self) -> list[KindRow]:
        """One row per block and kind of symmetry, for structures made of repeated blocks
        (a transformer's layers); none for a structure without blocks."""
        if not any(symmetry.group for symmetry in self.symmetries):
            return []
        order: dict[tuple[str, str], list[Symmetry]] = {}
        for symmetry in self.symmetries:
            if symmetry.kind:
                order.setdefault((symmetry.group, symmetry.kind), []).append(symmetry)
        return [self._kind_row(group, kind, members) for (group, kind), members in order.items()]

    def _kind_row(self, group: str, kind: str, symmetries: list[Symmetry]) -> KindRow:
        solutions = [self.layer.symmetries.get(s.id) for s in symmetries]
        bounded = [
            s
            for s, found in zip(symmetries, solutions, strict=True)
            if found and not found.unbounded
        ]
        penalised = self.layer.tensor_l2_before
        tensors = tuple(
            dict.fromkeys(
                m.tensor
                for s in (bounded or symmetries)
                for m in s.members
                if m.tensor in penalised
            )
        )

        def total(values: dict[str, float]) -> float:
            return math.fsum(values.get(name, 0.0) for name in tensors)

        terms = [self.weissi_terms[name] for name in tensors if name in self.weissi_terms]
        log_sum = math.fsum(t[0] for t in terms) if terms else None
        l1_sum = math.fsum(t[1] for t in terms) if terms else None
        return KindRow(
            group=group,
            kind=kind,
            symmetries=len(symmetries),
            exact=all(s.exact for s in symmetries),
            tensors=tensors,
            unbounded=not bounded,
            l2_now=total(penalised),
            l2_layer=total(self.layer.tensor_l2_after) if bounded else None,
            l2_channel=total(self.channel.tensor_l2_after) if bounded and self.channel else None,
            log_norm_sum=log_sum,
            l1_direction_sum=l1_sum,
            lambdas=self.lambdas,
        )

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
            "kinds": [row.to_dict() for row in self.kinds()],
            "notes": list(self.notes),
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


@dataclass(frozen=True)
class KindRow:
    """The symmetries of one kind in one block (e.g. every q↔k head of layer 3): the
    penalised tensors they move, their L2 now and at the optima, and the WEISSI terms."""

    group: str
    kind: str
    symmetries: int
    exact: bool
    tensors: tuple[str, ...]
    unbounded: bool  # every symmetry of the row can shrink L2 without limit
    l2_now: float
    l2_layer: float | None
    l2_channel: float | None
    log_norm_sum: float | None
    l1_direction_sum: float | None
    lambdas: tuple[float, float] = (1.0, 1.0)

    @property
    def weissi_penalty(self) -> float | None:
        if self.log_norm_sum is None or self.l1_direction_sum is None:
            return None
        return weissi_penalty(self.log_norm_sum, self.l1_direction_sum, *self.lambdas)

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.group,
            "kind": self.kind,
            "symmetries": self.symmetries,
            "exact": self.exact,
            "tensors": list(self.tensors),
            "unbounded": self.unbounded,
            "l2_penalty": finite_or_none(self.l2_now),
            "min_l2_penalty": finite_or_none(self.l2_layer),
            "min_l2_penalty_channel": finite_or_none(self.l2_channel),
            "log_norm_sum": finite_or_none(self.log_norm_sum),
            "l1_direction_sum": finite_or_none(self.l1_direction_sum),
            "weissi_penalty": finite_or_none(self.weissi_penalty),
        }


def stop_dict(stop: Stop) -> dict[str, Any]:
    return {"producers": list(stop.producers), "node": stop.node, "reason": stop.reason}
