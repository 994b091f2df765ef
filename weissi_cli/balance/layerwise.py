"""Layer-wise scale shifts of a chain: penalties, the L2-optimal shift, and pow2 rounding.

A shift is given by its log link scales s_0..s_L with s_0 = s_L = 0: layer l's weight
scales by γ_l = exp(s_l − s_{l−1}) and its bias by the cumulative Π_l = exp(s_l).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

LN2 = math.log(2.0)
ExponentRange = tuple[float, float]  # (lowest, highest) exponent of 2 allowed


@dataclass(frozen=True)
class Shift:
    """A layer-wise scale shift of a chain of L layers."""

    log_links: tuple[float, ...]  # s_0 .. s_L, s_0 = s_L = 0
    pow2: bool = False

    @property
    def depth(self) -> int:
        return len(self.log_links) - 1

    @property
    def gammas(self) -> tuple[float, ...]:
        """γ_l, the factor on W_l."""
        s = self.log_links
        if self.pow2:
            return tuple(math.ldexp(1.0, round((s[i + 1] - s[i]) / LN2)) for i in range(self.depth))
        return tuple(math.exp(s[i + 1] - s[i]) for i in range(self.depth))

    @property
    def bias_scales(self) -> tuple[float, ...]:
        """Π_l = γ_1 ⋯ γ_l, the factor on b_l (exactly 1 for the last layer)."""
        s = self.log_links[1:]
        if self.pow2:
            return tuple(math.ldexp(1.0, round(value / LN2)) for value in s)
        return tuple(math.exp(value) for value in s)

    @staticmethod
    def identity(depth: int) -> Shift:
        return Shift((0.0,) * (depth + 1))


def pow2_shift(
    real: Shift,
    weight_norms: Sequence[float],
    bias_norms: Sequence[float] | None = None,
    bounds: Sequence[tuple[ExponentRange, ExponentRange]] | None = None,
) -> Shift:
    """The best power-of-two shift near `real`.

    Every cumulative link scale Π_l becomes 2^k_l (so Π γ_l = 1 exactly and every bias stays
    consistent with its weights: outputs are bit-identical). Rounding each link on its own
    can alternate 2^-1, 2, 2^-1 ... and make L2 worse than doing nothing, so the exponents
    are chosen jointly, each from {floor, ceil} of its real value and 0, by dynamic
    programming over the chain (the penalty couples only neighbouring links). The identity
    is one of the candidates, so the result never raises the penalty.

    `bounds[l − 1]`: the exponents W_l's and b_l's factors may take (float16 exactness, see
    `exact_pow2`); every exponent between 0 and the real value is then a candidate.
    """
    depth = len(weight_norms)
    biases = list(bias_norms) if bias_norms is not None else [0.0] * depth
    unbounded = (-math.inf, math.inf)
    limits = list(bounds) if bounds is not None else [(unbounded, unbounded)] * depth
    options: list[list[int]] = [[0]]
    for value in real.log_links[1:-1]:
        exponent = value / LN2
        low, high = math.floor(exponent), math.ceil(exponent)
        if bounds is None:
            options.append(sorted({low, high, 0}))
        else:
            options.append(list(range(min(low, 0), max(high, 0) + 1)))
    options.append([0])

    def cost(layer: int, previous: int, current: int) -> float:
        # layer is 1-based: W_l scales by 2^(k_l − k_{l−1}), b_l by 2^k_l
        (weight_low, weight_high), (bias_low, bias_high) = limits[layer - 1]
        if not (weight_low <= current - previous <= weight_high):
            return math.inf
        if not (bias_low <= current <= bias_high):
            return math.inf
        norm, bias = weight_norms[layer - 1], biases[layer - 1]
        return norm * norm * _power_of_four(current - previous) + bias * bias * _power_of_four(
            current
        )

    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [0])}
    for layer in range(1, depth + 1):
        step: dict[int, tuple[float, list[int]]] = {}
        for current in options[layer]:
            step[current] = min(
                (
                    (total + cost(layer, previous, current), path + [current])
                    for previous, (total, path) in best.items()
                ),
                key=lambda item: item[0],
            )
        best = step
    _, exponents = best[0]
    return Shift(tuple(k * LN2 for k in exponents), pow2=True)


def _power_of_four(exponent: int) -> float:
    try:
        return math.ldexp(1.0, 2 * exponent)
    except OverflowError:
        return math.inf


def l2_penalty(weight_norms: Sequence[float], bias_norms: Sequence[float] | None = None) -> float:
    total = math.fsum(n * n for n in weight_norms)
    if bias_norms is not None:
        total += math.fsum(b * b for b in bias_norms)
    return total


def geometric_mean(norms: Sequence[float]) -> float:
    return math.exp(math.fsum(math.log(n) for n in norms) / len(norms))


def weissi_penalty(
    log_norm_sum: float, l1_direction_sum: float, lambda1: float, lambda2: float
) -> float:
    """λ1 Σ ln‖W_l‖ + λ2 Σ ‖W_l/‖W_l‖‖₁, invariant under every layer-wise shift."""
    return lambda1 * log_norm_sum + lambda2 * l1_direction_sum


def shifted_penalty(
    shift: Shift, weight_norms: Sequence[float], bias_norms: Sequence[float] | None = None
) -> float:
    """L2 penalty of the chain after applying `shift` (computed, not measured)."""
    gammas = shift.gammas
    total = math.fsum((g * n) ** 2 for g, n in zip(gammas, weight_norms, strict=True))
    if bias_norms is not None:
        total += math.fsum((p * b) ** 2 for p, b in zip(shift.bias_scales, bias_norms, strict=True))
    return total


def optimal_shift(
    weight_norms: Sequence[float], bias_norms: Sequence[float] | None = None
) -> Shift:
    """The shift minimising the L2 penalty (weights only, or weights and biases).

    Weights only: γ_l = G / n_l (every norm becomes the geometric mean G).
    With biases: the unique minimiser of the convex objective
    Σ_l e^{2(s_l − s_{l−1})} n_l² + e^{2 s_l} ‖b_l‖², found by damped Newton.
    """
    depth = len(weight_norms)
    logs = np.log(np.asarray(weight_norms, dtype=np.float64))
    mean = math.fsum(logs) / depth
    # s_l = l·ln G − Σ_{i≤l} ln n_i
    links = np.concatenate(([0.0], np.arange(1, depth + 1) * mean - np.cumsum(logs)))
    links[-1] = 0.0
    if bias_norms is not None and depth > 1 and any(b > 0 for b in bias_norms[:-1]):
        links = _newton(
            np.asarray(weight_norms, np.float64), np.asarray(bias_norms, np.float64), links
        )
    return Shift(tuple(float(value) for value in links))


def _objective(
    links: npt.NDArray[np.float64],
    weights_sq: npt.NDArray[np.float64],
    biases_sq: npt.NDArray[np.float64],
) -> float:
    steps = np.diff(links)
    return float(np.sum(np.exp(2 * steps) * weights_sq) + np.sum(np.exp(2 * links[1:]) * biases_sq))


def _newton(
    weight_norms: npt.NDArray[np.float64],
    bias_norms: npt.NDArray[np.float64],
    links: npt.NDArray[np.float64],
    max_iterations: int = 200,
) -> npt.NDArray[np.float64]:
    weights_sq = weight_norms**2
    biases_sq = bias_norms**2
    links = links.copy()
    value = _objective(links, weights_sq, biases_sq)
    for _ in range(max_iterations):
        up = np.exp(2 * np.diff(links)) * weights_sq  # term l: e^{2(s_l − s_{l−1})} n_l², l=1..L
        bias_terms = np.exp(2 * links[1:-1]) * biases_sq[:-1]  # l = 1..L−1
        gradient = 2 * (up[:-1] - up[1:] + bias_terms)
        diagonal = 4 * (up[:-1] + up[1:] + bias_terms)
        off = -4 * up[1:-1]
        hessian = np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1)
        step = np.linalg.solve(hessian, -gradient)
        decrement = float(-gradient @ step)
        if decrement <= 1e-10 * value:
            # Quadratic convergence region: the objective can no longer tell steps apart
            # (its changes fall below rounding), so take full steps until they vanish.
            links[1:-1] += step
            if float(np.max(np.abs(step))) <= 4e-16 * max(1.0, float(np.max(np.abs(links)))):
                break
            value = _objective(links, weights_sq, biases_sq)
            continue
        size = 1.0
        while True:
            trial = links.copy()
            trial[1:-1] += size * step
            trial_value = _objective(trial, weights_sq, biases_sq)
            if trial_value <= value - 0.25 * size * decrement or size < 1e-12:
                break
            size *= 0.5
        if trial_value >= value:
            break
        links, value = trial, trial_value
    return links
