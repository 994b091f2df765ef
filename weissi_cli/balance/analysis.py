"""Per-chain analysis: norms and penalties now, and the L2-optimal layer-wise shift."""

from __future__ import annotations

import math
from dataclasses import dataclass

from weissi_cli.balance.layerwise import (
    Shift,
    geometric_mean,
    l2_penalty,
    optimal_shift,
    pow2_shift,
    shifted_penalty,
    weissi_penalty,
)
from weissi_cli.ir import Chain, Layer
from weissi_cli.stats import TensorStats


@dataclass(frozen=True)
class LayerAnalysis:
    """One layer of a chain: its norms now and after the optimal shift."""

    layer: Layer
    fro_norm: float
    bias_norm: float | None
    l1_direction: float | None
    log_norm: float | None
    gamma: float | None
    bias_scale: float | None
    rebalanced_norm: float | None
    rebalanced_bias_norm: float | None


@dataclass(frozen=True)
class ChainAnalysis:
    """A chain's penalties and optimal shift; the optimum fields are None when degenerate."""

    chain: Chain
    layers: tuple[LayerAnalysis, ...]
    include_bias: bool
    l2_penalty: float | None
    log_norm_sum: float | None
    l1_direction_sum: float | None
    weissi_penalty: float | None
    geometric_mean: float | None
    min_l2_penalty: float | None
    l2_slack: float | None
    imbalance: float | None
    optimal: Shift | None
    problem: str | None
    pow2_l2_penalty: float | None = None  # what power-of-two scales reach (16-bit default)

    @property
    def weight_norms(self) -> tuple[float, ...]:
        return tuple(layer.fro_norm for layer in self.layers)

    @property
    def bias_norms(self) -> tuple[float, ...]:
        return tuple(layer.bias_norm or 0.0 for layer in self.layers)


def degeneracy(chain: Chain, stats: dict[str, TensorStats]) -> str | None:
    """Why a chain has no meaningful optimum, or None."""
    for name in chain.tensor_names():
        if not stats[name].is_finite:
            return f"{name} holds {stats[name].nonfinite} non-finite value(s) (NaN or Inf)"
    for layer in chain.layers:
        if stats[layer.weight].fro_norm == 0.0:
            return (
                f"{layer.weight} is all zeros: the chain's output does not depend on its input, "
                "and its norms can be shrunk without bound"
            )
    return None


def analyse_chain(
    chain: Chain,
    stats: dict[str, TensorStats],
    lambda1: float = 1.0,
    lambda2: float = 1.0,
    include_bias: bool = False,
) -> ChainAnalysis:
    weight_norms = [stats[layer.weight].fro_norm for layer in chain.layers]
    bias_norms = [stats[layer.bias].fro_norm if layer.bias else 0.0 for layer in chain.layers]
    problem = degeneracy(chain, stats)
    if problem is not None:
        return _degenerate(chain, stats, include_bias, problem)
    optimal = optimal_shift(weight_norms, bias_norms if include_bias else None)
    penalty = l2_penalty(weight_norms, bias_norms if include_bias else None)
    if not (all(math.isfinite(s) for s in optimal.log_links) and math.isfinite(penalty)):
        return _degenerate(
            chain,
            stats,
            include_bias,
            "the norms are too large or too small for float64 sums of squares",
        )
    gammas, bias_scales = optimal.gammas, optimal.bias_scales
    layers = tuple(
        LayerAnalysis(
            layer=layer,
            fro_norm=norm,
            bias_norm=stats[layer.bias].fro_norm if layer.bias else None,
            l1_direction=stats[layer.weight].l1_direction,
            log_norm=math.log(norm),
            gamma=gamma,
            bias_scale=bias_scale,
            rebalanced_norm=gamma * norm,
            rebalanced_bias_norm=bias_scale * stats[layer.bias].fro_norm if layer.bias else None,
        )
        for layer, norm, gamma, bias_scale in zip(
            chain.layers, weight_norms, gammas, bias_scales, strict=True
        )
    )
    log_norm_sum = math.fsum(layer.log_norm or 0.0 for layer in layers)
    l1_direction_sum = math.fsum(layer.l1_direction or 0.0 for layer in layers)
    minimum = shifted_penalty(optimal, weight_norms, bias_norms if include_bias else None)
    if not include_bias:
        # The closed form L·G², free of the rounding in Σ (γ_l n_l)².
        minimum = len(weight_norms) * geometric_mean(weight_norms) ** 2
    return ChainAnalysis(
        chain=chain,
        layers=layers,
        include_bias=include_bias,
        l2_penalty=penalty,
        log_norm_sum=log_norm_sum,
        l1_direction_sum=l1_direction_sum,
        weissi_penalty=weissi_penalty(log_norm_sum, l1_direction_sum, lambda1, lambda2),
        geometric_mean=geometric_mean(weight_norms),
        min_l2_penalty=minimum,
        l2_slack=max(penalty - minimum, 0.0),
        imbalance=max(weight_norms) / min(weight_norms),
        optimal=optimal,
        problem=None,
        pow2_l2_penalty=shifted_penalty(
            pow2_shift(optimal, weight_norms, bias_norms if include_bias else None),
            weight_norms,
            bias_norms if include_bias else None,
        ),
    )


def _degenerate(
    chain: Chain, stats: dict[str, TensorStats], include_bias: bool, problem: str
) -> ChainAnalysis:
    """What can still be said about a chain without a meaningful optimum."""

    def norm(name: str) -> float:
        # The norm of the finite part would look valid: a non-finite tensor has none.
        return stats[name].fro_norm if stats[name].is_finite else math.nan

    weight_norms = [norm(layer.weight) for layer in chain.layers]
    bias_norms = [norm(layer.bias) if layer.bias else 0.0 for layer in chain.layers]
    penalty = l2_penalty(weight_norms, bias_norms if include_bias else None)
    layers = tuple(
        LayerAnalysis(
            layer=layer,
            fro_norm=weight_norm,
            bias_norm=norm(layer.bias) if layer.bias else None,
            l1_direction=stats[layer.weight].l1_direction if math.isfinite(weight_norm) else None,
            log_norm=math.log(weight_norm) if weight_norm > 0 else None,
            gamma=None,
            bias_scale=None,
            rebalanced_norm=None,
            rebalanced_bias_norm=None,
        )
        for layer, weight_norm in zip(chain.layers, weight_norms, strict=True)
    )
    return ChainAnalysis(
        chain,
        layers,
        include_bias,
        penalty if math.isfinite(penalty) else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        problem,
    )
