"""The plan of a rebalance: the scale of every channel of every symmetry, from one place.

A chain of layers is a set of symmetries with a closed-form optimum (layer-wise, with or
without biases) and an exact joint power-of-two rounding; free symmetries (a graph's, an
architecture's, a spec's) are solved jointly from their axis squares. Both end as
`{symmetry id: channel scales}` and one `{tensor: TensorScale}` for the writer; the chain
view (γ, the shift) is kept for the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from weissi_cli.api.symmetries import solve_group
from weissi_cli.balance.analysis import ChainAnalysis, analyse_chain
from weissi_cli.balance.channelwise import ChannelSolution, round_to_powers_of_two, solve
from weissi_cli.balance.exact_pow2 import ExactLimits, exact_range
from weissi_cli.balance.factors import Squares
from weissi_cli.balance.layerwise import Shift, pow2_shift
from weissi_cli.headroom import measure_headroom
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import is_16_bit
from weissi_cli.ir import Chain, Structure, Symmetry
from weissi_cli.report.symmetries import SymmetryGroup
from weissi_cli.scales import TensorScale, Vector, chain_channel_scales, from_symmetries
from weissi_cli.stats import TensorStats


@dataclass(frozen=True)
class PlanSettings:
    """How to plan: `scales` auto|real|pow2, biases penalised or not, layer or channel
    granularity, whether power-of-two scales may shrink a chain's hidden activations
    (`hold_activations`) and whether they may grow any activation (`hold_headroom`)."""

    scales: str = "auto"
    include_bias: bool = False
    granularity: str = "layer"
    hold_activations: bool = False
    hold_headroom: bool = False


@dataclass(frozen=True)
class Plan:
    """Every chain's plan and the free symmetries' joint solution, and the factor of every
    tensor the rewrite scales."""

    chains: tuple[ChainPlan, ...]
    group: SymmetryGroup | None
    group_mode: str
    group_scales: dict[str, TensorScale]
    tensor_scales: dict[str, TensorScale]

    def held_warnings(self) -> list[str]:
        return _held_warnings(list(self.chains), self.group)


def plan_rebalance(
    checkpoint: Checkpoint,
    structure: Structure,
    stats: dict[str, TensorStats],
    squares: Mapping[str, Squares],
    group_squares: Mapping[str, Squares],
    settings: PlanSettings,
    threads: int = 2,
) -> Plan:
    """The scales that bring every symmetry of `structure` to the L2 optimum (from the
    statistics and squares of one pass over the checkpoint)."""
    chains = tuple(
        _plan(
            chain,
            checkpoint,
            stats,
            squares,
            settings.scales,
            settings.include_bias,
            settings.granularity,
            settings.hold_activations,
            settings.hold_headroom,
        )
        for chain in structure.chains
    )
    group, group_scales, group_mode = _solve_group(
        checkpoint,
        structure,
        settings.include_bias,
        settings.granularity,
        settings.scales,
        threads,
        group_squares,
        settings.hold_headroom,
    )
    shapes = {info.name: info.shape for info in checkpoint.tensors}
    tensor_scales: dict[str, TensorScale] = dict(group_scales)
    for plan in chains:
        if plan.channel_scales is not None:
            tensor_scales.update(
                from_symmetries(plan.analysis.chain.symmetries(), plan.channel_scales, shapes)
            )
    return Plan(chains, group, group_mode, group_scales, tensor_scales)


def _mode_for(chain: Chain, checkpoint: Checkpoint, scales: str) -> str:
    if scales != "auto":
        return scales
    sixteen_bit = any(is_16_bit(checkpoint.info(name).dtype) for name in chain.tensor_names())
    return "pow2" if sixteen_bit else "real"


@dataclass(frozen=True)
class ChainPlan:
    """What to do with one chain: its analysis, and the scale of every channel of each of
    its symmetries (None: leave it alone)."""

    analysis: ChainAnalysis
    channel_scales: dict[str, Vector] | None
    mode: str  # "real" | "pow2" | "none"
    shift: Shift | None = None  # layer granularity
    solution: ChannelSolution | None = None  # channel granularity
    held: int = 0  # link scales or channels that float16 exactness kept closer to 1


def _plan(
    chain: Chain,
    checkpoint: Checkpoint,
    before: dict[str, TensorStats],
    squares: Mapping[str, Squares],
    scales: str,
    include_bias: bool,
    granularity: str,
    hold_activations: bool = False,
    hold_headroom: bool = False,
) -> ChainPlan:
    """With power-of-two scales: no hidden activation is scaled down (`hold_activations`),
    or up (`hold_headroom`)."""
    analysis = analyse_chain(chain, before, include_bias=include_bias)
    if analysis.optimal is None:
        return ChainPlan(analysis, None, "none")
    mode = _mode_for(chain, checkpoint, scales)
    limits = exact_limits(checkpoint, chain.tensor_names()) if mode == "pow2" else None
    hold = hold_activations and mode == "pow2"
    cap = hold_headroom and mode == "pow2"
    if granularity == "channel":
        symmetries = chain.symmetries()
        mine = {name: squares[name] for name in chain.tensor_names() if name in squares}
        solution = solve(symmetries, mine)
        if mode == "pow2":
            floors = frozenset(s.id for s in symmetries) if hold else frozenset()
            ceilings = frozenset(s.id for s in symmetries) if cap else frozenset()
            solution = round_to_powers_of_two(solution, symmetries, mine, limits, floors, ceilings)
        held = sum(solution.held.values())
        return ChainPlan(analysis, solution.scales, mode, solution=solution, held=held)
    shift = analysis.optimal
    held = 0
    if mode == "pow2":
        biases = analysis.bias_norms if include_bias else None
        if not limits and not hold and not cap:
            shift = pow2_shift(analysis.optimal, analysis.weight_norms, biases)
        else:
            bounds = _layer_bounds(chain, limits or ExactLimits({}))
            if hold:  # Π_l = 2^k_l multiplies layer l's outputs: k_l >= 0
                bounds = [(weight, (max(bias[0], 0.0), bias[1])) for weight, bias in bounds]
            if cap:  # and k_l <= 0 keeps them from growing
                bounds = [(weight, (bias[0], min(bias[1], 0.0))) for weight, bias in bounds]
            shift = pow2_shift(analysis.optimal, analysis.weight_norms, biases, bounds)
            # Held: links where the same search without the bounds (its candidates are wider
            # than the unbounded default's) would have chosen differently.
            unlimited = [((-math.inf, math.inf), (-math.inf, math.inf))] * len(bounds)
            free = pow2_shift(analysis.optimal, analysis.weight_norms, biases, unlimited)
            held = sum(a != b for a, b in zip(free.log_links, shift.log_links, strict=True))
    return ChainPlan(analysis, chain_channel_scales(chain, shift), mode, shift=shift, held=held)


def exact_limits(checkpoint: Checkpoint, names: Iterable[str]) -> ExactLimits:
    """The float16 headroom of `names` (empty, and free, when none is float16)."""
    wanted = [name for name in dict.fromkeys(names) if checkpoint.info(name).dtype == "float16"]
    headroom = measure_headroom(checkpoint, wanted) if wanted else {}
    return ExactLimits(headroom)


def _layer_bounds(
    chain: Chain, limits: ExactLimits
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Per layer, the exponents its weight's and its bias's uniform factor may take."""
    return [
        (
            exact_range(limits.headroom.get(layer.weight)),
            exact_range(limits.headroom.get(layer.bias) if layer.bias else None),
        )
        for layer in chain.layers
    ]


def _held_warnings(plans: list[ChainPlan], group: SymmetryGroup | None) -> list[str]:
    """Where float16 exactness kept power-of-two scales short of the L2 optimum."""
    reason = (
        "scaling further would push the lowest set bit of some float16 values below 2^-24, "
        "float16's smallest step, and round them; --scales real moves them fully and rounds "
        "each value once instead"
    )
    found = [
        f"{plan.analysis.chain.id}: float16 exactness held {plan.held} "
        f"{'channel' if plan.solution is not None else 'link'} scale(s) closer to 1 ({reason})"
        for plan in plans
        if plan.held
    ]
    solution = None if group is None else (group.channel or group.layer)
    if solution is not None and solution.held:
        of = f"{len(solution.held)} of {len(solution.symmetries)} symmetries"
        what = (
            f"{sum(solution.held.values())} channel scale(s) in {of}"
            if solution.granularity == "channel"
            else f"the scales of {of}"
        )
        found.append(f"float16 exactness held {what} closer to 1 ({reason})")
    return found


def _solve_group(
    checkpoint: Checkpoint,
    structure: Structure,
    include_bias: bool,
    granularity: str,
    scales: str,
    threads: int,
    squares: Mapping[str, Squares],
    hold_headroom: bool = False,
) -> tuple[SymmetryGroup | None, dict[str, TensorScale], str]:
    """The free symmetries' scales (graph or spec), solved jointly from their axis squares;
    `hold_headroom`: power-of-two scales grow no activation (see `growth_holds`)."""
    solved = solve_group(checkpoint, structure, include_bias, granularity, threads, squares=squares)
    if solved is None or not structure.symmetries:
        return (solved[0] if solved else None), {}, "none"
    group, squares = solved
    mode = scales
    members = {m.tensor for s in structure.symmetries for m in s.members}
    if scales == "auto":
        mode = "pow2" if any(is_16_bit(checkpoint.info(n).dtype) for n in members) else "real"
    chosen = group.channel or group.layer
    if mode == "pow2":
        limits = exact_limits(checkpoint, members)
        floors, ceilings = (
            growth_holds(structure.symmetries, checkpoint) if hold_headroom else (frozenset(),) * 2
        )
        chosen = round_to_powers_of_two(
            chosen, structure.symmetries, squares, limits, floors, ceilings
        )
        group = replace(group, channel=chosen) if group.channel else replace(group, layer=chosen)
    shapes = {info.name: info.shape for info in checkpoint.tensors}
    tensor_scales = from_symmetries(structure.symmetries, chosen.scales, shapes)
    return group, tensor_scales, mode


def growth_holds(
    symmetries: Iterable[Symmetry], checkpoint: Checkpoint
) -> tuple[frozenset[str], frozenset[str]]:
    """The symmetries whose scales must stay at or below 1, and those that must also stay
    at or above 1, for no activation to grow. A symmetry whose factor multiplies its
    producers' outputs (positive exponents on a weight's rows or a 1-D tensor, negative
    ones on a weight's input axes) scales their activations by that factor: a ceiling
    of 1 keeps them. Any other (queries against keys, a weight stored transposed) would
    grow one activation or another: it stays at 1."""
    ceilings, pinned = set(), set()
    for symmetry in symmetries:
        ceilings.add(symmetry.id)
        for member in symmetry.members:
            rank = len(checkpoint.info(member.tensor).shape)
            producer = member.exponent > 0 and member.axis == 0
            consumer = member.exponent < 0 and member.axis >= 1 and rank >= 2
            if not (producer or consumer):
                pinned.add(symmetry.id)
    return frozenset(pinned), frozenset(ceilings)
