"""Per-channel (neuron-wise) rebalancing: one positive scale per channel of every symmetry,
minimising the L2 penalty of the penalised tensors by block-coordinate descent.

For one symmetry, with every other scale held fixed, the penalty is Σ_j A_j c_j² + B_j c_j⁻²
(+ a constant): A_j collects the squared entries channel j multiplies (exponent +1), B_j
those it divides (exponent −1). Its minimum is at c_j = (B_j / A_j)^¼ — the closed-form
step; every channel of the symmetry is updated at once, symmetries in turn, until a sweep
lowers the penalty by less than the tolerance. The layer-wise optimum is the same descent
with one scale per symmetry (sums of A and B over its channels), so the channel-wise
result can only be lower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import StructureError
from weissi_cli.ir import Chain, Member, Symmetry
from weissi_cli.progress import Stage, phase

if TYPE_CHECKING:
    from weissi_cli.balance.exact_pow2 import ExactLimits

Vector = npt.NDArray[np.float64]


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


# [rows, columns]: see stats.axis_squares; held as a float32 matrix, or streamed
Squares = npt.NDArray[np.float32] | SquaresOperator

TOLERANCE = 1e-10
MAX_SWEEPS = 2000


@dataclass
class SymmetrySolution:
    """What the descent found for one symmetry."""

    id: str
    scales: Vector  # one per channel (tie groups share a value)
    dead: list[int] = field(default_factory=list)  # channels left at 1
    unbounded: bool = False  # its penalised mass can all move into unpenalised tensors


@dataclass(frozen=True)
class ChannelSolution:
    symmetries: dict[str, SymmetrySolution]
    l2_before: float
    l2_after: float
    sweeps: int
    converged: bool
    tolerance: float
    granularity: str  # "channel" | "layer"
    # Per penalised tensor, its squared norm before and at the solution.
    tensor_l2_before: dict[str, float] = field(default_factory=dict, compare=False)
    tensor_l2_after: dict[str, float] = field(default_factory=dict, compare=False)
    # Per symmetry, the channels that float16 exactness held closer to 1 (pow2 rounding).
    held: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def scales(self) -> dict[str, Vector]:
        return {key: solution.scales for key, solution in self.symmetries.items()}


class _Factors:
    """The current factor vectors of every penalised tensor along axes 0 and 1."""

    def __init__(self, squares: Mapping[str, Squares]) -> None:
        self.squares = squares
        self.rows = {name: np.ones(q.shape[0]) for name, q in squares.items()}
        self.columns = {name: np.ones(q.shape[1]) for name, q in squares.items()}
        # (tensor, axis) -> the squares summed along the other axis under its factors: kept
        # until that other axis moves (a transformer's heads each move only their own rows).
        self._weights: dict[tuple[str, int], Vector] = {}
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
        chunk (see `_settable`). Its pass also gives the product along its other axis
        under the new rows, which the next sweep needs: one pass over the tensor per sweep
        instead of two."""
        for member in reversed(penalised):
            if (
                _settable(member, symmetry, penalised)
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


def _along(per_channel: Vector, block: int) -> Vector:
    """Per-channel values spread over the `block` entries each channel covers."""
    return per_channel if block == 1 else np.repeat(per_channel, block)


@phase("solving for the optimal scales")
def solve(
    symmetries: Iterable[Symmetry],
    squares: Mapping[str, Squares],
    granularity: str = "channel",
    tolerance: float = TOLERANCE,
    max_sweeps: int = MAX_SWEEPS,
) -> ChannelSolution:
    """Block-coordinate descent on the L2 penalty of the tensors in `squares` (the
    penalised ones); members on other tensors (running statistics, unpenalised biases)
    follow the scales but do not count."""
    symmetries = list(symmetries)
    factors = _Factors(squares)
    solutions: dict[str, SymmetrySolution] = {}
    active: list[tuple[Symmetry, list[Member]]] = []
    for symmetry in symmetries:
        penalised = [m for m in symmetry.members if m.tensor in squares]
        for member in penalised:
            if member.exponent not in (1, -1) or member.axis not in (0, 1):
                raise StructureError(
                    f"symmetry {symmetry.id}: penalised member {member.tensor} has axis "
                    f"{member.axis} and exponent {member.exponent}; the channel solver takes "
                    "axis 0 or 1 and exponent ±1 on penalised tensors"
                )
        solution = SymmetrySolution(symmetry.id, np.ones(symmetry.size))
        solutions[symmetry.id] = solution
        if not _bounded(penalised):
            solution.unbounded = bool(penalised)
            continue
        active.append((symmetry, penalised))

    tensors_before = factors.per_tensor()
    before = math.fsum(tensors_before.values())
    current = before
    sweeps = 0
    converged = not active
    alone = _independent(active)
    while active and sweeps < max_sweeps:
        sweeps += 1
        with Stage(f"sweep {sweeps}", _streamed_bytes(active, squares, granularity)) as stage:
            factors.stage = stage
            _sweep(active, factors, solutions, granularity)
        # A symmetry that shares no penalised entries' factors with another has reached its
        # optimum in one step (its A and B cannot change): later sweeps skip it.
        active = [
            (symmetry, penalised) for symmetry, penalised in active if symmetry.id not in alone
        ]
        updated = factors.penalty()
        if not active or current - updated <= tolerance * max(current, 1e-300):
            current = min(current, updated)
            converged = True
            break
        current = updated
    factors.stage = None
    return ChannelSolution(
        solutions,
        before,
        current,
        sweeps,
        converged,
        tolerance,
        granularity,
        tensors_before,
        factors.per_tensor(),
    )


def _sweep(
    active: list[tuple[Symmetry, list[Member]]],
    factors: _Factors,
    solutions: dict[str, SymmetrySolution],
    granularity: str,
) -> None:
    """One step of every active symmetry in turn, each given the others' current scales."""
    for symmetry, penalised in active:
        solution = solutions[symmetry.id]
        change: Vector | float
        streamed: Member | None = None
        if granularity == "layer":
            # one scale shared by every channel (1 for a symmetry without channels)
            current_scale = solution.scales[0] if symmetry.size else np.float64(1.0)
            up, down = factors.totals(penalised, symmetry.size, current_scale)
            scale = (down / up) ** 0.25 if up > 0 and down > 0 else np.float64(1.0)
            change = scale / current_scale
            target = np.full(symmetry.size, scale)
        else:
            streamed = factors.streamed_member(symmetry, penalised)
            if streamed is not None:
                prefetched = factors.prefetch(streamed, penalised, symmetry.size, solution.scales)
            ups, downs = factors.sides(penalised, symmetry.size, solution.scales)
            target = _step(ups, downs, symmetry, solution)
            change = target / solution.scales
        for member in symmetry.members:
            if member.tensor in factors.squares:
                factors.apply(member, symmetry.size, change)
        if streamed is not None:
            factors.confirm(streamed.tensor, *prefetched)
        solution.scales = target


def _streamed_bytes(
    active: list[tuple[Symmetry, list[Member]]], squares: Mapping[str, Squares], granularity: str
) -> int:
    """What a sweep reads: one pass over a streamed tensor per axis that moves, or one in
    all where a step sets its rows chunk by chunk (0 when every tensor is held: the sweep
    shows its time instead)."""
    axes: dict[str, set[int]] = {}
    once: set[str] = set()
    for symmetry, penalised in active:
        for member in penalised:
            q = squares[member.tensor]
            if isinstance(q, np.ndarray):
                continue
            axes.setdefault(member.tensor, set()).add(member.axis)
            if granularity == "channel" and _settable(member, symmetry, penalised):
                once.add(member.tensor)
    total = 0
    for tensor, moving in axes.items():
        q = squares[tensor]
        assert not isinstance(q, np.ndarray)
        total += q.nbytes * (1 if tensor in once else len(moving))
    return total


def _settable(member: Member, symmetry: Symmetry, penalised: list[Member]) -> bool:
    """Whether the symmetry's step can set `member`'s rows from each row's own product: one
    channel per row, no tie groups, no other member on its tensor."""
    return (
        member.axis == 0
        and member.block == 1
        and symmetry.tie <= 1
        and sum(m.tensor == member.tensor for m in penalised) == 1
    )


def _bounded(penalised: list[Member]) -> bool:
    """Whether a symmetry has penalised mass on both sides, so L2 has a minimum along it
    (otherwise the mass can all move into unpenalised tensors: unbounded)."""
    return any(m.exponent > 0 for m in penalised) and any(m.exponent < 0 for m in penalised)


def _independent(active: list[tuple[Symmetry, list[Member]]]) -> set[str]:
    """Ids of the symmetries whose per-channel sums no other symmetry's scales enter: their
    penalised members share no tensor that another one scales along the other axis, nor an
    overlapping span of the same axis. (A transformer's heads: each q↔k symmetry owns its
    rows of q and k.)"""
    spans: dict[str, list[tuple[int, int, int, str]]] = {}
    for symmetry, penalised in active:
        for member in penalised:
            stop = member.offset + symmetry.size * member.block
            spans.setdefault(member.tensor, []).append(
                (member.axis, member.offset, stop, symmetry.id)
            )
    coupled: set[str] = set()
    for entries in spans.values():
        owners = {entry[3] for entry in entries}
        if len(owners) == 1:
            continue
        if len({entry[0] for entry in entries}) > 1:  # scaled along both axes: all coupled
            coupled |= owners
            continue
        entries.sort()
        reach, reacher = -1, ""  # the furthest end so far, and whose span it is
        for _, start, stop, owner in entries:
            if start < reach and owner != reacher:
                coupled |= {owner, reacher}
            if stop > reach:
                reach, reacher = stop, owner
    return {symmetry.id for symmetry, _ in active} - coupled


def _step(ups: Vector, downs: Vector, symmetry: Symmetry, solution: SymmetrySolution) -> Vector:
    """The minimising scales given the other symmetries: (B/A)^¼ per channel or tie group;
    dead channels stay at 1. (Layer granularity takes (ΣB/ΣA)^¼ in `solve`.)"""
    tie = max(symmetry.tie, 1)
    grouped_ups = ups.reshape(-1, tie).sum(axis=1)
    grouped_downs = downs.reshape(-1, tie).sum(axis=1)
    live = (grouped_ups > 0) & (grouped_downs > 0)
    result = np.ones(grouped_ups.size)
    result[live] = (grouped_downs[live] / grouped_ups[live]) ** 0.25
    solution.dead = [int(group) * tie + k for group in np.flatnonzero(~live) for k in range(tie)]
    return np.repeat(result, tie)


def round_to_powers_of_two(
    solution: ChannelSolution,
    symmetries: Iterable[Symmetry],
    squares: Mapping[str, Squares],
    limits: ExactLimits | None = None,
    at_least_one: frozenset[str] = frozenset(),
    at_most_one: frozenset[str] = frozenset(),
) -> ChannelSolution:
    """Every scale a power of two (outputs bit-identical), starting from the nearest power
    and improving each channel's exponent by ±1 while that lowers the penalty; never worse
    than leaving everything at 1. With `limits`, exponents are then held within the
    float16 headroom, so that every scaled value is exact. Scales of `at_least_one` stay
    >= 1 (activations never shrink), of `at_most_one` <= 1 (they never grow)."""
    symmetries = [s for s in symmetries if s.id in solution.symmetries]
    factors = _Factors(squares)
    rounded = {
        key: SymmetrySolution(
            key,
            _clipped(np.exp2(np.round(np.log2(item.scales))), key, at_least_one, at_most_one),
            item.dead,
            item.unbounded,
        )
        for key, item in solution.symmetries.items()
    }
    for symmetry in symmetries:
        for member in symmetry.members:
            if member.tensor in squares:
                factors.apply(member, symmetry.size, rounded[symmetry.id].scales)
    for _ in range(50):
        moved = False
        for symmetry in symmetries:
            item = rounded[symmetry.id]
            if item.unbounded:
                continue
            penalised = [m for m in symmetry.members if m.tensor in squares]
            ups, downs = factors.sides(penalised, symmetry.size, item.scales)
            tie = max(symmetry.tie, 1) if solution.granularity == "channel" else symmetry.size
            ups_g = ups.reshape(-1, tie).sum(axis=1)
            downs_g = downs.reshape(-1, tie).sum(axis=1)
            current = item.scales.reshape(-1, tie)[:, 0]
            candidates = np.stack([current / 2, current, current * 2])
            candidates = _clipped(candidates, symmetry.id, at_least_one, at_most_one)
            costs = ups_g * candidates**2 + downs_g / candidates**2
            best = candidates[np.argmin(costs, axis=0), np.arange(current.size)]
            live = (ups_g > 0) & (downs_g > 0)  # a dead channel stays at 1
            best = np.where(live, best, current)
            if np.any(best != current):
                moved = True
                new = np.repeat(best, tie)
                change = new / item.scales
                for member in symmetry.members:
                    if member.tensor in squares:
                        factors.apply(member, symmetry.size, change)
                item.scales = new
        if not moved:
            break
    held: dict[str, int] = {}
    pow2: dict[str, Vector] = {}
    if limits:
        pow2 = {key: item.scales.copy() for key, item in rounded.items()}
        whole = solution.granularity == "layer"
        exact, held = limits.hold(symmetries, pow2, whole)
        for symmetry in symmetries:
            item = rounded[symmetry.id]
            change = exact[symmetry.id] / item.scales
            for member in symmetry.members:
                if member.tensor in squares:
                    factors.apply(member, symmetry.size, change)
            item.scales = exact[symmetry.id]
    tensors_after = factors.per_tensor()
    after = math.fsum(tensors_after.values())
    if after > solution.l2_before:
        rounded = {
            key: SymmetrySolution(key, np.ones_like(item.scales), item.dead, item.unbounded)
            for key, item in solution.symmetries.items()
        }
        after = solution.l2_before
        tensors_after = dict(solution.tensor_l2_before)
        if held:  # exactness made it worse than nothing: every channel it rounded is at 1
            held = {key: int(np.count_nonzero(scales != 1.0)) for key, scales in pow2.items()}
            held = {key: count for key, count in held.items() if count}
    return ChannelSolution(
        rounded,
        solution.l2_before,
        after,
        solution.sweeps,
        solution.converged,
        solution.tolerance,
        solution.granularity,
        solution.tensor_l2_before,
        tensors_after,
        held,
    )


def moving_axes(
    symmetries: Iterable[Symmetry], penalised: Iterable[str]
) -> dict[str, tuple[bool, bool]]:
    """Per penalised tensor, whether any bounded symmetry (one that the descent can move)
    scales its rows, and its columns: axes no such symmetry touches can be summed out of
    the squares before solving."""
    moving = dict.fromkeys(penalised, (False, False))
    for symmetry in symmetries:
        members = [m for m in symmetry.members if m.tensor in moving]
        if not _bounded(members):
            continue
        for member in members:
            rows, columns = moving[member.tensor]
            moving[member.tensor] = (rows or member.axis == 0, columns or member.axis == 1)
    return moving


def penalised_tensors(
    chains: Iterable[Chain], shapes: Mapping[str, tuple[int, ...]], include_bias: bool
) -> list[str]:
    """The chain tensors whose squares the L2 penalty counts: weights, and 1-D parameters
    (biases) on request."""
    return [
        name
        for chain in chains
        for name in chain.tensor_names()
        if len(shapes[name]) >= 2 or include_bias
    ]


def _clipped(scales: Vector, key: str, floors: frozenset[str], ceilings: frozenset[str]) -> Vector:
    """`scales` held at or above 1 for `floors`, at or below 1 for `ceilings`."""
    return np.clip(scales, 1.0 if key in floors else 0.0, 1.0 if key in ceilings else np.inf)
