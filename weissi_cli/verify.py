"""Evidence that a rewritten checkpoint computes the same function as the original.

Every value of every rewritten tensor must be its original times the planned factor,
rounded once to the storage dtype (exactly, for power-of-two factors), and the planned
factors must form a valid shift of the structure: together they mean the function of
that structure is unchanged. Chains of linear layers are also run on random probes
through both files, to report how far the outputs moved; other chains (convs, whose
strides and pooling the files do not record) get the element check alone ("structural").
The same pass measures the rewritten tensors, so `rebalance` reads its output only once.

Each result names its level (LEVELS): what it proves. Only running the real network (an
exported program, the architecture's own code) proves the network unchanged.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from weissi_cli import kernel
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, TensorInfo, ended_early, read_buffer
from weissi_cli.io.dtypes import UNIT_ROUNDOFF, decode, raw_numpy_dtype
from weissi_cli.ir import Chain, Layer
from weissi_cli.probes import (
    ProbeInputs,
    activate,
    output_change,
    probe_inputs,
    round_to,
    storage_of,
    subnormals,
)
from weissi_cli.scales import NO_FACTORS, TensorScale
from weissi_cli.stats import (
    EXACT_BELOW,
    KERNEL_TASK_ELEMENTS,
    ChunkReducer,
    Partial,
    TensorStats,
    combine,
)
from weissi_cli.threads import run_round_robin, single_threaded_blas

FloatArray = npt.NDArray[np.floating]
PROBES = 8
SEED = 0
BLOCK_ELEMENTS = 1 << 19

# What a verification proves, strongest first:
# - real_network: the real network (an exported program, the architecture's own code, a
#   traced model's module) was run on both checkpoints and gave the same outputs;
# - declared_structure: the rewrite leaves the declared structure's function unchanged (a
#   spec file, or names and shapes the user consented to): probes ran through that
#   structure, not through the real network;
# - values_only: every rewritten value is its original times the planned factor; nothing
#   about the function was run;
# - approximate: approximate symmetries were rebalanced; the change was measured, not
#   ruled out.
Level = Literal["real_network", "declared_structure", "values_only", "approximate"]
LEVELS: tuple[Level, ...] = ("real_network", "declared_structure", "values_only", "approximate")


@dataclass(frozen=True)
class ChainVerification:
    chain_id: str
    method: str  # "probe" | "structural" | "run" | "transformers"
    passed: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    bit_identical: bool | None
    detail: str
    after: dict[str, TensorStats] = field(default_factory=dict, compare=False, repr=False)
    # Σ over input-output paths of Π |w| (ReLU chains of linear layers), which no scale
    # symmetry changes: reported when asked for, from both files, in float64.
    path_norm_before: float | None = None
    path_norm_after: float | None = None
    # What it proves. A run of the real network covers the whole rewrite: whoever runs one
    # (exported programs, transformers, a traced module) sets "real_network".
    level: Level = "values_only"
    caveat: str = ""  # what this result leaves open (float16 subnormals, ...)
    probes: int = 0  # inputs run through both versions


@dataclass(frozen=True)
class Verification:
    method: str
    passed: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    probes: int
    chains: tuple[ChainVerification, ...]
    level: Level = "values_only"
    caveats: tuple[str, ...] = ()  # what the user must still check, one line each

    @staticmethod
    def combine(results: list[ChainVerification], caveats: Sequence[str] = ()) -> Verification:
        """One verdict for a rewrite: `caveats` say what its level leaves to the user."""
        methods = sorted({result.method for result in results})
        abs_diffs = [r.max_abs_diff for r in results if r.max_abs_diff is not None]
        rel_diffs = [r.max_rel_diff for r in results if r.max_rel_diff is not None]
        own = [r.caveat for r in results if r.caveat]
        return Verification(
            method="+".join(methods) if methods else "none",
            passed=all(result.passed for result in results),
            max_abs_diff=max(abs_diffs) if abs_diffs else None,
            max_rel_diff=max(rel_diffs) if rel_diffs else None,
            probes=max((r.probes for r in results), default=0),
            chains=tuple(results),
            level=combined_level(results),
            caveats=tuple(dict.fromkeys([*caveats, *own])),
        )


def combined_level(results: Sequence[ChainVerification]) -> Level:
    """The level of a whole rewrite: approximate if anything was; else real_network when
    the real network ran (it computes everything the rewrite touched); else the weakest
    of the parts."""
    levels = {result.level for result in results}
    if "approximate" in levels:
        return "approximate"
    if "real_network" in levels:
        return "real_network"
    if "values_only" in levels or not levels:
        return "values_only"
    return "declared_structure"


def verify_chain(
    original: Checkpoint,
    rewritten: Checkpoint,
    chain: Chain,
    scales: Mapping[str, TensorScale],
    path_norm: bool = False,
) -> ChainVerification:
    """Check a rewritten chain against the planned tensor scales (identity where absent);
    with `path_norm`, also measure the path-norm of both versions (chains of linear layers)."""
    planned = {
        name: scales.get(name) or TensorScale(original.info(name).shape)
        for name in chain.tensor_names()
    }
    with single_threaded_blas():
        if is_probed(chain):
            return probe_chain(original, rewritten, chain, planned, path_norm)
        return structural_check(original, rewritten, chain, planned)


def is_probed(chain: Chain) -> bool:
    """Whether verification runs probes through the chain (reading both files itself), or
    checks its values alone."""
    return all(layer.kind == "linear" for layer in chain.layers)


@dataclass(frozen=True)
class Block:
    name: str
    row: int
    rows: int
    width: int


def row_blocks(name: str, info: TensorInfo) -> tuple[list[Block], int]:
    """A tensor's rows in blocks of about BLOCK_ELEMENTS values (at least one row each), and
    the row width."""
    rows = info.shape[0] if info.shape else 1
    width = info.numel // rows if rows else 0
    per_block = max(1, BLOCK_ELEMENTS // max(width, 1))
    blocks = [
        Block(name, row, min(per_block, rows - row), width) for row in range(0, rows, per_block)
    ]
    return blocks, width


class PairBuffers:
    """One thread's buffers for a block of each file (rows of `width`): raw, and decoded to
    float32."""

    def __init__(self, width: int) -> None:
        self.capacity = max(BLOCK_ELEMENTS, width)  # one row may be wider than a block
        self.buffers = [read_buffer(self.capacity * 8) for _ in range(2)]
        self.widened = [np.empty(self.capacity, np.float32) for _ in range(2)]


class _BlockState(PairBuffers):
    """PairBuffers, and what the thread measured of the rewritten side."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.reducer = ChunkReducer(self.capacity)
        self.partials: list[Partial] = []


class PairReader:
    """Row blocks of a tensor from both files, decoded, on two threads; measures the
    rewritten side as it goes."""

    def __init__(
        self,
        original: Checkpoint,
        rewritten: Checkpoint,
        compute: type[np.floating],
        threads: int = 2,
    ) -> None:
        self.original, self.rewritten, self.compute = original, rewritten, compute
        self.threads = threads
        self.partials: dict[str, list[Partial]] = defaultdict(list)
        self._lock = threading.Lock()

    def for_each_block(
        self, name: str, work: Callable[[Block, FloatArray, FloatArray], None]
    ) -> None:
        """Call `work(block, old rows, new rows)` for every row block of `name`."""
        info = self.original.info(name)
        blocks, width = row_blocks(name, info)
        exact = info.numel < EXACT_BELOW

        new_dtype = self.rewritten.info(name).dtype
        compiled = kernel.compiled if new_dtype in kernel.DTYPE_CODES and not exact else None

        def read_and_work(block: Block, state: _BlockState) -> None:
            start, size = block.row * width, block.rows * width
            old = self._read(self.original, name, start, size, state.buffers[0], state.widened[0])
            raw = self.rewritten.read_raw(name, start, size, state.buffers[1])
            new = decode(raw, new_dtype, state.widened[1]).astype(self.compute, copy=False)
            if compiled is not None:  # one fused pass over the stored bits
                # The values read_raw returned: a reader may hand back its own memory (a
                # torch pickle's tensor) instead of filling the buffer it was given.
                raw = np.ascontiguousarray(raw).view(raw_numpy_dtype(new_dtype))
                totals = compiled.reduce_chunk(
                    raw, kernel.DTYPE_CODES[new_dtype], size, 0, 1, kernel.NO_AXES, NO_FACTORS
                )
                state.partials.append(Partial(*totals))
            else:
                state.partials.append(state.reducer.reduce(new, exact=exact))
            shape = (block.rows, width)
            work(block, old.reshape(shape), new.reshape(shape))

        def keep_partials(state: _BlockState) -> None:
            with self._lock:
                self.partials[name].extend(state.partials)

        run_round_robin(
            blocks, lambda: _BlockState(width), read_and_work, self.threads, finish=keep_partials
        )

    def vector(self, name: str) -> tuple[FloatArray, FloatArray]:
        """A whole (small) tensor from both files, flattened."""
        info = self.original.info(name)
        old = self._read(self.original, name, 0, info.numel)
        new = self._read(self.rewritten, name, 0, info.numel)
        self.partials[name].append(
            ChunkReducer(new.size).reduce(new, exact=info.numel < EXACT_BELOW)
        )
        return old, new

    def _read(
        self,
        checkpoint: Checkpoint,
        name: str,
        start: int,
        count: int,
        buffer: ReadBuffer | None = None,
        widened: FloatArray | None = None,
    ) -> FloatArray:
        dtype = checkpoint.info(name).dtype
        raw = checkpoint.read_raw(name, start, count, buffer)
        return decode(raw, dtype, widened).astype(self.compute, copy=False)

    def measured(self) -> dict[str, TensorStats]:
        return {
            name: combine(self.rewritten.info(name), parts) for name, parts in self.partials.items()
        }


# The spacing of subnormals: the absolute rounding slack at the bottom of each range.
SUBNORMAL_SPACING = {
    "float64": 2.0**-1074,
    "float32": 2.0**-149,
    "float16": 2.0**-24,
    "bfloat16": 2.0**-133,
}


class _ElementCheck:
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
        """The C kernel checks float32 blocks in one pass in double (instead of eight numpy
        passes); numpy checks the rest, and non-finite or non-positive factors."""
        compiled = kernel.compiled
        if (
            compiled is not None
            and old.dtype == new.dtype == np.float32
            and old.flags.c_contiguous
            and new.flags.c_contiguous
            and (tolerance := self.kernel_tolerance(dtype, scale)) is not None
        ):
            checked, bad, worst = compiled.check_values(
                old,
                new,
                block.rows * block.width,
                max(block.width, 1),
                scale.scalar,
                *scale.kernel_factors(block.row, block.rows),
                *tolerance,
            )
            self.add(name, checked, bad, worst)
            return
        factor = scale.rows(block.row, block.rows)
        self.check(name, dtype, factor, scale.is_power_of_two, old, new, np.abs(new))

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
        magnitudes: FloatArray,
    ) -> None:
        """`magnitudes` (|new|) is overwritten: callers pass a buffer they are done with.
        `factor` is a scalar or one value per element; `exact`: all powers of two."""
        unit = self.unit(dtype, exact)
        if not np.all(np.isfinite(factor)) or not np.all(np.asarray(factor) > 0):
            with self._lock:
                self.failures[name] = self.failures.get(name, 0) + old.size
            return
        old, new, magnitudes = old.ravel(), new.ravel(), magnitudes.ravel()
        buffer = getattr(self._scratch, "buffer", None)
        if buffer is None or buffer.size < old.size:
            buffer = self._scratch.buffer = np.empty(max(old.size, BLOCK_ELEMENTS), self.compute)
        share = buffer[: old.size]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            np.multiply(old, np.asarray(factor, dtype=self.compute), out=share)
            np.subtract(new, share, out=share)
            np.abs(share, out=share)  # the deviation ...
            np.multiply(magnitudes, unit, out=magnitudes)
            magnitudes += SUBNORMAL_SPACING[dtype]  # ... and its allowance
            np.divide(share, magnitudes, out=share)
            worst = float(share.max()) if share.size else 0.0
            # NaN (from Inf or NaN values) fails the check like any excess.
            bad = 0 if worst <= 1.0 else int(np.count_nonzero(~(share <= 1.0)))
        with self._lock:
            self.checked += share.size
            if bad:
                self.failures[name] = self.failures.get(name, 0) + bad
            if math.isfinite(worst):
                self.worst = max(self.worst, worst)

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


def _compute_dtype(original: Checkpoint, chain: Chain) -> type[np.floating]:
    """float64 when the whole chain is stored in float64, float32 (exact for 16-bit) else."""
    dtypes = {original.info(name).dtype for name in chain.tensor_names()}
    return np.float64 if dtypes == {"float64"} else np.float32


def probe_chain(
    original: Checkpoint,
    rewritten: Checkpoint,
    chain: Chain,
    scales: Mapping[str, TensorScale],
    path_norm: bool = False,
) -> ChainVerification:
    """Check every rewritten value against its planned factor, and run probes through both
    versions of the chain (one row block at a time) to report how far the outputs moved.
    A 16-bit chain computes as its storage does: each layer's output rounded to it."""
    compute = _compute_dtype(original, chain)
    storage = storage_of({original.info(name).dtype for name in chain.tensor_names()})
    reader = PairReader(original, rewritten, compute)
    elements = _ElementCheck(compute)
    inputs = probe_inputs(chain.layers[0].in_features, compute, storage, PROBES, SEED)
    rows = inputs.values.shape[0]
    before: FloatArray = inputs.values.copy()
    after = before.copy()
    slopes = _slope_values(original, rewritten, chain, compute)
    small = 0
    # path-norm vectors: |W_l| ... |W_1| 1, for the original and the rewritten chain
    paths_before = np.ones(chain.layers[0].in_features)
    paths_after = np.ones(chain.layers[0].in_features)
    for index, layer in enumerate(chain.layers):
        out_before = np.empty((rows, layer.out_features), compute)
        out_after = np.empty_like(out_before)
        next_paths_before = np.empty(layer.out_features)
        next_paths_after = np.empty(layer.out_features)
        dtype = original.info(layer.weight).dtype

        def forward(
            block: Block,
            old: FloatArray,
            new: FloatArray,
            before: FloatArray = before,
            after: FloatArray = after,
            out_before: FloatArray = out_before,
            out_after: FloatArray = out_after,
            layer: Layer = layer,
            dtype: str = dtype,
            paths: tuple[npt.NDArray[np.float64], ...] = (
                paths_before,
                paths_after,
                next_paths_before,
                next_paths_after,
            ),
        ) -> None:
            rows = slice(block.row, block.row + block.rows)
            out_before[:, rows] = before @ old.T
            out_after[:, rows] = after @ new.T
            if path_norm:
                paths[2][rows] = np.abs(old).astype(np.float64) @ paths[0]
                paths[3][rows] = np.abs(new).astype(np.float64) @ paths[1]
            elements.check_block(layer.weight, dtype, scales[layer.weight], block, old, new)

        reader.for_each_block(layer.weight, forward)
        out_before, out_after = round_to(out_before, storage), round_to(out_after, storage)
        if layer.bias is not None:
            old_bias, new_bias = reader.vector(layer.bias)
            bias_dtype = original.info(layer.bias).dtype
            bias_scale = scales[layer.bias]
            elements.check(
                layer.bias,
                bias_dtype,
                bias_scale.whole(),
                bias_scale.is_power_of_two,
                old_bias,
                new_bias,
                np.abs(new_bias),
            )
            out_before = round_to(out_before + old_bias, storage)
            out_after = round_to(out_after + new_bias, storage)
        if index + 1 < chain.depth:  # the chain's output is the last layer's, not activated
            before = activate(out_before, chain.activation, chain.slope, slopes[index][0])
            after = activate(out_after, chain.activation, chain.slope, slopes[index][1])
            small += subnormals(before, storage)
        else:
            before, after = out_before, out_after
        paths_before, paths_after = next_paths_before, next_paths_after
    paths = (paths_before, paths_after) if path_norm else None
    scaled = [scales[n] for n in chain.tensor_names() if not scales[n].is_identity]
    power_of_two = all(scale.is_power_of_two for scale in scaled)
    return _probe_report(
        chain,
        elements,
        before,
        after,
        reader.measured(),
        paths,
        inputs,
        _Arithmetic(storage, small, power_of_two),
    )


@dataclass(frozen=True)
class _Arithmetic:
    """How the probes computed: the 16-bit storage they rounded to (None: the compute
    dtype's own arithmetic), how many hidden activations of the original were subnormal
    there, and whether every factor was a power of two."""

    storage: str | None = None
    subnormal: int = 0
    power_of_two: bool = False


def _slope_values(
    original: Checkpoint, rewritten: Checkpoint, chain: Chain, compute: type[np.floating]
) -> list[tuple[FloatArray | None, FloatArray | None]]:
    """Per hidden space, a PReLU's slopes as each file stores them (never rescaled: both
    must be equal), or (None, None)."""
    found: list[tuple[FloatArray | None, FloatArray | None]] = []
    for index in range(chain.depth - 1):
        if index >= len(chain.slopes):
            found.append((None, None))
            continue
        name = chain.slopes[index]
        pair = tuple(
            decode(file.read_all(name).reshape(-1), file.info(name).dtype).astype(compute)
            for file in (original, rewritten)
        )
        found.append((pair[0], pair[1]))
    return found


def _probe_report(
    chain: Chain,
    elements: _ElementCheck,
    before: FloatArray,
    after: FloatArray,
    measured: dict[str, TensorStats],
    paths: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None,
    inputs: ProbeInputs | None = None,
    arithmetic: _Arithmetic | None = None,
) -> ChainVerification:
    """The verdict on a chain from its value check and the probes' outputs through both
    versions (`before`, `after`), with the path-norm vectors when they were measured."""
    if inputs is None:
        inputs = ProbeInputs(before, (1.0,), before.shape[0])
    arithmetic = arithmetic or _Arithmetic()
    max_abs, max_rel = output_change(before, after, inputs)
    problems = [elements.describe()] if elements.failures else []
    if np.all(np.isfinite(before)) and not math.isfinite(max_abs):
        problems.append("the rewritten chain's outputs are not finite (overflow?)")
    storage = arithmetic.storage
    where = f"{inputs.describe()} through {chain.depth} layers"
    if storage is not None:
        where += f" in {storage} arithmetic (each layer's output rounded to {storage})"
    if arithmetic.subnormal:
        where += f", {arithmetic.subnormal:,} hidden activations subnormal"
    if max_abs == 0.0:
        outcome = "outputs bit-identical on these probes"
    else:
        outcome = f"outputs moved by at most {max_abs:.3g} ({max_rel:.2g} of their largest)"
    detail = "; ".join(problems) if problems else f"{elements.describe()}; {where}: {outcome}"
    caveat = ""
    if storage == "float16" and arithmetic.power_of_two:
        caveat = float16_caveat(max_abs, max_rel, arithmetic.subnormal, "these probes", True)
    return ChainVerification(
        chain.id,
        "probe",
        not problems,
        max_abs if math.isfinite(max_abs) else None,
        max_rel if math.isfinite(max_rel) else None,
        max_abs == 0.0,
        detail,
        measured,
        math.fsum(paths[0].tolist()) if paths else None,
        math.fsum(paths[1].tolist()) if paths else None,
        level="declared_structure",
        caveat=caveat,
        probes=inputs.values.shape[0],
    )


def float16_caveat(
    max_abs: float, max_rel: float, subnormal: int | None, inputs: str, chains: bool = False
) -> str:
    """What power-of-two scales leave open in float16, and the choices. `subnormal`: how
    many activations were subnormal on `inputs` (None: not counted); `chains`: the scales
    are a chain's, which --hold-activations can hold."""
    found = (
        f"on {inputs} the outputs stayed bit-identical"
        if max_abs == 0.0
        else f"on {inputs} the outputs moved by up to {max_abs:.3g} ({max_rel:.2g} of their "
        "largest)"
    )
    if subnormal is not None:
        found += f" with {subnormal:,} subnormal activations"
    choices = "choose --scales real (each rescaled weight rounded once)"
    if chains:
        choices += ", or --hold-activations (no 16-bit activation scaled down)"
    return (
        "float16 activations below 2^-14 are subnormal and round differently once a "
        f"power-of-two scale moves them: {found}; other inputs with small activations can "
        f"move them more. Accept that, or {choices}"
    )


def structural_check(
    original: Checkpoint,
    rewritten: Checkpoint,
    chain: Chain,
    scales: Mapping[str, TensorScale],
) -> ChainVerification:
    """The value check alone, for chains whose forward pass the files do not determine: with
    the chain's symmetries, it shows the declared chain's function unchanged."""
    compute = _compute_dtype(original, chain)
    return verify_tensors(
        original, rewritten, chain.id, scales, compute, declared_level(chain.origin)
    )


def declared_level(*origins: str) -> Level:
    """What a value check shows for symmetries of these origins: that the function of a
    structure declared by a spec or consented to (a guess) is unchanged; for a graph's or
    an architecture's, which stand for the real network, only values until it runs."""
    if origins and all(origin in ("spec", "heuristic") for origin in origins):
        return "declared_structure"
    return "values_only"


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
    elements = _ElementCheck(compute)
    for name, scale in scales.items():
        dtype = original.info(name).dtype
        partials = reader.partials[name]
        if _check_tensor_in_kernel(original, rewritten, name, scale, elements, partials):
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


def _check_tensor_in_kernel(
    original: Checkpoint,
    rewritten: Checkpoint,
    name: str,
    scale: TensorScale,
    elements: _ElementCheck,
    partials: list[Partial],
) -> bool:
    """The element check of one tensor by the C kernel, which reads both files itself in
    cache-sized pieces (numpy took eight passes over each block: 2.8 s for 2 GB). False,
    having done nothing, where it does not apply: no kernel, another dtype, a small tensor
    (measured exactly in float64 by the numpy path), or data not lying in a file."""
    info = original.info(name)
    compiled = kernel.compiled
    if (
        compiled is None
        or info.dtype not in kernel.DTYPE_CODES
        or rewritten.info(name).dtype != info.dtype
        or info.numel < EXACT_BELOW
    ):
        return False
    old_place, new_place = original.locate(name), rewritten.locate(name)
    if old_place is None or new_place is None:
        return False
    tolerance = elements.kernel_tolerance(info.dtype, scale)
    if tolerance is None:
        elements.add(name, 0, info.numel, 0.0)
        return True
    rows = info.shape[0] if info.shape else 1
    width = info.numel // rows
    itemsize = info.nbytes // info.numel
    per_task = max(1, KERNEL_TASK_ELEMENTS // width)
    starts = range(0, rows, per_task)
    scratch_bytes = max(1 << 20, width * itemsize)

    def check(row: int, scratch: tuple[ReadBuffer, ReadBuffer]) -> None:
        count = min(per_task, rows - row)
        skip = row * width * itemsize
        try:
            checked, bad, worst, *totals = compiled.check_range(
                old_place[0],
                old_place[1] + skip,
                new_place[0],
                new_place[1] + skip,
                scratch[0],
                scratch[1],
                kernel.DTYPE_CODES[info.dtype],
                count * width,
                width,
                scale.scalar,
                *scale.kernel_factors(row, count),
                *tolerance,
            )
        except EOFError:
            raise ended_early(new_place[2]) from None
        elements.add(name, checked, bad, worst)
        partials.append(Partial(*totals))  # list.append is atomic under the GIL

    run_round_robin(starts, lambda: (read_buffer(scratch_bytes), read_buffer(scratch_bytes)), check)
    return True


# Largest output change, relative to the largest output, that running both programs may show:
# the rewrite rounds every scaled value once; a batch norm's eps adds a little more.
RUN_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 3e-2, "bfloat16": 3e-2}


def run_programs(
    original: Any,
    rewritten: Any,
    label: str,
    examples: tuple[tuple[Any, ...], dict[str, Any]] | None,
    probes: int = 4,
    power_of_two: bool = False,
) -> ChainVerification:
    """Run both exported programs on the recorded `examples` (kept apart from the programs,
    which are built without them: see io/pt2_program.py) and on random inputs shaped like
    them; a float16 program also on those inputs scaled down to 2^-20, whose activations
    reach float16's subnormal range. `power_of_two`: every factor was one (the caveat on
    float16 subnormals then applies)."""
    import torch

    from weissi_cli.probes import FLOAT16_INPUT_SCALES

    if examples is None:
        return ChainVerification(
            label,
            "run",
            True,
            None,
            None,
            None,
            "not run: the program records no example inputs",
            level="values_only",
        )
    args, kwargs = examples
    generator = torch.Generator().manual_seed(SEED)

    def like(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return torch.randn(value.shape, generator=generator, dtype=torch.float32).to(
                value.dtype
            )
        return value

    def scaled(value: Any, factor: float) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return (value.float() * factor).to(value.dtype)
        return value

    half = any(
        isinstance(v, torch.Tensor) and v.dtype == torch.float16 for v in [*args, *kwargs.values()]
    )
    inputs = [(list(args), dict(kwargs))] + [
        ([like(a) for a in args], {k: like(v) for k, v in kwargs.items()})
        for _ in range(probes - 1)
    ]
    if half:
        inputs += [
            ([scaled(a, factor) for a in given], {k: scaled(v, factor) for k, v in named.items()})
            for factor in FLOAT16_INPUT_SCALES[1:]
            for given, named in inputs[:probes]
        ]
    worst_abs, worst_rel, dtype = 0.0, 0.0, "float32"
    with torch.no_grad():
        before_module, after_module = original.module(), rewritten.module()
        for given, named in inputs:
            before = [t for t in _tensors(before_module(*given, **named)) if t.is_floating_point()]
            after = [t for t in _tensors(after_module(*given, **named)) if t.is_floating_point()]
            for old, new in zip(before, after, strict=True):
                dtype = str(old.dtype).removeprefix("torch.")
                difference = (
                    float((new.double() - old.double()).abs().max()) if old.numel() else 0.0
                )
                scale = float(old.double().abs().max()) if old.numel() else 0.0
                worst_abs = max(worst_abs, difference)
                worst_rel = max(worst_rel, difference / scale if scale > 0 else difference)
    tolerance = RUN_TOLERANCE.get(dtype, 1e-4)
    passed = math.isfinite(worst_abs) and worst_rel <= tolerance
    outcome = (
        "outputs bit-identical on these inputs"
        if worst_abs == 0.0
        else f"outputs moved by at most {worst_abs:.3g} ({worst_rel:.2g} of their largest, "
        f"allowed {tolerance:g})"
    )
    which = f"the recorded example and {probes - 1} random inputs shaped like it"
    if half:
        which += f" ({len(inputs)} with copies scaled down to 2^-20)"
    caveat = ""
    if power_of_two and dtype == "float16":
        caveat = float16_caveat(worst_abs, worst_rel, None, "these inputs")
    return ChainVerification(
        label,
        "run",
        passed,
        worst_abs if math.isfinite(worst_abs) else None,
        worst_rel if math.isfinite(worst_rel) else None,
        worst_abs == 0.0,
        f"ran both programs on {which}: {outcome}",
        level="real_network",
        caveat=caveat,
        probes=len(inputs),
    )


def _tensors(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []
