"""Verifying one rewritten chain: the value check, and for chains of linear layers random
probes through both files.

Every value of every rewritten tensor must be its original times the planned factor,
rounded once to the storage dtype (exactly, for power-of-two factors), and the planned
factors must form a valid shift of the structure: together they mean the function of
that structure is unchanged (see verify_values). Chains of linear layers are also run on
random probes through both files, to report how far the outputs moved; other chains
(convs, whose strides and pooling the files do not record) get the value check alone
("structural"). The same pass measures the rewritten tensors, so `rebalance` reads its
output only once after writing it.

Each result names its level (verification.LEVELS): what it proves. Only running the real
network (verify_outputs, verify_transformers, verify_module, verify_onnx) proves the network
unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import decode
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
from weissi_cli.scales import TensorScale
from weissi_cli.stats import TensorStats
from weissi_cli.threads import single_threaded_blas
from weissi_cli.verification import SEED, ChainVerification, declared_level
from weissi_cli.verify_outputs import float16_caveat
from weissi_cli.verify_pairs import Block, FloatArray, PairReader
from weissi_cli.verify_values import ElementCheck, verify_tensors

PROBES = 8


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
    elements = ElementCheck(compute)
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
    elements: ElementCheck,
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
