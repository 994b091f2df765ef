"""What a rewrite multiplies each tensor by: a scalar, or vectors along its axes."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from weissi_cli.balance.layerwise import Shift
from weissi_cli.ir import Chain, Symmetry

Vector = npt.NDArray[np.float64]
NO_FACTORS: Vector = np.zeros(0)  # "all ones", for the C kernel


@dataclass(frozen=True)
class TensorScale:
    """Factor of element (i0, i1, ...) = scalar · Π_axis vectors[axis][i_axis]."""

    shape: tuple[int, ...]
    scalar: float = 1.0
    vectors: dict[int, Vector] = field(default_factory=dict)

    @property
    def is_identity(self) -> bool:
        return self.scalar == 1.0 and all(np.all(v == 1.0) for v in self.vectors.values())

    @functools.cached_property
    def is_power_of_two(self) -> bool:
        if not (self.scalar > 0 and math.frexp(self.scalar)[0] == 0.5):
            return False
        return all(
            bool(np.all(vector > 0) and np.all(np.frexp(vector)[0] == 0.5))
            for vector in self.vectors.values()
        )

    @property
    def row_width(self) -> int:
        """Elements per index of axis 0 (the unit chunks are aligned to)."""
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1

    @functools.cached_property
    def row_pattern(self) -> Vector | None:
        """The factors along one row from every axis but the first (None when uniform):
        factor(row r, k) = scalar · vectors[0][r] · row_pattern[k]."""
        others = {axis: vector for axis, vector in self.vectors.items() if axis != 0}
        if not others:
            return None
        pattern = TensorScale(self.shape, 1.0, others).rows(0, 1)
        return np.ascontiguousarray(pattern, dtype=np.float64)

    def kernel_factors(self, start: int, count: int) -> tuple[Vector, Vector]:
        """(factors of rows start..start+count, row_pattern) as the C kernel takes them:
        factor(r, k) = scalar · row_factors[r] · pattern[k]; an empty array stands for ones."""
        row_vector = self.vectors.get(0)
        pattern = self.row_pattern
        return (
            NO_FACTORS
            if row_vector is None
            else np.ascontiguousarray(row_vector[start : start + count], np.float64),
            NO_FACTORS if pattern is None else pattern,
        )

    def chunk_arguments(self, start: int, count: int) -> tuple[int, float, Vector, Vector]:
        """(row width, scalar, row factors, pattern) for the kernel's scale_chunk over values
        start..start+count. A chunk of a uniform scale need not be
        whole rows: it is then one "row"."""
        width = max(self.row_width if self.vectors else count, 1)
        return (width, self.scalar, *self.kernel_factors(start // width, count // width))

    def rows(self, start: int, count: int) -> float | Vector:
        """The factors of rows start..start+count, flattened (a scalar when uniform)."""
        if not self.vectors:
            return self.scalar
        full = np.full((count, *self.shape[1:]), self.scalar, dtype=np.float64)
        for axis, vector in self.vectors.items():
            part = vector[start : start + count] if axis == 0 else vector
            view = [1] * len(self.shape)
            view[axis] = part.size
            full *= part.reshape(view)
        return full.reshape(-1)

    def whole(self) -> float | Vector:
        return self.rows(0, self.shape[0] if self.shape else 1)


def uniform(shape: tuple[int, ...], factor: float) -> TensorScale:
    return TensorScale(tuple(shape), scalar=factor)


def from_symmetries(
    symmetries: Iterable[Symmetry],
    channel_scales: Mapping[str, Vector],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, TensorScale]:
    """Tensor -> scale, from one positive scale per channel of every symmetry.

    Member (tensor, axis, exponent, block, offset): channel c multiplies entries
    offset + c·block ... offset + (c+1)·block − 1 of `axis` by scale[c] ** exponent.
    """
    vectors: dict[str, dict[int, Vector]] = {}
    for symmetry in symmetries:
        scale = channel_scales.get(symmetry.id)
        if scale is None:
            continue
        for member in symmetry.members:
            shape = shapes[member.tensor]
            axes = vectors.setdefault(member.tensor, {})
            vector = axes.setdefault(member.axis, np.ones(shape[member.axis]))
            span = slice(member.offset, member.offset + symmetry.size * member.block)
            vector[span] *= np.repeat(scale**member.exponent, member.block)
    found: dict[str, TensorScale] = {}
    for name, axes in vectors.items():
        collapsed = _collapsed(TensorScale(tuple(shapes[name]), vectors=axes))
        if not collapsed.is_identity:
            found[name] = collapsed
    return found


def _collapsed(scale: TensorScale) -> TensorScale:
    """Constant vectors folded into the scalar (the fast path for layer-wise scales)."""
    scalar = scale.scalar
    vectors: dict[int, Vector] = {}
    for axis, vector in scale.vectors.items():
        if vector.size and np.all(vector == vector[0]):
            scalar *= float(vector[0])
        else:
            vectors[axis] = vector
    return TensorScale(scale.shape, scalar, vectors)


def chain_channel_scales(chain: Chain, shift: Shift) -> dict[str, Vector]:
    """A layer-wise shift as one constant vector per hidden space: every channel of link l
    takes Π_l (so W_l gets Π_l / Π_{l−1} and b_l gets Π_l)."""
    links = shift.bias_scales
    return {
        symmetry.id: np.full(symmetry.size, links[index])
        for index, symmetry in enumerate(chain.symmetries())
    }


def shift_scales(
    chain: Chain, shift: Shift, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, TensorScale]:
    return from_symmetries(chain.symmetries(), chain_channel_scales(chain, shift), shapes)


def scale_record(scale: TensorScale) -> float | dict[str, object]:
    """A JSON-ready description of a scale (recorded in the written checkpoint)."""
    if not scale.vectors:
        return scale.scalar
    return {
        "scalar": scale.scalar,
        "axes": {str(axis): vector.tolist() for axis, vector in scale.vectors.items()},
    }
