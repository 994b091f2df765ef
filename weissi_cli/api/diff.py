"""`diff`: are two checkpoints the same network — bit for bit, to rounding, or up to a scale
shift (their canonical, rebalanced forms agree)?"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from weissi_cli.api.plan import PlanSettings, plan_rebalance
from weissi_cli.api.symmetries import statistics_pass
from weissi_cli.api.verdict import guess_refusal
from weissi_cli.choices import Granularity, choose
from weissi_cli.errors import StructureError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import UNIT_ROUNDOFF, decode
from weissi_cli.ir import Structure
from weissi_cli.progress import Stage
from weissi_cli.report.common import Source
from weissi_cli.report.diff import DiffReport, Shift, StructureBasis, TensorDiff
from weissi_cli.scales import TensorScale
from weissi_cli.structure import discover
from weissi_cli.structure.source import StructureSource
from weissi_cli.threads import run_round_robin
from weissi_cli.verify_pairs import Block, PairBuffers, row_blocks

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
    results = []
    total = sum(a.info(name).nbytes + b.info(name).nbytes for name in names)
    with Stage("comparing", total) as stage:
        for name in names:
            results.append(_compared(a, b, name, scales_a, scales_b, name in in_symmetry, threads))
            stage.advance(a.info(name).nbytes + b.info(name).nbytes)
    return results


def _compared(
    a: Checkpoint,
    b: Checkpoint,
    name: str,
    scales_a: dict[str, TensorScale],
    scales_b: dict[str, TensorScale],
    in_symmetry: bool,
    threads: int,
) -> TensorDiff:
    """One tensor of A against B, raw and after rebalancing both."""
    shape = a.info(name).shape
    scale_a = scales_a.get(name) or TensorScale(shape)
    scale_b = scales_b.get(name) or TensorScale(shape)
    totals = _compare_tensor(a, b, name, scale_a, scale_b, threads)
    return TensorDiff(
        name=name,
        max_abs_diff=totals.difference,
        max_rel_diff=_relative(totals.difference, totals.largest),
        canonical_rel_diff=_relative(totals.canonical, totals.canonical_largest)
        if in_symmetry
        else None,
        bitwise_equal=totals.bitwise,
    )


class _Totals:
    """One tensor's comparison so far, merged from its blocks under a lock."""

    def __init__(self) -> None:
        self.difference = self.largest = self.canonical = self.canonical_largest = 0.0
        self.bitwise = True
        self.lock = threading.Lock()

    def add(
        self, difference: float, largest: float, canonical: float, top: float, equal: bool
    ) -> None:
        with self.lock:
            self.difference = _max(self.difference, difference)
            self.largest = _max(self.largest, largest)
            self.canonical = _max(self.canonical, canonical)
            self.canonical_largest = _max(self.canonical_largest, top)
            self.bitwise = self.bitwise and equal


def _compare_tensor(
    a: Checkpoint,
    b: Checkpoint,
    name: str,
    scale_a: TensorScale,
    scale_b: TensorScale,
    threads: int,
) -> _Totals:
    """Row blocks of one tensor from both files on `threads` threads. A block whose stored
    bytes are the same in both files, under the same factors, is equal raw and canonical
    alike and is not decoded (equal bytes are equal values; values that are equal in other
    bytes, -0.0 or another NaN, are found by the float comparison). Other blocks are
    decoded to float64, so the factors apply without rounding."""
    info = a.info(name)
    blocks, width = row_blocks(name, info)
    same_storage = info.dtype == b.info(name).dtype
    same_scale = _same_factors(scale_a, scale_b)
    totals = _Totals()

    def compare(block: Block, state: PairBuffers) -> None:
        start, size = block.row * width, block.rows * width
        raw_a = a.read_raw(name, start, size, state.buffers[0])
        raw_b = b.read_raw(name, start, size, state.buffers[1])
        if same_storage and same_scale and _same_bytes(raw_a, raw_b):
            return
        old = decode(raw_a, info.dtype, state.widened[0]).astype(np.float64, copy=False)
        new = decode(raw_b, b.info(name).dtype, state.widened[1]).astype(np.float64, copy=False)
        equal = bool(np.array_equal(old, new, equal_nan=True))
        if equal and same_scale:  # nothing differs, raw or canonical: skip the arithmetic
            return
        with np.errstate(invalid="ignore", over="ignore"):
            difference = float(np.max(np.abs(new - old))) if old.size else 0.0
            largest = float(np.max(np.abs(old))) if old.size else 0.0
            canon_a = old * np.asarray(scale_a.rows(block.row, block.rows)).reshape(-1)
            canon_b = new * np.asarray(scale_b.rows(block.row, block.rows)).reshape(-1)
            canonical = float(np.max(np.abs(canon_b - canon_a))) if old.size else 0.0
            canonical_largest = float(np.max(np.abs(canon_a))) if old.size else 0.0
        totals.add(difference, largest, canonical, canonical_largest, equal)

    run_round_robin(blocks, lambda: PairBuffers(width), compare, threads)
    return totals


def _same_bytes(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two raw blocks hold the same bytes (floats compared as integers: a NaN is
    its own bit pattern), eight bytes at a time where the length allows (3x faster)."""
    word = np.uint64 if first.nbytes % 8 == 0 else np.uint8
    return bool(np.array_equal(first.view(word), second.view(word)))


def _same_factors(first: TensorScale, second: TensorScale) -> bool:
    """Whether two scales multiply every element by the same factor (bit for bit)."""
    if first.scalar != second.scalar or first.vectors.keys() != second.vectors.keys():
        return False
    return all(np.array_equal(first.vectors[axis], second.vectors[axis]) for axis in first.vectors)


def _max(first: float, second: float) -> float:
    return math.nan if math.isnan(first) or math.isnan(second) else max(first, second)


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
