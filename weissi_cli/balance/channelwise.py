"""Per-channel (neuron-wise) rebalancing: one positive scale per channel of every symmetry,
minimising the L2 penalty of the penalised tensors by block-coordinate descent.

For one symmetry, with every other scale held fixed, the penalty is Σ_j A_j c_j² + B_j c_j⁻²
(+ a constant): A_j collects the squared entries channel j multiplies (exponent +1), B_j
those it divides (exponent −1). Its minimum is at c_j = (B_j / A_j)^¼ — the closed-form
step; every channel of the symmetry is updated at once, symmetries in turn, until a sweep
lowers the penalty by less than the tolerance. The layer-wise optimum is the same descent
with one scale per symmetry (sums of A and B over its channels), so the channel-wise
result can only be lower. A symmetry that scales both axes of one tensor ties its channels
together: `coupled` gives its step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from weissi_cli.balance.coupled import (
    Coupling,
    coupling,
    majorised_costs,
    majorised_step,
    moving_members,
)
from weissi_cli.balance.factors import Factors, Squares, settable
from weissi_cli.errors import StructureError
from weissi_cli.ir import Chain, Member, Symmetry
from weissi_cli.progress import Stage, phase

if TYPE_CHECKING:
    from weissi_cli.balance.exact_pow2 import ExactLimits

Vector = npt.NDArray[np.float64]


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
    factors = Factors(squares)
    solutions: dict[str, SymmetrySolution] = {}
    active: list[tuple[Symmetry, list[Member]]] = []
    couplings: dict[str, Coupling] = {}
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
        found = coupling(symmetry, penalised)
        shapes = {m.tensor: squares[m.tensor].shape for m in penalised}
        if not _bounded(moving_members(penalised, found, shapes, symmetry.size)):
            solution.unbounded = bool(penalised)
            continue
        active.append((symmetry, penalised))
        if found is not None:
            couplings[symmetry.id] = found

    tensors_before = factors.per_tensor()
    before = math.fsum(tensors_before.values())
    current = before
    sweeps = 0
    converged = not active
    alone = _independent(active)
    if granularity == "channel":  # a coupled step only bounds the penalty: it repeats
        alone -= set(couplings)
    while active and sweeps < max_sweeps:
        sweeps += 1
        with Stage(f"sweep {sweeps}", _streamed_bytes(active, squares, granularity)) as stage:
            factors.stage = stage
            _sweep(active, factors, solutions, granularity, couplings)
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
    factors: Factors,
    solutions: dict[str, SymmetrySolution],
    granularity: str,
    couplings: Mapping[str, Coupling],
) -> None:
    """One step of every active symmetry in turn, each given the others' current scales."""
    for symmetry, penalised in active:
        solution = solutions[symmetry.id]
        change: Vector | float
        streamed: Member | None = None
        coupled = couplings.get(symmetry.id)
        if coupled is not None:
            target = _coupled_step(factors, symmetry, penalised, coupled, solution, granularity)
            change = target / solution.scales
        elif granularity == "layer":
            # one scale shared by every channel (1 for a symmetry without channels)
            current_scale = solution.scales[0] if symmetry.size else np.float64(1.0)
            up, down = factors.totals(penalised, symmetry.size, current_scale)
            scale = (down / up) ** 0.25 if up > 0 and down > 0 else np.float64(1.0)
            change = scale / current_scale
            target = np.full(symmetry.size, scale)
        else:
            streamed = factors.streamed_member(symmetry, penalised)  # not coupled: see above
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


def _coupled_step(
    factors: Factors,
    symmetry: Symmetry,
    penalised: list[Member],
    coupled: Coupling,
    solution: SymmetrySolution,
    granularity: str,
) -> Vector:
    """The step of a symmetry that scales both axes of a tensor (see `coupled`): exact
    layer-wise, the minimum of the separable bound channel-wise. Dead channels go to 1."""
    whole = granularity == "layer"
    terms = _coupled_terms(factors, symmetry, penalised, coupled, solution.scales, whole)
    x, live = majorised_step(*terms)
    group = symmetry.size if whole else max(symmetry.tie, 1)
    grouped = solution.scales.reshape(-1, group)[:, 0] if symmetry.size else np.ones(1)
    moved = np.where(live, grouped * np.sqrt(x), 1.0)
    if not whole:
        solution.dead = [int(g) * group + k for g in np.flatnonzero(~live) for k in range(group)]
    return np.repeat(moved, group)[: symmetry.size]


def _coupled_terms(
    factors: Factors,
    symmetry: Symmetry,
    penalised: list[Member],
    coupled: Coupling,
    scales: Vector,
    whole: bool,
) -> tuple[Vector, Vector, Vector, Vector]:
    """(α, β, ρ, κ) per tie group, or for the whole symmetry when its channels share one
    scale: the bound α x + β / x + ½ ρ x² + ½ κ / x² on the penalty after a change x of the
    squared scales. α and β hold the entries one axis moves, ρ and κ those of the tensors
    the symmetry scales along both axes (0 where the bound is exact: one scale)."""
    size = symmetry.size
    sides = {1: np.zeros(size), -1: np.zeros(size)}  # tensors one axis of which moves
    both = {1: np.zeros(size), -1: np.zeros(size)}  # tensors it moves along both axes
    for member in penalised:
        chosen = both if member in coupled.members else sides
        chosen[member.exponent] += factors.masses(member, size)
    if whole:
        totals = {1: float(sides[1].sum()), -1: float(sides[-1].sum())}
        for member in coupled.members:
            across = [
                m for m in coupled.members if m.tensor == member.tensor and m.axis != member.axis
            ]
            totals[member.exponent] += float(factors.moving_mass(member, across, size))
        zero = np.zeros(1)
        return np.array([totals[1]]), np.array([totals[-1]]), zero, zero
    for row, column in coupled.pairs:
        diagonal = factors.diagonal(row, column, size)
        both[1] -= diagonal
        both[-1] -= diagonal
    tie = max(symmetry.tie, 1)

    def grouped(values: Vector) -> Vector:
        summed: Vector = np.maximum(values, 0.0).reshape(-1, tie).sum(axis=1)
        return summed

    return grouped(sides[1]), grouped(sides[-1]), grouped(both[1]), grouped(both[-1])


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
            if granularity == "channel" and settable(member, symmetry, penalised):
                once.add(member.tensor)
    total = 0
    for tensor, moving in axes.items():
        q = squares[tensor]
        assert not isinstance(q, np.ndarray)
        total += q.nbytes * (1 if tensor in once else len(moving))
    return total


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
    factors = Factors(squares)
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
            whole = solution.granularity != "channel"
            tie = symmetry.size if whole else max(symmetry.tie, 1)
            current = item.scales.reshape(-1, tie)[:, 0]
            candidates = np.stack([current / 2, current, current * 2])
            candidates = _clipped(candidates, symmetry.id, at_least_one, at_most_one)
            coupled = coupling(symmetry, penalised)
            if coupled is None:
                ups, downs = factors.sides(penalised, symmetry.size, item.scales)
                ups_g = ups.reshape(-1, tie).sum(axis=1)
                downs_g = downs.reshape(-1, tie).sum(axis=1)
                costs = ups_g * candidates**2 + downs_g / candidates**2
                live = (ups_g > 0) & (downs_g > 0)  # a dead channel stays at 1
            else:
                terms = _coupled_terms(factors, symmetry, penalised, coupled, item.scales, whole)
                costs = majorised_costs((candidates / current) ** 2, *terms)
                alpha, beta, rho, kappa = terms
                live = (alpha + rho > 0) & (beta + kappa > 0)
            best = candidates[np.argmin(costs, axis=0), np.arange(current.size)]
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
