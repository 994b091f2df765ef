"""Power-of-two exponents held within float16 headroom, so that every scaled value is exact.

A tensor's element (r, c, ...) is multiplied by 2^t with t the sum of the exponents its row,
its column and any further axis receive from the symmetries. It stays exact while
−down(r, c) ≤ t ≤ up(r, c). Only per-row and per-column minima of the headroom are known,
and down(r, c) ≥ max(rows_down[r], columns_down[c]), so the check below is sufficient.

Every exponent 0 is feasible (nothing moves), so moving exponents one step towards 0 until
no element is out of bounds ends, and ends exact: each step shrinks an exponent that pushes
some out-of-bounds element the wrong way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.headroom import Headroom
from weissi_cli.ir import Member, Symmetry

Exponents = npt.NDArray[np.int64]
Vector = npt.NDArray[np.float64]
Flags = npt.NDArray[np.bool_]

GRID_ELEMENTS = 1 << 22  # the (rows × columns) exponent grid is checked in blocks this large


@dataclass(frozen=True)
class ExactLimits:
    """The float16 headroom of the tensors a power-of-two rebalance may scale."""

    headroom: Mapping[str, Headroom]

    def __bool__(self) -> bool:
        return bool(self.headroom)

    def hold(
        self, symmetries: Iterable[Symmetry], scales: Mapping[str, Vector], whole: bool
    ) -> tuple[dict[str, Vector], dict[str, int]]:
        """`scales` (powers of two, per symmetry id) moved towards 1 until every float16
        value they scale stays exact, and per symmetry the number of channels that moved.
        `whole`: one scale per symmetry (layer granularity), else one per tie group."""
        symmetries = [s for s in symmetries if s.id in scales]
        exponents = {s.id: np.rint(np.log2(scales[s.id])).astype(np.int64) for s in symmetries}
        wanted = {key: value.copy() for key, value in exponents.items()}
        touching: dict[str, list[tuple[Symmetry, Member]]] = {}
        for symmetry in symmetries:
            for member in symmetry.members:
                if member.tensor in self.headroom:
                    touching.setdefault(member.tensor, []).append((symmetry, member))
        while True:
            shrink = {s.id: np.zeros(s.size, dtype=bool) for s in symmetries}
            for tensor, members in touching.items():
                self._flag(tensor, members, exponents, shrink)
            moved = False
            for symmetry in symmetries:
                flags = _grouped(shrink[symmetry.id], symmetry, whole)
                flags &= exponents[symmetry.id] != 0
                if flags.any():
                    moved = True
                    exponents[symmetry.id][flags] -= np.sign(exponents[symmetry.id][flags])
            if not moved:
                break
        held = {
            key: int(np.count_nonzero(exponents[key] != wanted[key]))
            for key in exponents
            if np.any(exponents[key] != wanted[key])
        }
        return {key: np.ldexp(1.0, value) for key, value in exponents.items()}, held

    def _flag(
        self,
        tensor: str,
        members: list[tuple[Symmetry, Member]],
        exponents: Mapping[str, Exponents],
        shrink: dict[str, Flags],
    ) -> None:
        """Mark the channels that push an out-of-bounds element of `tensor` further out."""
        shape = self.headroom[tensor].shape
        sizes = (shape[0] if shape else 1, shape[1] if len(shape) > 1 else 1)
        if 0 in shape:  # no values: nothing can round
            return
        along = [np.zeros(size, dtype=np.int64) for size in sizes]
        low, high = 0, 0  # the extremes that axes after the second add
        for symmetry, member in members:
            contribution = _along_axis(member, symmetry, exponents, _axis_size(shape, member))
            if member.axis < 2:
                along[member.axis] += contribution
            else:
                low += int(contribution.min())
                high += int(contribution.max())
        room = self.headroom[tensor]
        out_low = [np.zeros(size, dtype=bool) for size in sizes]
        out_high = [np.zeros(size, dtype=bool) for size in sizes]
        block = max(1, GRID_ELEMENTS // sizes[1])
        for start in range(0, sizes[0], block):
            rows = slice(start, start + block)
            total = along[0][rows, None] + along[1][None, :]
            down = np.maximum(room.rows_down[rows, None], room.columns_down[None, :])
            up = np.maximum(room.rows_up[rows, None], room.columns_up[None, :])
            for flags, outside in (
                (out_low, total + low < -down.astype(np.int64)),
                (out_high, total + high > up.astype(np.int64)),
            ):
                flags[0][rows] |= outside.any(axis=1)
                flags[1] |= outside.any(axis=0)
        for symmetry, member in members:
            sign = member.exponent * np.sign(exponents[symmetry.id])
            if member.axis < 2:
                low_flags = _per_channel(out_low[member.axis], member, symmetry.size)
                high_flags = _per_channel(out_high[member.axis], member, symmetry.size)
            else:
                low_flags = np.full(symmetry.size, bool(out_low[0].any()))
                high_flags = np.full(symmetry.size, bool(out_high[0].any()))
            shrink[symmetry.id] |= (low_flags & (sign < 0)) | (high_flags & (sign > 0))


def _axis_size(shape: tuple[int, ...], member: Member) -> int:
    return shape[member.axis] if member.axis < len(shape) else 1


def _along_axis(
    member: Member, symmetry: Symmetry, exponents: Mapping[str, Exponents], size: int
) -> Exponents:
    """The exponent `member` adds at each index of its axis."""
    contribution = np.zeros(size, dtype=np.int64)
    span = slice(member.offset, member.offset + symmetry.size * member.block)
    contribution[span] = np.repeat(member.exponent * exponents[symmetry.id], member.block)
    return contribution


def _per_channel(flags: Flags, member: Member, size: int) -> Flags:
    span = flags[member.offset : member.offset + size * member.block]
    return np.asarray(span.reshape(size, member.block).any(axis=1))


def _grouped(flags: Flags, symmetry: Symmetry, whole: bool) -> Flags:
    """A flag on one channel flags every channel that shares its scale."""
    if whole:
        return np.full(symmetry.size, bool(flags.any()))
    tie = max(symmetry.tie, 1)
    return np.repeat(flags.reshape(-1, tie).any(axis=1), tie)


def exact_range(headroom: Headroom | None) -> tuple[float, float]:
    """(lowest, highest) exponent a uniform scale of the tensor may take (±inf: no limit)."""
    if headroom is None:
        return -np.inf, np.inf
    return -float(headroom.down), float(headroom.up)
