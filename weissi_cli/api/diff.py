"""`diff`: are two checkpoints the same network — bit for bit, to rounding, or up to a scale
shift (their canonical, rebalanced forms agree)?"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from weissi_cli.api.symmetries import solve_group
from weissi_cli.balance.analysis import analyse_chain
from weissi_cli.balance.channelwise import penalised_tensors, solve
from weissi_cli.errors import UsageError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import UNIT_ROUNDOFF
from weissi_cli.ir import Structure
from weissi_cli.report.common import Source
from weissi_cli.report.diff import DiffReport, Shift, TensorDiff
from weissi_cli.scales import TensorScale, from_symmetries, shift_scales
from weissi_cli.stats import axis_squares, compute_stats
from weissi_cli.structure import discover
from weissi_cli.verify import Block, PairReader

# Relative tolerance, in units of the coarser dtype's roundoff: rounding once on each side
# plus the scaling arithmetic.
TOLERANCE_UNITS = 16


def diff_checkpoints(
    first: Path,
    second: Path,
    spec: Path | None = None,
    granularity: str = "layer",
    threads: int = 2,
) -> DiffReport:
    if granularity not in ("layer", "channel"):
        raise UsageError(f"--granularity must be layer or channel, not {granularity!r}")
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
        structure = discover(a, spec)
        warnings = [*a.notes, *b.notes, *structure.assumptions]
        scales_a, scales_b, shifts = (
            ({}, {}, []) if reasons else _canonical(a, b, structure, granularity, threads)
        )
        in_symmetry = (
            set(scales_a)
            | set(scales_b)
            | {m.tensor for s in structure.all_symmetries() for m in s.members}
        )
        tensors = _compare(a, b, names, scales_a, scales_b, in_symmetry)
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


def _canonical(
    a: Checkpoint, b: Checkpoint, structure: Structure, granularity: str, threads: int
) -> tuple[dict[str, TensorScale], dict[str, TensorScale], list[Shift]]:
    """The scales that rebalance each checkpoint to its optimum (a canonical form: the
    optimum is unique), and the layer-wise shifts from A to B."""
    shapes = {info.name: info.shape for info in a.tensors}
    found: list[dict[str, TensorScale]] = []
    shifts: list[Shift] = []
    stats_pair = []
    for checkpoint in (a, b):
        names = [n for chain in structure.chains for n in chain.tensor_names()]
        stats = compute_stats(checkpoint, names, threads=threads)
        stats_pair.append(stats)
        scales: dict[str, TensorScale] = {}
        if granularity == "channel" and structure.chains:
            squares = axis_squares(
                checkpoint, penalised_tensors(structure.chains, shapes, False), threads
            )
            for chain in structure.chains:
                mine = {n: squares[n] for n in chain.tensor_names() if n in squares}
                scales.update(
                    from_symmetries(
                        chain.symmetries(), solve(chain.symmetries(), mine).scales, shapes
                    )
                )
        else:
            for chain in structure.chains:
                analysis = analyse_chain(chain, stats)
                if analysis.optimal is not None:
                    scales.update(shift_scales(chain, analysis.optimal, shapes))
        solved = solve_group(checkpoint, structure, False, granularity, threads)
        if solved is not None and structure.symmetries:
            group = solved[0]
            chosen = group.channel or group.layer
            scales.update(from_symmetries(structure.symmetries, chosen.scales, shapes))
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
) -> list[TensorDiff]:
    reader = PairReader(a, b, np.float64)
    results = []
    for name in names:
        shape = a.info(name).shape
        scale_a = scales_a.get(name) or TensorScale(shape)
        scale_b = scales_b.get(name) or TensorScale(shape)
        totals = {"abs": 0.0, "largest": 0.0, "canonical": 0.0, "canonical_largest": 0.0}
        bitwise = [True]
        lock = threading.Lock()
        same_scale = _same_factors(scale_a, scale_b)

        def compare(
            block: Block,
            old: np.ndarray,
            new: np.ndarray,
            scale_a: TensorScale = scale_a,
            scale_b: TensorScale = scale_b,
            totals: dict[str, float] = totals,
            bitwise: list[bool] = bitwise,
            lock: threading.Lock = lock,
            same_scale: bool = same_scale,
        ) -> None:
            equal = bool(np.array_equal(old, new, equal_nan=True))
            if equal and same_scale:  # nothing differs, raw or canonical: skip the arithmetic
                with lock:
                    bitwise[0] = bitwise[0] and equal
                return
            with np.errstate(invalid="ignore", over="ignore"):
                difference = float(np.max(np.abs(new - old))) if old.size else 0.0
                largest = float(np.max(np.abs(old))) if old.size else 0.0
                fa = np.asarray(scale_a.rows(block.row, block.rows)).reshape(-1)
                fb = np.asarray(scale_b.rows(block.row, block.rows)).reshape(-1)
                canon_a = old.reshape(-1) * fa
                canon_b = new.reshape(-1) * fb
                canonical = float(np.max(np.abs(canon_b - canon_a))) if old.size else 0.0
                canonical_largest = float(np.max(np.abs(canon_a))) if old.size else 0.0
            with lock:
                totals["abs"] = _max(totals["abs"], difference)
                totals["largest"] = _max(totals["largest"], largest)
                totals["canonical"] = _max(totals["canonical"], canonical)
                totals["canonical_largest"] = _max(totals["canonical_largest"], canonical_largest)
                bitwise[0] = bitwise[0] and equal

        reader.for_each_block(name, compare)
        results.append(
            TensorDiff(
                name=name,
                max_abs_diff=totals["abs"],
                max_rel_diff=_relative(totals["abs"], totals["largest"]),
                canonical_rel_diff=_relative(totals["canonical"], totals["canonical_largest"])
                if name in in_symmetry
                else None,
                bitwise_equal=bitwise[0],
            )
        )
    return results


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
