"""Free symmetries (from a graph or a spec) solved together, and the statistics pass before
any solving, shared by inspect, rebalance and diff."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from weissi_cli.balance.channelwise import moving_axes, penalised_tensors, solve
from weissi_cli.balance.factors import Squares
from weissi_cli.balance.streamed import StreamedSquares, streamed_names
from weissi_cli.balance.uniform import UniformSquares, uniform_axes
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.ir import Structure
from weissi_cli.report.symmetries import SymmetryGroup
from weissi_cli.stats import TensorStats, axis_squares, compute_stats_and_squares

# State-dict names of buffers: statistics, never penalised (for checkpoints without a graph).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def penalised_members(
    checkpoint: Checkpoint, structure: Structure, include_bias: bool
) -> list[str]:
    """Tensors of the free symmetries that the L2 penalty counts: parameters with 2+ dims,
    1-D parameters on request; never buffers such as running statistics."""
    buffers = getattr(checkpoint, "buffers", None)
    names = dict.fromkeys(m.tensor for s in structure.symmetries for m in s.members)
    found = []
    for name in names:
        is_buffer = name in buffers if buffers is not None else name.endswith(BUFFER_SUFFIXES)
        shape = checkpoint.info(name).shape
        if (
            not is_buffer
            and checkpoint.info(name).is_supported_float
            and (len(shape) >= 2 or include_bias)
        ):
            found.append(name)
    return found


def solve_group(
    checkpoint: Checkpoint,
    structure: Structure,
    include_bias: bool,
    granularity: str,
    threads: int = 2,
    stats: Mapping[str, TensorStats] | None = None,
    lambdas: tuple[float, float] = (1.0, 1.0),
    squares: Mapping[str, Squares] | None = None,
) -> tuple[SymmetryGroup, Mapping[str, Squares]] | None:
    """The layer-wise (and, when asked, channel-wise) optimum of the free symmetries;
    with `stats`, the WEISSI terms of their weight tensors too. `squares`: the axis
    squares of `group_squares_plan`, when a statistics pass already computed them; else
    they are read here, except the totals `stats` already holds (a tensor whose squares sum
    to one value needs no second reading)."""
    if not structure.symmetries and not structure.stops:
        return None
    if squares is None:
        wanted = SquaresToRead.of(checkpoint, structure, include_bias, granularity, stats or ())
        held = wanted.held
        read = axis_squares(checkpoint, list(held), threads, held) if held else {}
        squares = wanted.assemble(checkpoint, stats or {}, read, threads)
    layer = solve(structure.symmetries, squares, granularity="layer")
    channel = solve(structure.symmetries, squares) if granularity == "channel" else None
    group = SymmetryGroup(
        symmetries=structure.symmetries,
        l2_penalty=layer.l2_before,
        layer=layer,
        channel=channel,
        stops=structure.stops,
        weissi_terms=_weissi_terms(stats, squares) if stats is not None else {},
        notes=structure.notes,
        lambdas=lambdas,
    )
    return group, squares


@dataclass(frozen=True)
class SquaresToRead:
    """What `solve_group` needs of the checkpoint beyond the statistics: the axis squares of
    `held` (a name to the axes to keep), read by the caller (in its own pass, or by
    `axis_squares`); of the rest, `totals` take their total from the statistics and
    `streamed` are streamed by the solver."""

    uniform: Mapping[str, tuple[bool, bool]]
    totals: tuple[str, ...]  # in the plan's order, so the squares come in a fixed order
    streamed: frozenset[str]
    held: Mapping[str, tuple[bool, bool]]

    @classmethod
    def of(
        cls,
        checkpoint: Checkpoint,
        structure: Structure,
        include_bias: bool,
        granularity: str,
        with_stats: Iterable[str] = (),
    ) -> SquaresToRead:
        """`with_stats`: the tensors whose statistics are known when the squares are
        assembled (a tensor whose squares sum to one value then needs no reading)."""
        plan = group_squares_plan(checkpoint, structure, include_bias)
        uniform = _uniform(checkpoint, structure, plan) if granularity == "layer" else {}
        plan = _summed_where_uniform(plan, uniform)
        stated = set(with_stats)
        totals = tuple(name for name, keep in plan.items() if not any(keep) and name in stated)
        streamed = streamed_names(checkpoint, plan)
        taken = {*streamed, *totals}
        held = {name: keep for name, keep in plan.items() if name not in taken}
        return cls(uniform, totals, frozenset(streamed), held)

    def assemble(
        self,
        checkpoint: Checkpoint,
        stats: Mapping[str, TensorStats],
        read: Mapping[str, Squares],
        threads: int,
    ) -> dict[str, Squares]:
        """The squares of every penalised tensor, from `read` (the squares of `held`)."""
        return _as_uniform(
            checkpoint,
            {
                **_totals(dict.fromkeys(self.totals, (False, False)), stats),
                **read,
                **{name: StreamedSquares(checkpoint, name, threads) for name in self.streamed},
            },
            self.uniform,
        )


def statistics_pass(
    checkpoint: Checkpoint,
    structure: Structure,
    include_bias: bool,
    granularity: str,
    threads: int = 2,
    names: list[str] | None = None,
) -> tuple[dict[str, TensorStats], dict[str, Squares], dict[str, Squares]]:
    """One pass over the data before any solving: the statistics of `names` (every supported
    float tensor when None), the chains' squares for the channel solver (channel
    granularity: a [rows, columns] matrix per penalised tensor) and the free symmetries'
    axis squares (see `group_squares_plan`). Matrices beyond `streamed.HELD_BYTES` are not
    computed here: the solver streams them from the checkpoint, which must stay open."""
    chain_plan: dict[str, tuple[bool, bool]] = {}
    if granularity == "channel":
        shapes = {info.name: info.shape for info in checkpoint.tensors}
        chain_plan = dict.fromkeys(
            penalised_tensors(structure.chains, shapes, include_bias), (True, True)
        )
    group_plan = (
        group_squares_plan(checkpoint, structure, include_bias) if structure.symmetries else {}
    )
    squared = {**group_plan, **chain_plan}  # a tensor in both keeps both axes
    # chain_plan is empty layer-wise, so no chain tensor is summed
    uniform = _uniform(checkpoint, structure, group_plan) if granularity == "layer" else {}
    squared = _summed_where_uniform(squared, uniform)
    streamed = streamed_names(checkpoint, squared)
    if streamed and chain_plan:
        # A streamed chain tensor keeps only the axes a chain's symmetries move (its first
        # layer's inputs and its last layer's outputs never move): such squares are vectors.
        symmetries = [s for chain in structure.chains for s in chain.symmetries()]
        moving = moving_axes(symmetries, chain_plan)
        for name in streamed & chain_plan.keys():
            rows, columns = moving[name]
            in_group = group_plan.get(name, (False, False))
            squared[name] = (rows or in_group[0], columns or in_group[1])
        # what became a vector is held; the rest stays streamed (holding depends only on
        # the matrices already held)
        streamed = {name for name in streamed if all(squared[name])}
    if names is None:
        names = [info.name for info in checkpoint.tensors if info.is_supported_float]
    held = {name: keep for name, keep in squared.items() if name not in streamed}
    wanted = SquaresToRead(
        uniform,
        tuple(name for name, keep in held.items() if not any(keep)),
        frozenset(streamed),
        {name: keep for name, keep in held.items() if any(keep)},
    )
    stats, squares = compute_stats_and_squares(
        checkpoint, list(dict.fromkeys([*names, *squared])), threads, squared=dict(wanted.held)
    )
    found = wanted.assemble(checkpoint, stats, squares, threads)
    return (
        stats,
        {name: found[name] for name in chain_plan},
        {name: found[name] for name in group_plan},
    )


def _uniform(
    checkpoint: Checkpoint, structure: Structure, plan: Mapping[str, tuple[bool, bool]]
) -> dict[str, tuple[bool, bool]]:
    """The tensors of `plan` with an axis that takes one factor throughout layer-wise (see
    `uniform_axes`): a deep MLP's or a CNN's weights, whose squares then shrink from a
    matrix (streamed from the file on every solver sweep when large) to a vector or a
    total computed in the statistics pass."""
    shapes = {name: checkpoint.info(name).shape for name in plan}
    found = uniform_axes(structure.symmetries, plan, shapes)
    return {name: axes for name, axes in found.items() if any(axes)}


def _totals(
    plan: Mapping[str, tuple[bool, bool]], stats: Mapping[str, TensorStats]
) -> dict[str, Squares]:
    """The squares of the tensors of `plan` that keep no axis: their total, which the
    statistics already hold."""
    return {
        name: np.array([[stats[name].fro_norm ** 2]], np.float32)
        for name, keep in plan.items()
        if not any(keep) and name in stats
    }


def _summed_where_uniform(
    plan: Mapping[str, tuple[bool, bool]], uniform: Mapping[str, tuple[bool, bool]]
) -> dict[str, tuple[bool, bool]]:
    return {
        name: (
            rows and not uniform.get(name, (False, False))[0],
            columns and not uniform.get(name, (False, False))[1],
        )
        for name, (rows, columns) in plan.items()
    }


def _as_uniform(
    checkpoint: Checkpoint, found: Mapping[str, Squares], uniform: Mapping[str, tuple[bool, bool]]
) -> dict[str, Squares]:
    """`found`, with the summed squares of the `uniform` tensors taken at their full shape."""
    result = dict(found)
    for name in uniform:
        summed = found[name]
        assert isinstance(summed, np.ndarray)  # summed along an axis: held
        result[name] = UniformSquares(summed.astype(np.float64), _full_shape(checkpoint, name))
    return result


def _full_shape(checkpoint: Checkpoint, name: str) -> tuple[int, int]:
    shape = checkpoint.info(name).shape
    return (shape[0] if shape else 1, shape[1] if len(shape) > 1 else 1)


def group_squares_plan(
    checkpoint: Checkpoint, structure: Structure, include_bias: bool
) -> dict[str, tuple[bool, bool]]:
    """The penalised tensors of the free symmetries, and the axes of each that a bounded
    symmetry moves (the others are summed out of its squares)."""
    penalised = penalised_members(checkpoint, structure, include_bias)
    return moving_axes(structure.symmetries, penalised)


def _weissi_terms(
    stats: Mapping[str, TensorStats], penalised: Mapping[str, object]
) -> dict[str, tuple[float, float]]:
    """(log ‖W‖, ‖W/‖W‖‖₁) of every penalised tensor with a defined direction."""
    terms = {}
    for name in penalised:
        found = stats.get(name)
        if found is not None and found.fro_norm > 0 and found.l1_direction is not None:
            terms[name] = (math.log(found.fro_norm), found.l1_direction)
    return terms


def unbounded_hint(group: SymmetryGroup | None, include_bias: bool) -> list[str]:
    """A warning when no free symmetry can move: with weights-only L2, a batch norm's gain
    and shift are not penalised, so every symmetry touching one is unbounded."""
    if group is None or not group.symmetries:
        return []
    solution = group.channel or group.layer
    if not all(item.unbounded for item in solution.symmetries.values()):
        return []
    hint = (
        ""
        if include_bias
        else "; pass --include-bias to penalise 1-D parameters (norm gains, biases) too"
    )
    return [
        f"every scale symmetry is unbounded: the L2 penalty can shrink without limit into "
        f"unpenalised tensors, so nothing is rescaled{hint}"
    ]
