"""The value check of a rewrite: every rewritten value is its original times the planned
factor, rounded once to the storage dtype (exactly, for powers of two)."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, ended_early, read_buffer
from weissi_cli.io.dtypes import UNIT_ROUNDOFF
from weissi_cli.kernel_numpy import check_shares
from weissi_cli.numpy_reduce import Partial
from weissi_cli.scales import TensorScale
from weissi_cli.stats import EXACT_BELOW
from weissi_cli.threads import run_round_robin
from weissi_cli.verification import ChainVerification, Level
from weissi_cli.verify_pairs import Block, FloatArray, PairReader

# The spacing of subnormals: the absolute rounding slack at the bottom of each range.
SUBNORMAL_SPACING = {
    "float64": 2.0**-1074,
    "float32": 2.0**-149,
    "float16": 2.0**-24,
    "bfloat16": 2.0**-133,
}


class ElementCheck:
    """Every value of a rewritten tensor must be its original times the planned factor,
    rounded once: |new − f·old| ≤ u·|new| (+ the subnormal spacing), where u is the storage
    dtype's unit roundoff for real factors and 0 for powers of two (exact products)."""

    def __init__(self, compute: type[np.floating]) -> None:
        self.compute = compute
        self.unit_compute = UNIT_ROUNDOFF["float64" if compute is np.float64 else "float32"]
        self.checked = 0
        self.failures: dict[str, int] = {}
        self.worst = 0.0  # largest |new − f·old| as a share of its allowance
        self._lock = threading.Lock()
        self._scratch = threading.local()

    def check_block(
        self,
        name: str,
        dtype: str,
        scale: TensorScale,
        block: Block,
        old: FloatArray,
        new: FloatArray,
    ) -> None:
        """The backend for the decoded values checks the block in one pass (the C kernel
        in double, numpy in the values' dtype); factors that are not finite and positive
        fail every value."""
        tolerance = self.kernel_tolerance(dtype, scale)
        if tolerance is None:
            self.add(name, 0, old.size, 0.0)
            return
        row_factors, pattern = scale.kernel_factors(block.row, block.rows)
        old, new = np.ascontiguousarray(old), np.ascontiguousarray(new)
        checked, bad, worst = kernel.backend_for(old.dtype.name).check_values(
            old=old,
            new=new,
            count=block.rows * block.width,
            row_width=max(block.width, 1),
            scalar=scale.scalar,
            row_factors=row_factors,
            pattern=pattern,
            unit=tolerance[0],
            floor=tolerance[1],
        )
        self.add(name, checked, bad, worst)

    def unit(self, dtype: str, exact: bool) -> float:
        """The relative allowance: none for exact products, else one rounding to `dtype`
        plus the compute dtype's error in forming f·old."""
        return 0.0 if exact else UNIT_ROUNDOFF[dtype] + 3 * self.unit_compute

    def kernel_tolerance(self, dtype: str, scale: TensorScale) -> tuple[float, float] | None:
        """(unit, floor) of the allowance |new|·unit + floor as the C kernel takes them, or
        None when a factor is not finite and positive (the numpy check fails those)."""
        factors = [np.asarray(scale.scalar), *scale.vectors.values()]
        if not all(np.all(np.isfinite(f)) and np.all(f > 0) for f in factors):
            return None
        return self.unit(dtype, scale.is_power_of_two), SUBNORMAL_SPACING[dtype]

    def add(self, name: str, checked: int, bad: int, worst: float) -> None:
        """Count a kernel's findings (from any thread)."""
        with self._lock:
            self.checked += checked
            if bad:
                self.failures[name] = self.failures.get(name, 0) + bad
            if math.isfinite(worst):  # as in the numpy check: an Inf share is a failure
                self.worst = max(self.worst, worst)

    def check(
        self,
        name: str,
        dtype: str,
        factor: float | npt.NDArray[np.float64],
        exact: bool,
        old: FloatArray,
        new: FloatArray,
    ) -> None:
        """`factor` is a scalar or one value per element; `exact`: all powers of two."""
        if not np.all(np.isfinite(factor)) or not np.all(np.asarray(factor) > 0):
            self.add(name, 0, old.size, 0.0)
            return
        unit, floor = self.unit(dtype, exact), SUBNORMAL_SPACING[dtype]
        self.add(name, *check_shares(old.ravel(), new.ravel(), factor, unit, floor))

    def describe(self) -> str:
        if self.failures:
            found = ", ".join(f"{name} ({count} values)" for name, count in self.failures.items())
            return f"values not equal to original × planned factor: {found}"
        if self.worst == 0.0:
            return f"all {self.checked:,} values are exactly original × planned factor"
        return (
            f"all {self.checked:,} values equal original × planned factor rounded once "
            f"(worst {self.worst:.2g} of the rounding allowance)"
        )


def verify_tensors(
    original: Checkpoint,
    rewritten: Checkpoint,
    label: str,
    scales: Mapping[str, TensorScale],
    compute: type[np.floating] | None = None,
    level: Level = "values_only",
) -> ChainVerification:
    """Every value of each named tensor is its original times the planned factor.
    `level`: what that shows for the structure the scales come from (see `declared_level`)."""
    if compute is None:
        dtypes = {original.info(name).dtype for name in scales}
        compute = np.float64 if dtypes == {"float64"} else np.float32
    reader = PairReader(original, rewritten, compute)
    elements = ElementCheck(compute)
    for name, scale in scales.items():
        dtype = original.info(name).dtype
        partials = reader.partials[name]
        if check_tensor_in_files(original, rewritten, name, scale, elements, partials):
            continue

        def compare(
            block: Block,
            old: FloatArray,
            new: FloatArray,
            name: str = name,
            dtype: str = dtype,
            scale: TensorScale = scale,
        ) -> None:
            elements.check_block(name, dtype, scale, block, old, new)

        reader.for_each_block(name, compare)
    return ChainVerification(
        label,
        "structural",
        not elements.failures,
        None,
        None,
        None,
        elements.describe(),
        reader.measured(),
        level=level,
    )


def check_tensor_in_files(
    original: Checkpoint,
    rewritten: Checkpoint,
    name: str,
    scale: TensorScale,
    elements: ElementCheck,
    partials: list[Partial],
) -> bool:
    """The element check of one tensor by the backend for its dtype, which reads both files
    itself in cache-sized pieces (numpy's blocks took eight passes over each: 2.8 s for
    2 GB with the C kernel's). False, having done nothing, where it does not apply: the
    dtype changed, a small tensor (measured exactly in float64 by the block path), or data
    not lying in a file."""
    info = original.info(name)
    if rewritten.info(name).dtype != info.dtype or info.numel < EXACT_BELOW:
        return False
    old_place, new_place = original.locate(name), rewritten.locate(name)
    if old_place is None or new_place is None:
        return False
    tolerance = elements.kernel_tolerance(info.dtype, scale)
    if tolerance is None:
        elements.add(name, 0, info.numel, 0.0)
        return True
    backend = kernel.backend_for(info.dtype)
    rows = info.shape[0] if info.shape else 1
    width = info.numel // rows
    itemsize = info.nbytes // info.numel
    per_task = max(1, chunking.KERNEL_TASK_ELEMENTS // width)
    starts = range(0, rows, per_task)
    scratch_bytes = max(1 << 20, width * itemsize)

    def check(row: int, scratch: tuple[ReadBuffer, ReadBuffer]) -> None:
        count = min(per_task, rows - row)
        skip = row * width * itemsize
        row_factors, pattern = scale.kernel_factors(row, count)
        try:
            found = backend.check_range(
                old_fd=old_place[0],
                old_offset=old_place[1] + skip,
                new_fd=new_place[0],
                new_offset=new_place[1] + skip,
                old_scratch=scratch[0],
                new_scratch=scratch[1],
                dtype_code=kernel.DTYPE_CODES[info.dtype],
                count=count * width,
                row_width=width,
                scalar=scale.scalar,
                row_factors=row_factors,
                pattern=pattern,
                unit=tolerance[0],
                floor=tolerance[1],
            )
        except EOFError:
            raise ended_early(new_place[2]) from None
        elements.add(name, found[0], found[1], found[2])
        # list.append is atomic under the GIL
        partials.append(Partial(*found[3:]))

    run_round_robin(starts, lambda: (read_buffer(scratch_bytes), read_buffer(scratch_bytes)), check)
    return True
