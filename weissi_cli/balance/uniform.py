"""Axis squares for the layer-wise solver where a moving axis takes one factor throughout."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.ir import Member, Symmetry

Vector = npt.NDArray[np.float64]


def uniform_axes(
    symmetries: Iterable[Symmetry],
    plan: Mapping[str, tuple[bool, bool]],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, tuple[bool, bool]]:
    """Per tensor of `plan` (name -> the axes a bounded symmetry moves), which of those
    axes every moving member covers whole. Layer-wise, a symmetry has one scale for all
    its channels, so such an axis takes one factor throughout, and its squares can be
    summed along it: the solver needs only their total there."""
    covering: dict[tuple[str, int], bool] = {}
    for symmetry in symmetries:
        members = [m for m in symmetry.members if m.tensor in plan]
        if not (any(m.exponent > 0 for m in members) and any(m.exponent < 0 for m in members)):
            continue  # unbounded: the descent never moves it (see channelwise._bounded)
        for member in members:
            key = (member.tensor, member.axis)
            whole = _covers(member, symmetry.size, _axis_length(shapes[member.tensor], member))
            covering[key] = covering.get(key, True) and whole
    return {
        name: (
            rows and covering.get((name, 0), False),
            columns and covering.get((name, 1), False),
        )
        for name, (rows, columns) in plan.items()
    }


def _axis_length(shape: tuple[int, ...], member: Member) -> int:
    if member.axis == 0:
        return shape[0] if shape else 1
    return shape[1] if len(shape) > 1 else 1


def _covers(member: Member, size: int, length: int) -> bool:
    return member.offset == 0 and size * member.block == length


@dataclass(frozen=True)
class UniformSquares:
    """The [rows, columns] axis squares of a tensor whose uniform axes (see `uniform_axes`)
    are summed out: `sums` is [rows or 1, columns or 1]. Used through products, as a
    streamed tensor is, at no pass over the data. A factor vector along a uniform axis must
    hold one value (the solver's layer-wise steps keep it so; anything else is refused); a
    product along a uniform axis returns its sum in the first entry and zeros elsewhere,
    since the solver only ever takes such a product's sum under that one factor."""

    sums: npt.NDArray[np.float64]
    full: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.full

    @property
    def nbytes(self) -> int:
        return 0

    def matvec(self, vector: Vector) -> Vector:
        """Q @ vector, one value per row."""
        along = self._collapse(vector, 1)
        return self._spread(self.sums @ along, 0)

    def rmatvec(self, vector: Vector) -> Vector:
        """vector @ Q, one value per column."""
        along = self._collapse(vector, 0)
        return self._spread(along @ self.sums, 1)

    def matvec_rmatvec(
        self, vector: Vector, rows_after: Callable[[int, Vector], Vector]
    ) -> tuple[Vector, Vector]:
        products = self.matvec(vector)
        return products, self.rmatvec(rows_after(0, products))

    def entries(self, rows: npt.NDArray[np.intp], columns: npt.NDArray[np.intp]) -> Vector:
        """Q[rows[k, a], columns[k, b]] as [k, a, b], where neither axis is summed."""
        if self.sums.shape != self.full:
            raise ValueError(f"entries of {self.full} squares summed to {self.sums.shape}")
        found: Vector = self.sums[rows[:, :, None], columns[:, None, :]]
        return found

    def _collapse(self, vector: Vector, axis: int) -> Vector:
        """`vector` (one factor per entry of `axis`) as the summed squares take it."""
        if vector.shape != (self.full[axis],):
            raise ValueError(f"a vector of {vector.shape} for axis {axis} of {self.full}")
        if self.sums.shape[axis] == self.full[axis]:
            return vector
        if vector.size and not np.all(vector == vector[0]):
            raise ValueError(f"axis {axis} was summed as uniform, but its factors differ")
        return vector[:1]

    def _spread(self, values: Vector, axis: int) -> Vector:
        if self.sums.shape[axis] == self.full[axis]:
            return np.asarray(values, dtype=np.float64)
        result = np.zeros(self.full[axis])
        result[0] = values[0]
        return result
