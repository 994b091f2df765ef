"""`rebalance`: apply the L2-optimal layer-wise shift, write a same-format copy, verify it."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from weissi_cli import __version__
from weissi_cli.balance.analysis import ChainAnalysis, analyse_chain
from weissi_cli.balance.layerwise import Shift, l2_penalty, pow2_shift, weissi_penalty
from weissi_cli.errors import ConsentError, StructureError, UsageError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import is_16_bit
from weissi_cli.ir import Chain
from weissi_cli.report.common import Source
from weissi_cli.report.rebalance import ChainResult, RebalanceReport
from weissi_cli.rewrite import check_output_path, write_rescaled
from weissi_cli.scales import TensorScale, scale_record, shift_scales
from weissi_cli.stats import TensorStats, compute_stats
from weissi_cli.structure import discover
from weissi_cli.verify import ChainVerification, Verification, verify_chain

ScalesMode = Literal["auto", "real", "pow2"]
SCALES_MODES: tuple[ScalesMode, ...] = ("auto", "real", "pow2")


def rebalance_checkpoint(
    path: Path,
    output: Path,
    spec: Path | None = None,
    assume_relu: bool = False,
    scales: str = "auto",
    include_bias: bool = False,
    force: bool = False,
    threads: int = 2,
    granularity: str = "layer",
    extra_flags: tuple[str, ...] = (),
) -> RebalanceReport:
    """Write `output`, the rebalanced copy of `path`, only if verification passes.

    `extra_flags` are appended to the command a refusal suggests (the CLI's --json).
    """
    if scales not in SCALES_MODES:
        raise UsageError(f"--scales must be one of {', '.join(SCALES_MODES)}, not {scales!r}")
    if granularity != "layer":
        if granularity == "channel":
            raise UsageError(
                "--granularity channel (one scale per hidden unit) is not available in this "
                "version of weissi; --granularity layer is"
            )
        raise UsageError(f"--granularity must be layer or channel, not {granularity!r}")
    with open_checkpoint(path) as checkpoint:
        check_output_path(checkpoint, output, force)
        structure = discover(checkpoint, spec)
        if structure.is_assumed and not assume_relu:
            raise ConsentError(
                _consent_message(path, output, scales, include_bias, force, extra_flags)
            )
        if not structure.chains:
            raise StructureError(
                f"{path}: no chains of layers were found, so there is nothing to rebalance; "
                f"write a spec file (see `weissi graph {shlex.quote(str(path))} --emit-spec`)"
            )
        names = [name for chain in structure.chains for name in chain.tensor_names()]
        before = compute_stats(checkpoint, names, threads=threads)
        warnings = [*checkpoint.notes, *structure.assumptions]
        plans: list[tuple[ChainAnalysis, Shift | None, str]] = []
        for chain in structure.chains:
            analysis = analyse_chain(chain, before, include_bias=include_bias)
            if analysis.optimal is None:
                warnings.append(f"{chain.id} left unchanged: {analysis.problem}")
                plans.append((analysis, None, "none"))
                continue
            mode = _mode_for(chain, checkpoint, scales)
            shift = analysis.optimal
            if mode == "pow2":
                biases = analysis.bias_norms if include_bias else None
                shift = pow2_shift(analysis.optimal, analysis.weight_norms, biases)
            plans.append((analysis, shift, mode))
        if all(shift is None for _, shift, _ in plans):
            problems = "; ".join(f"{a.chain.id}: {a.problem}" for a, _, _ in plans)
            raise StructureError(f"{path}: nothing can be rebalanced ({problems})")
        shapes = {info.name: info.shape for info in checkpoint.tensors}
        tensor_scales: dict[str, TensorScale] = {}
        for analysis, planned, _ in plans:
            if planned is not None:
                tensor_scales.update(shift_scales(analysis.chain, planned, shapes))
        record = {
            "tool_version": __version__,
            "source": path.name,
            "method": "layer-wise L2-optimal scale shift",
            "include_bias": include_bias,
            "scales": {name: scale_record(scale) for name, scale in tensor_scales.items()},
        }
        pending = write_rescaled(checkpoint, tensor_scales, output, record)
        try:
            with open_checkpoint(pending.readable_path) as rewritten:
                results, checks = _verify_and_measure(
                    checkpoint, rewritten, plans, tensor_scales, before, include_bias
                )
        except BaseException:
            pending.discard()
            raise
        verification = Verification.combine(checks)
        if verification.passed:
            pending.commit()
        else:
            pending.discard()
            warnings.append(f"verification failed: {output} was not written")
        return RebalanceReport(
            source=Source.of(checkpoint, str(path)),
            output_path=str(output),
            output_format=checkpoint.format,
            written=verification.passed,
            scales=scales,
            include_bias=include_bias,
            chains=tuple(results),
            verification=verification,
            warnings=tuple(warnings),
        )


def _mode_for(chain: Chain, checkpoint: Checkpoint, scales: str) -> str:
    if scales != "auto":
        return scales
    sixteen_bit = any(is_16_bit(checkpoint.info(name).dtype) for name in chain.tensor_names())
    return "pow2" if sixteen_bit else "real"


def _verify_and_measure(
    original: Checkpoint,
    rewritten: Checkpoint,
    plans: list[tuple[ChainAnalysis, Shift | None, str]],
    scales: Mapping[str, TensorScale],
    before: dict[str, TensorStats],
    include_bias: bool,
) -> tuple[list[ChainResult], list[ChainVerification]]:
    results: list[ChainResult] = []
    checks: list[ChainVerification] = []
    for analysis, shift, mode in plans:
        chain = analysis.chain
        after = before  # a chain left alone was copied byte for byte
        if shift is not None:
            check = verify_chain(original, rewritten, chain, scales)
            checks.append(check)
            after = check.after
        results.append(
            ChainResult(
                id=chain.id,
                origin=chain.origin,
                scales=mode,
                layers=tuple(layer.prefix for layer in chain.layers),
                gammas=shift.gammas if shift else (1.0,) * chain.depth,
                bias_scales=shift.bias_scales if shift else (1.0,) * chain.depth,
                l2_before=_chain_l2(chain, before, include_bias),
                l2_after=_chain_l2(chain, after, include_bias),
                min_l2_penalty=analysis.min_l2_penalty,
                weissi_before=_chain_weissi(chain, before),
                weissi_after=_chain_weissi(chain, after),
                skipped=analysis.problem,
            )
        )
    return results, checks


def _chain_l2(chain: Chain, stats: dict[str, TensorStats], include_bias: bool) -> float | None:
    if not all(stats[name].is_finite for name in chain.tensor_names()):
        return None
    weights = [stats[layer.weight].fro_norm for layer in chain.layers]
    biases = [stats[layer.bias].fro_norm if layer.bias else 0.0 for layer in chain.layers]
    return l2_penalty(weights, biases if include_bias else None)


def _chain_weissi(chain: Chain, stats: dict[str, TensorStats]) -> float | None:
    layer_stats = [stats[layer.weight] for layer in chain.layers]
    if any(s.fro_norm == 0 or not s.is_finite for s in layer_stats):
        return None
    log_sum = math.fsum(math.log(s.fro_norm) for s in layer_stats)
    l1_sum = math.fsum(s.l1_direction or 0.0 for s in layer_stats)
    return weissi_penalty(log_sum, l1_sum, 1.0, 1.0)


def _consent_message(
    path: Path,
    output: Path,
    scales: str,
    include_bias: bool,
    force: bool,
    extra_flags: tuple[str, ...],
) -> str:
    command = ["weissi", "rebalance", str(path), "-o", str(output), "--assume-relu"]
    if scales != "auto":
        command += ["--scales", scales]
    if include_bias:
        command.append("--include-bias")
    if force:
        command.append("--force")
    command += extra_flags
    return (
        f"{path}: the structure was inferred from tensor names and shapes, and the activations "
        "are unknown; rebalancing changes the function unless they are ReLU-like. Review it with "
        f"`weissi graph {shlex.quote(str(path))}`, then either pin it with a spec file (--spec) or "
        f"proceed on the assumption: {shlex.join(command)}"
    )
