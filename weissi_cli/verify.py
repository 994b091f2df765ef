"""Evidence that a rewritten checkpoint computes the same function as the original.

Chains of linear layers are run on random probes through both files; the outputs must
agree within a first-order bound of the rounding the rewrite introduced (zero for
power-of-two scales). Other chains (convs, whose strides and pooling the files do not
record) get a structural check: every row of every rewritten tensor must carry the
planned factor, and the planned factors must form a valid shift. Either way the pass
also measures the rewritten tensors, so `rebalance` reads its output only once.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from weissi_cli.balance.layerwise import Shift
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import UNIT_ROUNDOFF, decode
from weissi_cli.ir import Chain
from weissi_cli.stats import EXACT_BELOW, ChunkReducer, Partial, TensorStats, combine
from weissi_cli.threads import run_round_robin, single_threaded_blas

FloatArray = npt.NDArray[np.floating]
PROBES = 8
SEED = 0
BLOCK_ELEMENTS = 1 << 19
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class ChainVerification:
    chain_id: str
    method: str  # "probe" | "structural"
    passed: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    bit_identical: bool | None
    detail: str
    after: dict[str, TensorStats] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Verification:
    method: str
    passed: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    probes: int
    chains: tuple[ChainVerification, ...]

    @staticmethod
    def combine(results: list[ChainVerification]) -> Verification:
        methods = sorted({result.method for result in results})
        abs_diffs = [r.max_abs_diff for r in results if r.max_abs_diff is not None]
        rel_diffs = [r.max_rel_diff for r in results if r.max_rel_diff is not None]
        return Verification(
            method="+".join(methods) if methods else "none",
            passed=all(result.passed for result in results),
            max_abs_diff=max(abs_diffs) if abs_diffs else None,
            max_rel_diff=max(rel_diffs) if rel_diffs else None,
            probes=PROBES if "probe" in methods else 0,
            chains=tuple(results),
        )


def verify_chain(
    original: Checkpoint, rewritten: Checkpoint, chain: Chain, shift: Shift
) -> ChainVerification:
    with single_threaded_blas():
        if all(layer.kind == "linear" for layer in chain.layers):
            return probe_chain(original, rewritten, chain, shift)
        return structural_check(original, rewritten, chain, shift)


def planned_factors(chain: Chain, shift: Shift) -> dict[str, float]:
    """Tensor -> factor: W_l by γ_l and b_l by the cumulative Π_l."""
    factors: dict[str, float] = {}
    for layer, gamma, bias_scale in zip(chain.layers, shift.gammas, shift.bias_scales, strict=True):
        factors[layer.weight] = gamma
        if layer.bias is not None:
            factors[layer.bias] = bias_scale
    return factors


@dataclass(frozen=True)
class _Block:
    name: str
    row: int
    rows: int
    width: int


class _BlockState:
    """One thread's buffers for reading block pairs, and what it measured."""

    def __init__(self) -> None:
        self.buffers = [bytearray(BLOCK_ELEMENTS * 8) for _ in range(2)]
        self.widened = [np.empty(BLOCK_ELEMENTS, np.float32) for _ in range(2)]
        self.reducer = ChunkReducer(BLOCK_ELEMENTS)
        self.partials: list[Partial] = []


class _PairReader:
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
        self, name: str, work: Callable[[_Block, FloatArray, FloatArray, FloatArray], None]
    ) -> None:
        """Call `work(block, old rows, new rows, |new rows|)` for every row block of `name`."""
        info = self.original.info(name)
        rows = info.shape[0] if info.shape else 1
        width = info.numel // rows if rows else 0
        per_block = max(1, BLOCK_ELEMENTS // max(width, 1))
        blocks = [
            _Block(name, row, min(per_block, rows - row), width)
            for row in range(0, rows, per_block)
        ]
        exact = info.numel < EXACT_BELOW

        def read_and_work(block: _Block, state: _BlockState) -> None:
            start, size = block.row * width, block.rows * width
            old = self._read(self.original, name, start, size, state.buffers[0], state.widened[0])
            new = self._read(self.rewritten, name, start, size, state.buffers[1], state.widened[1])
            state.partials.append(state.reducer.reduce(new, exact=exact))
            magnitudes = state.reducer.last_magnitudes
            if magnitudes is None:
                magnitudes = np.abs(new)
            shape = (block.rows, width)
            work(block, old.reshape(shape), new.reshape(shape), magnitudes.reshape(shape))

        def keep_partials(state: _BlockState) -> None:
            with self._lock:
                self.partials[name].extend(state.partials)

        run_round_robin(blocks, _BlockState, read_and_work, self.threads, finish=keep_partials)

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
        buffer: bytearray | None = None,
        widened: FloatArray | None = None,
    ) -> FloatArray:
        dtype = checkpoint.info(name).dtype
        raw = checkpoint.read_raw(name, start, count, buffer)
        return decode(raw, dtype, widened).astype(self.compute, copy=False)

    def measured(self) -> dict[str, TensorStats]:
        return {
            name: combine(self.rewritten.info(name), parts) for name, parts in self.partials.items()
        }


def _activate(values: npt.NDArray[np.floating], activation: str) -> npt.NDArray[np.floating]:
    if activation == "relu":
        rectified: npt.NDArray[np.floating] = np.maximum(values, 0, out=values)
        return rectified
    if activation == "leaky_relu":
        leaky: npt.NDArray[np.floating] = np.where(values >= 0, values, values * LEAKY_SLOPE)
        return leaky
    return values


def probe_chain(
    original: Checkpoint, rewritten: Checkpoint, chain: Chain, shift: Shift
) -> ChainVerification:
    """Run random probes through both versions of the chain, one row block at a time.

    Alongside, a bound on |after − before| is propagated (as one vector: the worst probe
    per unit, in float64 so it cannot overflow): each layer adds the rounding of its
    rewritten weights and of the arithmetic, and passes on the bound of its input through
    |W|; ReLU-like activations are 1-Lipschitz.
    """
    dtypes = {original.info(name).dtype for name in chain.tensor_names()}
    compute: type[np.floating] = np.float64 if dtypes == {"float64"} else np.float32
    unit_compute = UNIT_ROUNDOFF["float64" if compute is np.float64 else "float32"]
    reader = _PairReader(original, rewritten, compute)
    rng = np.random.default_rng(SEED)
    before: npt.NDArray[np.floating] = rng.standard_normal(
        (PROBES, chain.layers[0].in_features)
    ).astype(compute)
    after = before.copy()
    bound = np.zeros(chain.layers[0].in_features)
    for layer in chain.layers:
        unit_weights = 0.0 if shift.pow2 else UNIT_ROUNDOFF[original.info(layer.weight).dtype]
        unit = unit_weights + (layer.in_features + 2) * unit_compute
        carried = np.abs(after).max(axis=0).astype(np.float64) * unit + bound
        scale = float(carried.max()) or 1.0
        carried_scaled = (carried / scale).astype(compute)
        out_before = np.empty((PROBES, layer.out_features), compute)
        out_after = np.empty_like(out_before)
        out_bound = np.empty(layer.out_features)

        def forward(
            block: _Block,
            old: FloatArray,
            new: FloatArray,
            magnitudes: FloatArray,
            before: FloatArray = before,
            after: FloatArray = after,
            carried_scaled: FloatArray = carried_scaled,
            scale: float = scale,
            out_before: FloatArray = out_before,
            out_after: FloatArray = out_after,
            out_bound: npt.NDArray[np.float64] = out_bound,
        ) -> None:
            rows = slice(block.row, block.row + block.rows)
            out_before[:, rows] = before @ old.T
            out_after[:, rows] = after @ new.T
            out_bound[rows] = (magnitudes @ carried_scaled).astype(np.float64) * scale

        reader.for_each_block(layer.weight, forward)
        if layer.bias is not None:
            old_bias, new_bias = reader.vector(layer.bias)
            out_before += old_bias
            out_after += new_bias
            unit_bias = 0.0 if shift.pow2 else UNIT_ROUNDOFF[original.info(layer.bias).dtype]
            out_bound += np.abs(new_bias).astype(np.float64) * (unit_bias + unit_compute)
        before = _activate(out_before, chain.activation)
        after = _activate(out_after, chain.activation)
        bound = out_bound
    difference = np.abs(after.astype(np.float64) - before.astype(np.float64))
    allowed = 2.0 * bound
    max_abs = float(difference.max()) if difference.size else 0.0
    scale = float(np.abs(before).max()) if before.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    measured = reader.measured()
    if not (np.all(np.isfinite(allowed)) and math.isfinite(max_abs)):
        return ChainVerification(
            chain.id,
            "probe",
            False,
            None,
            None,
            None,
            "inconclusive: the probe outputs or the rounding bound are not finite",
            measured,
        )
    passed = bool(np.all(difference <= allowed))
    if max_abs == 0.0:
        outcome = "outputs bit-identical"
    else:
        worst = float((difference / np.maximum(allowed, 1e-300)).max())
        outcome = f"max |Δ| = {max_abs:.3g}, {worst:.2g} of the bound from rounding"
    return ChainVerification(
        chain.id,
        "probe",
        passed,
        max_abs,
        max_rel if math.isfinite(max_rel) else None,
        max_abs == 0.0,
        f"{PROBES} random probes through {chain.depth} layers: {outcome}",
        measured,
    )


def structural_check(
    original: Checkpoint, rewritten: Checkpoint, chain: Chain, shift: Shift
) -> ChainVerification:
    """Every row of each rewritten tensor carries its planned factor; the factors form a shift."""
    planned = planned_factors(chain, shift)
    reader = _PairReader(original, rewritten, np.float64)
    worst = 0.0
    failures: list[str] = []
    for name, factor in planned.items():
        tolerance = 8 * UNIT_ROUNDOFF[original.info(name).dtype]
        deviations: list[float] = []

        def compare(
            block: _Block,
            old: FloatArray,
            new: FloatArray,
            magnitudes: FloatArray,
            factor: float = factor,
            deviations: list[float] = deviations,
        ) -> None:
            old_sq = np.einsum("ij,ij->i", old, old)
            new_sq = np.einsum("ij,ij->i", new, new)
            live = old_sq > 0
            if np.any(live):
                ratios = np.sqrt(new_sq[live] / old_sq[live])
                deviations.append(float(np.max(np.abs(ratios / factor - 1.0))))
            if np.any(new_sq[~live] != 0):
                deviations.append(math.inf)  # a zero row cannot become non-zero under scaling

        reader.for_each_block(name, compare)
        deviation = max(deviations, default=0.0)
        worst = max(worst, deviation)
        if not deviation <= tolerance:
            failures.append(f"{name} (rows off by up to {deviation:.3g})")
    product = math.prod(shift.gammas)
    if abs(product - 1.0) > 1e-12:
        failures.append(f"the layer scales multiply to {product!r}, not 1")
    passed = not failures
    detail = (
        f"every row of {len(planned)} tensors carries its planned factor (max relative deviation "
        f"{worst:.3g}); layer scales multiply to 1"
        if passed
        else "mismatch: " + "; ".join(failures)
    )
    return ChainVerification(
        chain.id, "structural", passed, None, worst, None, detail, reader.measured()
    )
