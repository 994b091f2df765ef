"""The factors a descent has put on every penalised tensor's rows and columns, and the
sums of squared entries under them that its steps need."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from weissi_cli.ir import Member, Symmetry
from weissi_cli.progress import Stage

Vector = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]


class SquaresOperator(Protocol):
    """Axis squares too large to hold, used only through products (see
    `streamed.StreamedSquares`)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def nbytes(self) -> int:
        """What one product reads."""
        ...

    def matvec(self, vector: Vector) -> Vector: ...

    def rmatvec(self, vector: Vector) -> Vector: ...

    def matvec_rmatvec(
        self, vector: Vector, rows_after: Callable[[int, Vector], Vector]
    ) -> tuple[Vector, Vector]:
        """Q @ vector, and r @ Q in the same pass, where a chunk's r is `rows_after(its
        first row, its rows of Q @ vector)` (called from any thread)."""
        ...

    def entries(self, rows: Indices, columns: Indices) -> Vector:
        """Q[rows[k, a], columns[k, b]] as [k, a, b]: a gather (a pass, for a streamed
        tensor)."""
        ...


# [rows, columns]: see stats.axis_squares; held as a float32 matrix, or streamed
Squares = npt.NDArray[np.float32] | SquaresOperator


class Factors:
    """The current factor vectors of every penalised tensor along axes 0 and 1."""

    def __init__(self, squares: Mapping[str, Squares]) -> None:
        self.squares = squares
        self.rows = {name: np.ones(q.shape[0]) for name, q in squares.items()}
        self.columns = {name: np.ones(q.shape[1]) for name, q in squares.items()}
        # (tensor, axis) -> the squares summed along the other axis under its factors: kept
        # until that other axis moves (a transformer's heads each move only their own rows).
        self._weights: dict[tuple[str, int], Vector] = {}
        # (tensor, row span, column span) -> its raw diagonal blocks (see `diagonal`)
        self._diagonals: dict[tuple[str, int, int, int, int, int], Vector] = {}
        # where the bytes streamed for products are reported (a sweep's progress)
        self.stage: Stage | None = None

    def penalty(self) -> float:
        return math.fsum(self.per_tensor().values())

    def per_tensor(self) -> dict[str, float]:
        found = {}
        for name, q in self.squares.items():
            rows, columns = self.rows[name] ** 2, self.columns[name] ** 2
            if isinstance(q, np.ndarray):
                found[name] = float(rows @ (q @ columns).astype(np.float64))
                continue
            # A streamed tensor's cached product under its current factors gives the penalty
            # without another pass; at the end of a sweep one of the two usually is. Where
            # neither is, one pass gives both (the next sweep needs the other).
            if (name, 0) not in self._weights and (name, 1) in self._weights:
                found[name] = float(self._weights[(name, 1)] @ columns)
                continue
            if (name, 0) not in self._weights:
                both = q.matvec_rmatvec(columns, _unchanged(rows))
                self._weights[(name, 0)], self._weights[(name, 1)] = both
                if self.stage is not None:
                    self.stage.advance(q.nbytes)
            found[name] = float(rows @ self._weights[(name, 0)])
        return found

    def weights(self, member: Member) -> Vector:
        """The squares of `member`'s tensor summed along the other axis under that axis's
        factors: one value per entry of `member`'s axis."""
        return self._summed(member.tensor, member.axis)

    def _summed(self, tensor: str, axis: int) -> Vector:
        weights = self._weights.get((tensor, axis))
        if weights is not None:
            return weights
        q = self.squares[tensor]
        if isinstance(q, np.ndarray):
            if axis == 0:
                other = (self.columns[tensor] ** 2).astype(np.float32)
                weights = (q @ other).astype(np.float64)
            else:
                other = (self.rows[tensor] ** 2).astype(np.float32)
                weights = (other @ q).astype(np.float64)
        else:
            if axis == 0:
                weights = q.matvec(self.columns[tensor] ** 2)
            else:
                weights = q.rmatvec(self.rows[tensor] ** 2)
            if self.stage is not None:
                self.stage.advance(q.nbytes)
        self._weights[(tensor, axis)] = weights
        return weights

    def sums(self, member: Member, size: int, own: Vector) -> Vector:
        """Per channel of the symmetry, the squared entries `member` touches, under every
        factor except this symmetry's own (`own`, its current scales)."""
        span = slice(member.offset, member.offset + size * member.block)
        own_along = _along(own ** (2 * member.exponent), member.block)
        factors = (self.rows if member.axis == 0 else self.columns)[member.tensor]
        along = self.weights(member)[span] * factors[span] ** 2 / own_along
        if member.block == 1:  # one entry per channel (a transformer's rows): nothing to sum
            return along
        return np.add.reduceat(along, np.arange(0, size * member.block, member.block))

    def masses(self, member: Member, size: int) -> Vector:
        """Per channel, the squared entries `member` covers under every current factor
        (`sums` with no factor left out: dividing by ones changes no bit)."""
        return self.sums(member, size, np.ones(size))

    def diagonal(self, row: Member, column: Member, size: int) -> Vector:
        """Per channel k, the squared entries whose row and column channel k both moves (the
        diagonal blocks of a tensor a symmetry scales along both axes: their factors
        cancel), under the current factors."""
        tensor = row.tensor
        rows, columns = _indices(row, size), _indices(column, size)
        key = (tensor, row.offset, row.block, column.offset, column.block, size)
        raw = self._diagonals.get(key)
        if raw is None:
            q = self.squares[tensor]
            if isinstance(q, np.ndarray):
                raw = q[rows[:, :, None], columns[:, None, :]].astype(np.float64)
            else:
                raw = q.entries(rows, columns)
            self._diagonals[key] = raw
        row_factors = self.rows[tensor][rows] ** 2
        column_factors = self.columns[tensor][columns] ** 2
        found: Vector = np.einsum("ka,kab,kb->k", row_factors, raw, column_factors)
        return found

    def moving_mass(self, member: Member, others: list[Member], size: int) -> np.float64:
        """The squared entries in `member`'s span whose other index lies in none of
        `others`' spans (members of the same symmetry on the tensor's other axis), under
        the current factors: layer-wise, where one scale moves both axes, only these move;
        the entries in both spans keep their value. Summed directly, not as a difference,
        so that a tensor all of whose entries keep their value gives exactly 0."""
        tensor = member.tensor
        q = self.squares[tensor]
        length = q.shape[1 - member.axis]
        outside = np.ones(length, dtype=bool)
        for other in others:
            outside[other.offset : other.offset + size * other.block] = False
        if not outside.any():
            return np.float64(0.0)
        span = slice(member.offset, member.offset + size * member.block)
        along = (self.rows if member.axis == 0 else self.columns)[tensor][span] ** 2
        across = (self.columns if member.axis == 0 else self.rows)[tensor] ** 2
        if isinstance(q, np.ndarray):
            matrix = q[span] if member.axis == 0 else q[:, span].T
            block = matrix[:, outside] @ across[outside].astype(np.float32)
            return np.float64(along @ block.astype(np.float64))
        masked = np.where(outside, across, 0.0)
        product = q.matvec(masked) if member.axis == 0 else q.rmatvec(masked)
        if self.stage is not None:
            self.stage.advance(q.nbytes)
        return np.float64(along @ product[span])

    def totals(
        self, penalised: list[Member], size: int, own: np.float64
    ) -> tuple[np.float64, np.float64]:
        """(A, B) summed over the channels, for a symmetry whose channels share one scale
        (`own`): the layer-wise step needs only these, and they cost two vector operations
        per member where the per-channel sums cost six. numpy scalars, not Python floats:
        a descent that runs a scale off to 0 or infinity gives inf and NaN, as the
        per-channel arrays do, where Python's floats raise ZeroDivisionError."""
        up = down = np.float64(0.0)
        for member in penalised:
            span = slice(member.offset, member.offset + size * member.block)
            factors = (self.rows if member.axis == 0 else self.columns)[member.tensor][span]
            total = np.float64(self.weights(member)[span] @ (factors * factors))
            total /= own ** (2 * member.exponent)
            if member.exponent > 0:
                up += total
            else:
                down += total
        return up, down

    def sides(self, penalised: list[Member], size: int, own: Vector) -> tuple[Vector, Vector]:
        """(A, B) per channel: the squared entries the channel multiplies, and divides."""
        ups, downs = np.zeros(size), np.zeros(size)
        for member in penalised:
            sums = self.sums(member, size, own)
            if member.exponent > 0:
                ups += sums
            else:
                downs += sums
        return ups, downs

    def apply(self, member: Member, size: int, change: Vector | float) -> None:
        """Multiply `member`'s factors by the symmetry's `change` (per channel, or one for
        all) to the member's exponent."""
        vectors = self.rows if member.axis == 0 else self.columns
        span = slice(member.offset, member.offset + size * member.block)
        if vectors[member.tensor].size < span.stop:  # an axis summed out: nothing moves it
            if not np.all(change == 1.0):
                raise ValueError(f"{member.tensor}: axis {member.axis} was summed out but moves")
            return
        if isinstance(change, float):
            vectors[member.tensor][span] *= change**member.exponent
        else:
            vectors[member.tensor][span] *= _along(change**member.exponent, member.block)
        self._weights.pop((member.tensor, 1 - member.axis), None)

    def streamed_member(self, symmetry: Symmetry, penalised: list[Member]) -> Member | None:
        """A member whose rows the symmetry's step needs streamed, and may set chunk by
        chunk (see `settable`). Its pass also gives the product along its other axis
        under the new rows, which the next sweep needs: one pass over the tensor per sweep
        instead of two."""
        for member in reversed(penalised):
            if (
                settable(member, symmetry, penalised)
                and not isinstance(self.squares[member.tensor], np.ndarray)
                and (member.tensor, 0) not in self._weights
            ):
                return member
        return None

    def prefetch(
        self, member: Member, penalised: list[Member], size: int, own: Vector
    ) -> tuple[Vector, Vector]:
        """Stream `member`'s tensor once: its weights along axis 0 (cached as `weights`
        would), and the product along axis 1 under the rows this symmetry's step will
        give, found per chunk by the same arithmetic as `sides`, `_step` and `apply`.
        Returns (those rows, that product): `confirm` keeps the product if the step
        gives exactly those rows."""
        tensor = member.tensor
        q = self.squares[tensor]
        assert not isinstance(q, np.ndarray)
        others = {id(m): self.sums(m, size, own) for m in penalised if m is not member}
        rows = self.rows[tensor]
        expected = rows.copy()
        stop = member.offset + size

        def rows_after(first: int, products: Vector) -> Vector:
            low, high = max(first, member.offset), min(first + products.size, stop)
            if low < high:
                channels = slice(low - member.offset, high - member.offset)
                own_here = own[channels]
                mine = products[low - first : high - first] * rows[low:high] ** 2
                mine = mine / own_here ** (2 * member.exponent)
                ups, downs = np.zeros(high - low), np.zeros(high - low)
                for other in penalised:
                    part = mine if other is member else others[id(other)][channels]
                    if other.exponent > 0:
                        ups += part
                    else:
                        downs += part
                live = (ups > 0) & (downs > 0)
                target = np.ones(high - low)
                target[live] = (downs[live] / ups[live]) ** 0.25
                expected[low:high] = rows[low:high] * (target / own_here) ** member.exponent
            squared: Vector = expected[first : first + products.size] ** 2
            return squared

        weights, along_columns = q.matvec_rmatvec(self.columns[tensor] ** 2, rows_after)
        if self.stage is not None:
            self.stage.advance(q.nbytes)
        self._weights[(tensor, 0)] = weights
        return expected, along_columns

    def confirm(self, tensor: str, expected: Vector, along_columns: Vector) -> None:
        """Keep the product `prefetch` made if the rows are now exactly those it assumed."""
        if (tensor, 1) not in self._weights and np.array_equal(self.rows[tensor], expected):
            self._weights[(tensor, 1)] = along_columns


def _unchanged(rows: Vector) -> Callable[[int, Vector], Vector]:
    """`rows_after` for a pass that moves no rows."""
    return lambda first, products: rows[first : first + products.size]


def _indices(member: Member, size: int) -> Indices:
    """[channel, entry]: the indices along its axis of the entries `member` gives each
    channel."""
    first = member.offset + np.arange(size) * member.block
    return first[:, None] + np.arange(member.block)[None, :]


def _along(per_channel: Vector, block: int) -> Vector:
    """Per-channel values spread over the `block` entries each channel covers."""
    return per_channel if block == 1 else np.repeat(per_channel, block)


def settable(member: Member, symmetry: Symmetry, penalised: list[Member]) -> bool:
    """Whether the symmetry's step can set `member`'s rows from each row's own product: one
    channel per row, no tie groups, no other member on its tensor."""
    return (
        member.axis == 0
        and member.block == 1
        and symmetry.tie <= 1
        and sum(m.tensor == member.tensor for m in penalised) == 1
    )
