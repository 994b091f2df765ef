"""`diff`: are two checkpoints the same network — bit for bit, to rounding, or up to a scale
shift (their canonical, rebalanced forms agree)?"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

from weissi_cli.api.plan import PlanSettings, plan_rebalance
from weissi_cli.api.symmetries import statistics_pass
from weissi_cli.api.verdict import guess_refusal
from weissi_cli.choices import Granularity, choose
from weissi_cli.compare import compare_tensors
from weissi_cli.errors import StructureError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import UNIT_ROUNDOFF
from weissi_cli.ir import Structure
from weissi_cli.report.common import Source
from weissi_cli.report.diff import DiffReport, Shift, StructureBasis, TensorDiff
from weissi_cli.scales import TensorScale
from weissi_cli.structure import discover
from weissi_cli.structure.source import StructureSource

# Relative tolerance, in units of the coarser dtype's roundoff: rounding once on each side
# plus the scaling arithmetic.
TOLERANCE_UNITS = 16


def diff_checkpoints(
    first: str | os.PathLike[str],
    second: str | os.PathLike[str],
    spec: str | os.PathLike[str] | StructureSource | None = None,
    granularity: str = "layer",
    threads: int = 2,
    include_bias: bool = False,
) -> DiffReport:
    """Compare A and B raw, then modulo the scale symmetries of A's structure: both are
    rebalanced to the optimum of the same penalty a rebalance used (`include_bias`), a
    canonical form. The report says which structure that was and how far it is known."""
    first, second = Path(first), Path(second)
    source = StructureSource.of(spec)
    granularity = choose(Granularity, granularity, "--granularity")
    with open_checkpoint(first) as a, open_checkpoint(second) as b:
        reasons = _layout_differences(a, b)
        names = [
            info.name
            for info in a.tensors
            if info.is_supported_float
            and info.name in b
            and b.info(info.name).shape == info.shape
            and b.info(info.name).is_supported_float
        ]
        dtypes = {a.info(n).dtype for n in names} | {b.info(n).dtype for n in names}
        tolerance = TOLERANCE_UNITS * max((UNIT_ROUNDOFF[d] for d in dtypes), default=2.0**-53)
        structure = discover(a, source)
        warnings = [*a.notes, *b.notes, *structure.assumptions]
        guesses = structure.guesses()
        if granularity == "channel" and guesses:
            raise StructureError(guess_refusal(first, guesses, "comparison"))
        basis = structure_basis(structure, source.spec)
        unplaced = structure.origin == "heuristic" and bool(structure.refusals)
        if unplaced:
            warnings.append(
                "not compared up to scale shift: the structure guessed from names and shapes "
                f"cannot place {'; '.join(structure.refusals[:3])}"
                + (
                    f" (and {len(structure.refusals) - 3} more)"
                    if len(structure.refusals) > 3
                    else ""
                )
                + "; pass --spec to compare on a declared structure"
            )
        scales_a, scales_b, shifts = (
            ({}, {}, [])
            if reasons or unplaced
            else _canonical(a, b, structure, granularity, threads, include_bias)
        )
        in_symmetry = (
            set(scales_a)
            | set(scales_b)
            | {m.tensor for s in structure.all_symmetries() for m in s.members}
        )
        tensors = _compare(a, b, names, scales_a, scales_b, in_symmetry, threads)
        verdict = _verdict(reasons, tensors, tolerance)
        if verdict != "equal up to scale shift":
            shifts = []
        return DiffReport(
            first=Source.of(a, str(first)),
            second=Source.of(b, str(second)),
            verdict=verdict,
            reasons=tuple(reasons),
            tensors=tuple(tensors),
            shifts=tuple(shifts),
            tolerance=tolerance,
            granularity=granularity,
            warnings=tuple(warnings),
            include_bias=include_bias,
            structure=basis if not unplaced else replace(basis, compared=False),
        )


def _layout_differences(a: Checkpoint, b: Checkpoint) -> list[str]:
    names_a = {info.name for info in a.tensors}
    names_b = {info.name for info in b.tensors}
    reasons = []
    if names_a - names_b:
        reasons.append(f"only in A: {', '.join(sorted(names_a - names_b)[:10])}")
    if names_b - names_a:
        reasons.append(f"only in B: {', '.join(sorted(names_b - names_a)[:10])}")
    for name in sorted(names_a & names_b):
        if a.info(name).shape != b.info(name).shape:
            reasons.append(f"{name}: shape {a.info(name).shape} in A, {b.info(name).shape} in B")
    return reasons


def structure_basis(structure: Structure, spec: Path | None) -> StructureBasis:
    """Which structure a comparison up to scale shift stands on, and how far it is known:
    exact (the program's own graph, a registered architecture), declared (a spec file) or
    assumed (names and shapes)."""
    origins = {chain.origin for chain in structure.chains}
    origins |= {symmetry.origin for symmetry in structure.symmetries}
    if not origins:
        return StructureBasis(structure.origin, "none", "no scale symmetry found", ())
    if "heuristic" in origins:
        return StructureBasis(
            "heuristic",
            "assumed",
            "guessed from names and shapes (ReLU-like activations assumed)",
            structure.refusals,
        )
    if "spec" in origins:
        return StructureBasis("spec", "declared", f"declared by {spec}", ())
    families = sorted(o.removeprefix("config:") for o in origins if o.startswith("config:"))
    if families:
        return StructureBasis(
            f"config:{families[0]}",
            "exact",
            f"the {', '.join(families)} architecture's registry entry",
            (),
        )
    traced = sorted(o.removeprefix("graph:") for o in origins if o.startswith("graph:"))
    if traced:
        return StructureBasis(
            f"graph:{traced[0]}", "exact", f"the graph traced from {traced[0]}'s own code", ()
        )
    return StructureBasis("graph", "exact", "the exported program's own graph", ())


def _canonical(
    a: Checkpoint,
    b: Checkpoint,
    structure: Structure,
    granularity: str,
    threads: int,
    include_bias: bool = False,
) -> tuple[dict[str, TensorScale], dict[str, TensorScale], list[Shift]]:
    """The scales that rebalance each checkpoint to its optimum (a canonical form: the
    optimum is unique), and the layer-wise shifts from A to B."""
    found: list[dict[str, TensorScale]] = []
    shifts: list[Shift] = []
    stats_pair = []
    for checkpoint in (a, b):
        # One pass per checkpoint: the chains' statistics and the squares the solvers need.
        names = [n for chain in structure.chains for n in chain.tensor_names()]
        stats, squares, group_squares = statistics_pass(
            checkpoint, structure, include_bias, granularity, threads, names
        )
        stats_pair.append(stats)
        settings = PlanSettings("real", include_bias, granularity)
        plan = plan_rebalance(
            checkpoint, structure, stats, squares, group_squares, settings, threads
        )
        scales = dict(plan.tensor_scales)
        found.append(scales)
    for chain in structure.chains:
        before, after = stats_pair
        factors = {
            name: (
                after[name].fro_norm / before[name].fro_norm
                if before[name].fro_norm > 0
                else math.nan
            )
            for name in chain.tensor_names()
        }
        shifts.append(Shift(chain.id, factors))
    return found[0], found[1], shifts


def _compare(
    a: Checkpoint,
    b: Checkpoint,
    names: list[str],
    scales_a: dict[str, TensorScale],
    scales_b: dict[str, TensorScale],
    in_symmetry: set[str],
    threads: int = 2,
) -> list[TensorDiff]:
    """Each tensor of A against B, raw and after rebalancing both."""
    found = compare_tensors(a, b, names, scales_a, scales_b, threads)
    return [
        TensorDiff(
            name=name,
            max_abs_diff=totals.difference,
            max_rel_diff=_relative(totals.difference, totals.largest),
            canonical_rel_diff=_relative(totals.canonical, totals.canonical_largest)
            if name in in_symmetry
            else None,
            bitwise_equal=totals.bitwise,
        )
        for name, totals in found.items()
    ]


def _relative(difference: float, largest: float) -> float:
    if difference == 0:
        return 0.0
    return difference / largest if largest > 0 else math.inf


def _verdict(reasons: list[str], tensors: list[TensorDiff], tolerance: float) -> str:
    if reasons:
        return "different"
    if all(t.bitwise_equal for t in tensors):
        return "identical"
    if all(t.max_rel_diff <= tolerance for t in tensors):
        return "equal up to rounding"
    if all(
        (t.canonical_rel_diff if t.canonical_rel_diff is not None else t.max_rel_diff) <= tolerance
        for t in tensors
    ):
        return "equal up to scale shift"
    return "different"
