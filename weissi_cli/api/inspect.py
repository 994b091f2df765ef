"""`inspect`: statistics of every tensor and the penalties of every chain, in one pass."""

from __future__ import annotations

import math
import os
from pathlib import Path

from weissi_cli.api.symmetries import solve_group, statistics_pass, unbounded_hint
from weissi_cli.balance.analysis import analyse_chain
from weissi_cli.balance.channelwise import ChannelSolution, solve
from weissi_cli.choices import Granularity, choose
from weissi_cli.errors import UsageError
from weissi_cli.io import open_checkpoint
from weissi_cli.report.common import Source
from weissi_cli.report.inspect import InspectReport, InspectSettings, TensorRow
from weissi_cli.structure import discover
from weissi_cli.structure.source import StructureSource


def inspect_checkpoint(
    path: str | os.PathLike[str],
    spec: str | os.PathLike[str] | StructureSource | None = None,
    lambda1: float = 1.0,
    lambda2: float = 1.0,
    include_bias: bool = False,
    threads: int = 2,
    granularity: str = "layer",
    allow_approximate: bool = False,
) -> InspectReport:
    """Every tensor's statistics and every chain's (or scale symmetry's) penalties in one
    streaming pass over the checkpoint at `path`: L2, its minimum over function-preserving
    scale shifts, the WEISSI penalty with weights `lambda1` and `lambda2`, the imbalance and
    the optimal factors γ*. `spec`: a structure spec file, or a `StructureSource`.
    `include_bias` penalises 1-D parameters too. With `granularity="channel"` the
    per-channel optimum is reported beside the layer-wise one (from the same pass; the
    squares of large tensors are streamed from the file while solving).
    `report.to_dict()` is the weissi.inspect/1 payload."""
    path = Path(path)
    granularity = choose(Granularity, granularity, "--granularity")
    for name, value in (("--lambda1", lambda1), ("--lambda2", lambda2)):
        if not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, not {value}")
    with open_checkpoint(path) as checkpoint:
        structure = discover(checkpoint, StructureSource.of(spec), allow_approximate)
        # One pass: the statistics of every tensor and the squares the solvers need.
        stats, chain_squares, group_squares = statistics_pass(
            checkpoint, structure, include_bias, granularity, threads
        )
        rows = tuple(
            TensorRow(
                name=info.name,
                shape=info.shape,
                dtype=info.dtype,
                fro_norm=stats[info.name].fro_norm if info.name in stats else None,
                max_abs=stats[info.name].max_abs if info.name in stats else None,
                l1_direction=stats[info.name].l1_direction if info.name in stats else None,
                nonfinite=stats[info.name].nonfinite if info.name in stats else 0,
                skipped=None
                if info.name in stats
                else f"{info.dtype} tensor: not a supported float",
            )
            for info in checkpoint.tensors
        )
        chains = tuple(
            analyse_chain(chain, stats, lambda1, lambda2, include_bias)
            for chain in structure.chains
        )
        channel: dict[str, ChannelSolution] = {}
        if granularity == "channel":
            for chain in (a.chain for a in chains if a.problem is None):
                mine = {n: chain_squares[n] for n in chain.tensor_names() if n in chain_squares}
                channel[chain.id] = solve(chain.symmetries(), mine)
        solved = solve_group(
            checkpoint,
            structure,
            include_bias,
            granularity,
            threads,
            stats=stats,
            lambdas=(lambda1, lambda2),
            squares=group_squares,
        )
        warnings = [*checkpoint.notes, *structure.assumptions]
        warnings += [f"rebalance refuses this guessed structure: {r}" for r in structure.refusals]
        if granularity == "channel":
            warnings += [
                f"the channel-wise numbers take for granted that {guess}; rebalance refuses "
                "that until the order is stated"
                for guess in structure.guesses()
            ]
        warnings += unbounded_hint(solved[0] if solved else None, include_bias)
        warnings += [
            f"{row.name}: {row.nonfinite} non-finite value(s) (NaN or Inf)"
            for row in rows
            if row.nonfinite
        ]
        warnings += [f"{a.chain.id}: {a.problem}" for a in chains if a.problem]
        warnings += [f"{chain.id}: {note}" for chain in structure.chains for note in chain.notes]
        dtypes = {info.name: info.dtype for info in checkpoint.tensors}
        warnings += [
            f"{a.chain.id}: min_l2_penalty_pow2 assumes every float16 value can move by a "
            "power of two; rebalance holds scales where a value would round (float16 "
            "exactness), so it may reach less (its warning says how many it held)"
            for a in chains
            if a.pow2_l2_penalty is not None
            and any(dtypes[name] == "float16" for name in a.chain.tensor_names())
        ]
        return InspectReport(
            source=Source.of(checkpoint, str(path)),
            settings=InspectSettings(lambda1, lambda2, include_bias, granularity),
            tensors=rows,
            chains=chains,
            channel=channel,
            group=solved[0] if solved else None,
            dtypes=dtypes,
            unassigned=structure.unassigned,
            warnings=tuple(warnings),
        )
