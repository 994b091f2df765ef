"""Symmetries that scale both axes of one tensor (a layer inside a residual block, a weight
used twice in a row): the step and the rounding costs where rows and columns move together.

Such a tensor's entry (i, j) scales by c_k / c_l, with k the channel of row i and l that of
column j. The entries with k = l keep their value (their diagonal), and the others tie the
channels together: the penalty along the symmetry is no longer a sum of one term per channel,
so the closed-form step of `channelwise` does not apply to them.

Layer-wise (one scale c for every channel) the penalty is still exactly A c² + B c⁻²: the
entries whose row and column both move drop out of A and B, and the step stays closed-form.

Channel-wise, each step minimises a separable bound instead (majorise-minimise): with x_k the
change of channel k's squared scale, an entry x_k / x_l ≤ ½ x_k² + ½ x_l⁻² (the arithmetic
and geometric means), equal at x = 1, and an entry that only one of its axes moves, x_k ≤
½ + ½ x_k², likewise. Per channel that leaves α x + β / x + ½ ρ x² + ½ κ / x², which has one
minimum; the penalty never rises from one step to the next, and a point no step moves is a
stationary point of the penalty, its minimum, since the penalty is convex in the log scales.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import StructureError
from weissi_cli.ir import Member, Symmetry

Vector = npt.NDArray[np.float64]

# Newton's iterations for the per-channel minimum; each one at least halves the bracket.
MAX_ITERATIONS = 200


@dataclass(frozen=True)
class Coupling:
    """The members of one symmetry on the tensors it scales along both axes."""

    members: tuple[Member, ...]  # every member on those tensors
    pairs: tuple[tuple[Member, Member], ...]  # (row member, column member) of each tensor


def coupling(symmetry: Symmetry, penalised: list[Member]) -> Coupling | None:
    """The members of `penalised` on tensors the symmetry scales along rows and columns,
    or None where it scales one axis of each tensor (the common case)."""
    axes: dict[str, set[int]] = {}
    for member in penalised:
        axes.setdefault(member.tensor, set()).add(member.axis)
    both = {tensor for tensor, moving in axes.items() if moving == {0, 1}}
    if not both:
        return None
    members = tuple(m for m in penalised if m.tensor in both)
    pairs = []
    for row in members:
        for column in members:
            if row.tensor != column.tensor or row.axis != 0 or column.axis != 1:
                continue
            if row.exponent == column.exponent:
                raise StructureError(
                    f"symmetry {symmetry.id}: {row.tensor} scales by c_k·c_l along both axes "
                    "(the same exponent on rows and columns); the solver takes a tensor "
                    "whose rows and columns a symmetry scales in opposite directions"
                )
            pairs.append((row, column))
    return Coupling(members, tuple(pairs))


def moving_members(
    penalised: list[Member],
    coupled: Coupling | None,
    shapes: Mapping[str, tuple[int, int]],
    size: int,
) -> list[Member]:
    """The members with entries that one scale for every channel moves: all but those on a
    tensor scaled along both axes whose every entry has its row and its column in the
    symmetry's spans (a square layer inside a residual block: it keeps its whole penalty).
    Whether L2 has a minimum along the symmetry depends on these alone."""
    if coupled is None:
        return penalised
    kept = []
    for member in penalised:
        if member in coupled.members:
            length = shapes[member.tensor][1 - member.axis]
            covered = np.zeros(length, dtype=bool)
            for other in coupled.members:
                if other.tensor == member.tensor and other.axis != member.axis:
                    covered[other.offset : other.offset + size * other.block] = True
            if covered.all():
                continue
        kept.append(member)
    return kept


def majorised_step(
    alpha: Vector, beta: Vector, rho: Vector, kappa: Vector
) -> tuple[Vector, npt.NDArray[np.bool_]]:
    """Per channel (or tie group), the x > 0 minimising α x + β / x + ½ ρ x² + ½ κ / x², and
    which channels are live (mass on both sides: the others have no minimum and stay)."""
    live = (alpha + rho > 0) & (beta + kappa > 0)
    x = np.ones(alpha.size)
    if not np.any(live):
        return x, live
    a, b, r, k = alpha[live], beta[live], rho[live], kappa[live]
    # In y = ln x the cost is convex; its slope a e^y − b e^−y + r e^2y − k e^−2y rises.
    low, high = np.full(a.size, -1.0), np.full(a.size, 1.0)
    for _ in range(MAX_ITERATIONS):
        below = _slope(low, a, b, r, k) > 0
        above = _slope(high, a, b, r, k) < 0
        if not (np.any(below) or np.any(above)):
            break
        low[below] *= 2.0
        high[above] *= 2.0
    # Newton's steps from the current scale (y = 0), safeguarded as in `rtsafe`: a step that
    # leaves the bracket, or does not halve the step before the last, bisects instead (far
    # from the minimum an exponential makes Newton's steps crawl).
    y = np.clip(np.zeros(a.size), low, high)
    step = previous = high - low
    for _ in range(MAX_ITERATIONS):
        slope = _slope(y, a, b, r, k)
        low = np.where(slope < 0, y, low)
        high = np.where(slope > 0, y, high)
        curvature = a * np.exp(y) + b * np.exp(-y) + 2 * r * np.exp(2 * y) + 2 * k * np.exp(-2 * y)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            newton = y - slope / curvature
            slow = np.abs(2 * slope) > np.abs(previous * curvature)
        inside = (newton > low) & (newton < high) & np.isfinite(newton)
        moved = np.where(inside & ~slow, newton, 0.5 * (low + high))
        previous, step = step, np.abs(moved - y)
        y = moved
        if np.all((step <= 4e-16 * np.maximum(1.0, np.abs(y))) | (slope == 0)):
            break
    x[live] = np.exp(y)
    return x, live


def majorised_costs(x: Vector, alpha: Vector, beta: Vector, rho: Vector, kappa: Vector) -> Vector:
    """The bound at candidate changes `x` (candidates along axis 0, channels along axis 1):
    what rounding compares. It equals the penalty at x = 1 and lies above it elsewhere."""
    return alpha * x + beta / x + 0.5 * rho * x**2 + 0.5 * kappa / x**2


def _slope(y: Vector, a: Vector, b: Vector, r: Vector, k: Vector) -> Vector:
    with np.errstate(over="ignore", invalid="ignore"):
        slope: Vector = a * np.exp(y) - b * np.exp(-y) + r * np.exp(2 * y) - k * np.exp(-2 * y)
    return slope
