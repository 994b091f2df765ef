"""Evidence that a rewritten checkpoint computes the same function as the original.

Chains of linear layers are run on random probes through both files; the outputs must
agree within a first-order bound of the rounding the rewrite introduced (zero for
power-of-two scales). Other chains (convs, whose strides and pooling the files do not
record) get a structural check: every row of every rewritten tensor must carry the
planned factor, and the planned factors must form a valid shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.balance.layerwise import Shift
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import UNIT_ROUNDOFF, decode
from weissi_cli.ir import Chain

PROBES = 8
SEED = 0
BLOCK_ELEMENTS = 1 << 18
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
    if all(layer.kind == "linear" for layer in chain.layers):
        return probe_chain(original, rewritten, chain, shift)
    return structural_check(original, rewritten, chain, shift)


def _activate(values: npt.NDArray[np.floating], activation: str) -> npt.NDArray[np.floating]:
    if activation == "relu":
        rectified: npt.NDArray[np.floating] = np.maximum(values, 0, out=values)
        return rectified
    if activation == "leaky_relu":
        result: npt.NDArray[np.floating] = np.where(values >= 0, values, values * LEAKY_SLOPE)
        return result
    return values


def probe_chain(
    original: Checkpoint, rewritten: Checkpoint, chain: Chain, shift: Shift
) -> ChainVerification:
    """Run random probes through both versions of the chain, one row block at a time."""
    dtypes = {original.info(layer.weight).dtype for layer in chain.layers}
    compute = np.float64 if dtypes == {"float64"} else np.float32
    unit_compute = UNIT_ROUNDOFF["float64" if compute is np.float64 else "float32"]
    rng = np.random.default_rng(SEED)
    before: npt.NDArray[np.floating] = rng.standard_normal(
        (PROBES, chain.layers[0].in_features)
    ).astype(compute)
    after = before.copy()
    bound = np.zeros_like(before)  # first-order bound on |after − Π·before|
    exact = not shift.pow2
    for layer in chain.layers:
        info = original.info(layer.weight)
        unit = (UNIT_ROUNDOFF[info.dtype] if exact else 0.0) + (
            layer.in_features + 2
        ) * unit_compute
        rows_per_block = max(1, BLOCK_ELEMENTS // layer.in_features)
        out_before = np.empty((PROBES, layer.out_features), compute)
        out_after = np.empty_like(out_before)
        out_bound = np.empty_like(out_before)
        magnitude = np.abs(after) * unit + bound
        for row in range(0, layer.out_features, rows_per_block):
            rows = min(rows_per_block, layer.out_features - row)
            start, count = row * layer.in_features, rows * layer.in_features
            w_before = _block(original, layer.weight, start, count, compute).reshape(rows, -1)
            w_after = _block(rewritten, layer.weight, start, count, compute).reshape(rows, -1)
            out_before[:, row : row + rows] = before @ w_before.T
            out_after[:, row : row + rows] = after @ w_after.T
            out_bound[:, row : row + rows] = magnitude @ np.abs(w_after).T
        if layer.bias is not None:
            b_before = _block(original, layer.bias, 0, layer.out_features, compute)
            b_after = _block(rewritten, layer.bias, 0, layer.out_features, compute)
            out_before += b_before
            out_after += b_after
            out_bound += np.abs(b_after) * (unit if exact else unit_compute)
        before = _activate(out_before, chain.activation)
        after = _activate(out_after, chain.activation)
        bound = out_bound
    difference = np.abs(after.astype(np.float64) - before.astype(np.float64))
    allowed = 2.0 * bound.astype(np.float64)
    max_abs = float(difference.max()) if difference.size else 0.0
    scale = float(np.abs(before).max()) if before.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    passed = bool(np.all(difference <= allowed)) and math.isfinite(max_abs)
    worst = float((difference / np.maximum(allowed, 1e-300)).max()) if difference.size else 0.0
    if max_abs == 0.0:
        outcome = "outputs bit-identical"
    else:
        outcome = f"max |Δ| = {max_abs:.3g}, {worst:.2g} of the bound from rounding"
    detail = f"{PROBES} random probes through {chain.depth} layers: {outcome}"
    return ChainVerification(
        chain.id,
        "probe",
        passed,
        max_abs,
        max_rel if math.isfinite(max_rel) else None,
        max_abs == 0.0,
        detail,
    )


def _block(
    checkpoint: Checkpoint, name: str, start: int, count: int, compute: type[np.floating]
) -> npt.NDArray[np.floating]:
    info = checkpoint.info(name)
    values = decode(checkpoint.read_raw(name, start, count), info.dtype)
    return values.astype(compute, copy=False)


def structural_check(
    original: Checkpoint, rewritten: Checkpoint, chain: Chain, shift: Shift
) -> ChainVerification:
    """Every row of each rewritten tensor carries its planned factor; the factors form a shift."""
    planned = planned_factors(chain, shift)
    worst = 0.0
    failures: list[str] = []
    for name, factor in planned.items():
        info = original.info(name)
        tolerance = 8 * UNIT_ROUNDOFF[info.dtype]
        ratios = _row_ratios(original, rewritten, name)
        if ratios.size == 0:
            continue
        deviation = float(np.max(np.abs(ratios / factor - 1.0)))
        worst = max(worst, deviation)
        if not deviation <= tolerance:
            failures.append(f"{name} (rows off by up to {deviation:.3g})")
    gammas = shift.gammas
    product_error = abs(math.prod(gammas) - 1.0)
    if product_error > 1e-12:
        failures.append(f"the layer scales multiply to {math.prod(gammas)!r}, not 1")
    passed = not failures
    detail = (
        f"every row of {len(planned)} tensors carries its planned factor (max relative deviation "
        f"{worst:.3g}); layer scales multiply to 1"
        if passed
        else "mismatch: " + "; ".join(failures)
    )
    return ChainVerification(chain.id, "structural", passed, None, worst, None, detail)


def planned_factors(chain: Chain, shift: Shift) -> dict[str, float]:
    """Tensor -> factor: W_l by γ_l and b_l by the cumulative Π_l."""
    factors: dict[str, float] = {}
    for layer, gamma, bias_scale in zip(chain.layers, shift.gammas, shift.bias_scales, strict=True):
        factors[layer.weight] = gamma
        if layer.bias is not None:
            factors[layer.bias] = bias_scale
    return factors


def _row_ratios(original: Checkpoint, rewritten: Checkpoint, name: str) -> npt.NDArray[np.float64]:
    """sqrt(Σ new² / Σ old²) per row (per element for 1-D tensors), skipping zero rows."""
    info = original.info(name)
    rows = info.shape[0] if info.shape else 1
    width = info.numel // rows if rows else 0
    ratios: list[npt.NDArray[np.float64]] = []
    rows_per_block = max(1, BLOCK_ELEMENTS // max(width, 1))
    for row in range(0, rows, rows_per_block):
        count = min(rows_per_block, rows - row)
        old = _block(original, name, row * width, count * width, np.float64).reshape(count, width)
        new = _block(rewritten, name, row * width, count * width, np.float64).reshape(count, width)
        old_sq = np.einsum("ij,ij->i", old, old)
        new_sq = np.einsum("ij,ij->i", new, new)
        live = old_sq > 0
        ratios.append(np.sqrt(new_sq[live] / old_sq[live]))
    return np.concatenate(ratios) if ratios else np.empty(0)
