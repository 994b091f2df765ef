"""`rebalance`: apply the L2-optimal layer-wise shift, write a same-format copy, verify it."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from weissi_cli import __version__
from weissi_cli.api.plan import ChainPlan, PlanSettings, plan_rebalance
from weissi_cli.api.symmetries import (
    penalised_members,
    statistics_pass,
    unbounded_hint,
)
from weissi_cli.api.verdict import (
    UNREAD_FLAG,
    guess_refusal,
    level_caveats,
    refusal_message,
    unread_caveat,
    unread_refusal,
    unread_tensors,
)
from weissi_cli.balance.layerwise import l2_penalty, weissi_penalty
from weissi_cli.choices import Granularity, OutputFormat, Scales, VerifyWith, choose
from weissi_cli.errors import ConsentError, StructureError, UsageError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.exported import ExportedCheckpoint
from weissi_cli.io.onnx_file import OnnxCheckpoint
from weissi_cli.io.sharded import ShardedCheckpoint
from weissi_cli.io.torch_pickle import TorchCheckpoint, optimizer_state_message
from weissi_cli.ir import Chain, Structure
from weissi_cli.report.common import Source
from weissi_cli.report.rebalance import ChainResult, ChannelResult, RebalanceReport
from weissi_cli.report.symmetries import SymmetryGroup
from weissi_cli.scales import (
    TensorScale,
    scale_record,
)
from weissi_cli.stats import TensorStats, compute_stats
from weissi_cli.structure import discover, is_approximate
from weissi_cli.structure.architectures import find_config
from weissi_cli.structure.source import StructureSource
from weissi_cli.verification import (
    ChainVerification,
    Verification,
    combined_level,
    declared_level,
)
from weissi_cli.verify import verify_chain
from weissi_cli.verify_outputs import run_programs
from weissi_cli.verify_transformers import model_folder, require_transformers, run_transformers
from weissi_cli.verify_values import verify_tensors
from weissi_cli.writers import (
    PendingOutput,
    check_output_path,
    input_files,
    write_rescaled,
)


def rebalance_checkpoint(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    spec: str | os.PathLike[str] | StructureSource | None = None,
    assume_relu: bool = False,
    scales: str = "auto",
    include_bias: bool = False,
    force: bool = False,
    threads: int = 2,
    granularity: str = "layer",
    extra_flags: tuple[str, ...] = (),
    output_format: str = "same",
    allow_approximate: bool = False,
    verify_with: str | None = None,
    write_unchanged: bool = False,
    hold_activations: bool = False,
    drop_optimizer_state: bool = False,
    allow_unread: bool = False,
    hold_headroom: bool = False,
) -> RebalanceReport:
    """Write `output`, the rebalanced copy of `path`, only if verification passes.

    `extra_flags` are appended to the command a refusal suggests (the CLI's --json). A
    model folder in gives a model folder out (every other file copied). `verify_with=
    "transformers"` also runs both models with the architecture's own code; so does
    rebalancing an approximate symmetry (`allow_approximate`), to measure what it changed.
    When no scale differs from 1 nothing is written, unless `write_unchanged`.
    `hold_activations`: power-of-two scales never shrink a chain's hidden activations;
    `hold_headroom`: they never grow any activation (float16 overflows no sooner).
    A training checkpoint's optimizer state is refused unless `drop_optimizer_state`.
    With `--model`, tensors the traced forward pass does not read are refused unless
    `allow_unread`.
    """
    path, output = Path(path), Path(output)
    scales = choose(Scales, scales, "--scales")
    granularity = choose(Granularity, granularity, "--granularity")
    output_format = choose(OutputFormat, output_format, "--format")
    if verify_with is not None:
        verify_with = choose(VerifyWith, verify_with, "--verify-with")
    folder = path.is_dir()
    with open_checkpoint(path) as checkpoint:
        written_format = "safetensors" if output_format == "safetensors" else checkpoint.format
        cleaned = check_output_path(checkpoint, output, force, output_format, folder=folder)
        drop = _optimizer_state_to_drop(checkpoint, written_format, drop_optimizer_state)
        source = StructureSource.of(spec, allow_approximate)
        structure = discover(checkpoint, source)
        approximate = [s.id for s in structure.symmetries if is_approximate(s)]
        config = find_config(checkpoint.path)
        if approximate and verify_with is None:
            verify_with = "transformers"
        not_run: list[str] = []
        architecture = (
            source.spec is None
            and source.model is None
            and structure.origin.startswith(("graph:", "config:"))
        )
        if architecture and config is not None and verify_with is None:
            # the structure is the architecture's (traced from transformers' code, or the
            # registry entry proven equal to it): run that code on both files, when
            # transformers is there and both models fit in memory beside each other
            if not transformers_available():
                not_run.append(
                    "transformers is not installed, so the architecture's own code was not run "
                    "on the files: pip install 'weissi-cli[hf]' for a verdict on the real network"
                )
            elif fits_in_memory(checkpoint.file_bytes, copies=3):
                verify_with = "transformers"
            else:
                not_run.append(
                    f"{path.name} ({checkpoint.file_bytes / 2**30:.1f} GiB) is too large to load "
                    "twice in this machine's memory, so the architecture's own code was not run "
                    "on it: pass --verify-with transformers to run it anyway"
                )
        if verify_with == "none":
            if approximate:
                raise UsageError(
                    f"{path}: approximate symmetries change the function, so --allow-approximate "
                    "measures the change by running the model: drop --verify-with none"
                )
            verify_with = None
        elif verify_with is not None:
            require_transformers()
            if config is None:
                raise UsageError(
                    f"{path}: --verify-with transformers needs the config.json of a Hugging "
                    "Face model beside the checkpoint"
                )
        if structure.origin == "heuristic" and structure.refusals:
            raise StructureError(refusal_message(path, structure, config is not None))
        if structure.is_assumed and not assume_relu:
            raise ConsentError(
                _consent_message(path, output, scales, include_bias, force, extra_flags)
            )
        guesses = structure.guesses()
        if granularity == "channel" and guesses:
            raise StructureError(guess_refusal(path, guesses))
        if hold_activations and structure.symmetries:
            raise UsageError(
                f"{path}: --hold-activations keeps the hidden activations of chains of layers "
                "from shrinking; this structure's symmetries are not chains (a graph's or an "
                "architecture's): choose --scales real, or accept the change verification "
                "measures"
            )
        if not structure.chains and not structure.symmetries:
            raise StructureError(
                f"{path}: no chains of layers or scale symmetries were found, so there is nothing "
                "to rebalance; export the model with torch.export (a .pt2 gives the exact "
                "structure) or write a spec file (see "
                f"`weissi graph {shlex.quote(str(path))} --emit-spec`)"
            )
        names = [name for chain in structure.chains for name in chain.tensor_names()]
        # One pass: the chains' statistics and the squares both solvers need.
        before, squares, group_squares = statistics_pass(
            checkpoint, structure, include_bias, granularity, threads, names
        )
        warnings = [*cleaned, *checkpoint.notes, *structure.assumptions, *not_run]
        plan = plan_rebalance(
            checkpoint,
            structure,
            before,
            squares,
            group_squares,
            PlanSettings(scales, include_bias, granularity, hold_activations, hold_headroom),
            threads,
        )
        plans, group, group_mode = list(plan.chains), plan.group, plan.group_mode
        if hold_activations and not any(chain.mode == "pow2" for chain in plans):
            raise UsageError(
                f"{path}: --hold-activations applies to power-of-two scales (16-bit chains "
                "under --scales auto, or --scales pow2); these chains take real scales"
            )
        if hold_headroom and "pow2" not in {group_mode, *(chain.mode for chain in plans)}:
            raise UsageError(
                f"{path}: --hold-headroom applies to power-of-two scales (16-bit tensors under "
                "--scales auto, or --scales pow2); these symmetries take real scales"
            )
        warnings += [
            f"{chain.analysis.chain.id} left unchanged: {chain.analysis.problem}"
            for chain in plans
            if chain.channel_scales is None
        ]
        if plans and all(chain.channel_scales is None for chain in plans):
            problems = "; ".join(f"{p.analysis.chain.id}: {p.analysis.problem}" for p in plans)
            raise StructureError(f"{path}: nothing can be rebalanced ({problems})")
        tensor_scales = dict(plan.tensor_scales)
        group_scales = plan.group_scales
        warnings += unbounded_hint(group, include_bias)
        warnings += plan.held_warnings()
        if not tensor_scales and not write_unchanged:
            results = [_chain_result(plan, before, before, include_bias) for plan in plans]
            return RebalanceReport(
                source=Source.of(checkpoint, str(path)),
                output_path=str(output),
                output_format=written_format,
                written=False,
                scales=scales,
                granularity=granularity,
                include_bias=include_bias,
                chains=tuple(results),
                group=group,
                group_scales=group_mode,
                verification=Verification.combine([]),
                warnings=tuple(warnings),
                nothing_to_do=True,
            )
        unread, forward = unread_tensors(checkpoint, structure)
        if unread and tensor_scales and source.model is not None and not allow_unread:
            raise ConsentError(unread_refusal(path, unread, forward, f"rerun with {UNREAD_FLAG}"))
        power_of_two = all(scale.is_power_of_two for scale in tensor_scales.values())
        record = {
            "tool_version": __version__,
            "source": path.name,
            "method": f"{granularity}-wise L2-optimal scale shift",
            "include_bias": include_bias,
            "scales": {name: scale_record(scale) for name, scale in tensor_scales.items()},
        }
        pending = write_rescaled(
            checkpoint, tensor_scales, output, record, output_format, folder, force, drop
        )
        if drop:
            warnings.append(
                f"{output}: written without the optimizer state in "
                f"{', '.join(repr(key) for key in drop)} (--drop-optimizer-state)"
            )
        warnings += pending.notes
        if pending.left_out:
            warnings.append(
                f"not copied into {output}: other weight files of the input folder "
                f"({', '.join(map(str, pending.left_out))}); they hold the original weights"
            )
        try:
            with open_checkpoint(pending.readable_path) as rewritten:
                results, checks = _verify_and_measure(
                    checkpoint, rewritten, plans, tensor_scales, before, include_bias
                )
                if group is not None:
                    group, group_checks = _verify_group(
                        checkpoint,
                        rewritten,
                        group,
                        group_scales,
                        include_bias,
                        power_of_two,
                    )
                    checks += group_checks
            if isinstance(checkpoint, OnnxCheckpoint):
                from weissi_cli.verify_onnx import private_bytes, run_onnx

                nbytes = private_bytes(checkpoint.model)
                checks.append(
                    run_onnx(checkpoint.path, pending.readable_path, power_of_two, nbytes)
                )
            if source.model is not None:
                from weissi_cli.verify_module import run_module

                checks.append(run_module(source, checkpoint.path, pending.readable_path))
            if verify_with is not None and config is not None:
                run = _run_transformers(
                    checkpoint, pending, config.path, not approximate, written_format, power_of_two
                )
                checks.append(run)
                if approximate:
                    warnings.append(
                        f"{len(approximate)} approximate symmetries rebalanced "
                        f"(--allow-approximate): {run.detail}"
                    )
        except BaseException:
            pending.discard()
            raise
        level = combined_level(checks)
        ran = any(check.level in ("real_network", "approximate") for check in checks)
        caveats = level_caveats(level, structure, source.spec, path, ran, config is not None)
        if unread and tensor_scales:
            caveats.append(unread_caveat(unread, forward))
        verification = Verification.combine(checks, caveats)
        if verification.passed:
            pending.commit()
        else:
            pending.discard()
            warnings.append(f"verification failed: {output} was not written")
        return RebalanceReport(
            source=Source.of(checkpoint, str(path)),
            output_path=str(output),
            output_format=written_format,
            written=verification.passed,
            scales=scales,
            granularity=granularity,
            include_bias=include_bias,
            chains=tuple(results),
            group=group,
            group_scales=group_mode,
            verification=verification,
            warnings=tuple(warnings),
        )


def _optimizer_state_to_drop(
    checkpoint: Checkpoint, written_format: str, drop_optimizer_state: bool
) -> tuple[str, ...]:
    """The entries of a training checkpoint holding optimizer state, to leave out of a
    rewritten pickle; refused without consent (Adam's moments belong to the old weights)."""
    entries = checkpoint.optimizer_entries if isinstance(checkpoint, TorchCheckpoint) else ()
    if not entries or written_format != "torch":
        return ()
    if not drop_optimizer_state:
        raise UsageError(optimizer_state_message(checkpoint.path, entries))
    return entries


# The file name transformers looks for, per format, when a folder holds one weights file.
LOADER_NAMES = {"safetensors": "model.safetensors", "torch": "pytorch_model.bin"}


def transformers_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def fits_in_memory(nbytes: int, copies: int) -> bool:
    """Whether `copies` times `nbytes` fit in the memory the system has available."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return nbytes * copies < int(line.split()[1]) * 1024
    except OSError:
        pass
    return True


def _run_transformers(
    checkpoint: Checkpoint,
    pending: PendingOutput,
    config: Path,
    exact: bool,
    written_format: str,
    power_of_two: bool,
) -> ChainVerification:
    """Both models through transformers: the input's files, and the pending output's files
    under their final names (a single file under the name the loader looks for)."""
    if isinstance(checkpoint, ShardedCheckpoint):
        original = {path.name: path for path in input_files(checkpoint)}
        written = {
            final.name: temporary for temporary, final in pending.moves if final.name in original
        }
    else:
        if checkpoint.format not in LOADER_NAMES or written_format not in LOADER_NAMES:
            raise UsageError(
                f"{checkpoint.path}: --verify-with transformers loads safetensors and torch "
                f"pickle weights, not {checkpoint.format}"
            )
        original = {LOADER_NAMES[checkpoint.format]: checkpoint.path}
        written = {LOADER_NAMES[written_format]: pending.readable_path}
    with (
        model_folder(config, original) as before,
        model_folder(config, written) as after,
    ):
        return run_transformers(before, after, exact, power_of_two=power_of_two)


def _verify_and_measure(
    original: Checkpoint,
    rewritten: Checkpoint,
    plans: list[ChainPlan],
    scales: Mapping[str, TensorScale],
    before: dict[str, TensorStats],
    include_bias: bool,
) -> tuple[list[ChainResult], list[ChainVerification]]:
    results: list[ChainResult] = []
    checks: list[ChainVerification] = []
    for plan in plans:
        chain = plan.analysis.chain
        after = before  # a chain left alone was copied byte for byte
        check = None
        if plan.channel_scales is not None:
            check = verify_chain(original, rewritten, chain, scales, plan.solution is not None)
            checks.append(check)
            after = check.after
        results.append(_chain_result(plan, before, after, include_bias, check))
    return results, checks


def _chain_result(
    plan: ChainPlan,
    before: dict[str, TensorStats],
    after: dict[str, TensorStats],
    include_bias: bool,
    check: ChainVerification | None = None,
) -> ChainResult:
    """One chain's line of the report: the norms `after` holds (measured in the written
    file, or `before` for a chain that was copied unchanged)."""
    chain = plan.analysis.chain
    if plan.shift is not None:
        gammas, bias_scales = plan.shift.gammas, plan.shift.bias_scales
    else:  # what the written file shows, layer by layer
        gammas = tuple(_ratio(after, before, layer.weight) for layer in chain.layers)
        bias_scales = tuple(
            _ratio(after, before, layer.bias) if layer.bias else 1.0 for layer in chain.layers
        )
    solution = plan.solution
    return ChainResult(
        id=chain.id,
        origin=chain.origin,
        scales=plan.mode,
        layers=tuple(layer.prefix for layer in chain.layers),
        gammas=gammas,
        bias_scales=bias_scales,
        l2_before=_chain_l2(chain, before, include_bias),
        l2_after=_chain_l2(chain, after, include_bias),
        min_l2_penalty=plan.analysis.min_l2_penalty,
        weissi_before=_chain_weissi(chain, before),
        weissi_after=_chain_weissi(chain, after),
        skipped=plan.analysis.problem,
        channel=None
        if solution is None
        else ChannelResult(
            min_l2_penalty=solution.l2_after,
            sweeps=solution.sweeps,
            converged=solution.converged,
            tolerance=solution.tolerance,
            dead_units={
                key: tuple(item.dead) for key, item in solution.symmetries.items() if item.dead
            },
            unbounded=tuple(key for key, item in solution.symmetries.items() if item.unbounded),
            path_norm_before=check.path_norm_before if check else None,
            path_norm_after=check.path_norm_after if check else None,
        ),
    )


def _verify_group(
    original: Checkpoint,
    rewritten: Checkpoint,
    group: SymmetryGroup,
    scales: Mapping[str, TensorScale],
    include_bias: bool,
    power_of_two: bool,
) -> tuple[SymmetryGroup, list[ChainVerification]]:
    checks = (
        [
            verify_tensors(
                original,
                rewritten,
                "symmetries",
                scales,
                level=declared_level(*(s.origin for s in group.symmetries)),
            )
        ]
        if scales
        else []
    )
    if isinstance(original, ExportedCheckpoint) and isinstance(rewritten, ExportedCheckpoint):
        checks.append(
            run_programs(
                original.program,
                rewritten.program,
                "program",
                original.example_inputs(),
                power_of_two=power_of_two,
            )
        )
    after = checks[0].after if checks else {}
    penalised = set(
        penalised_members(
            original, Structure((), (), "graph", symmetries=group.symmetries), include_bias
        )
    )
    changed = math.fsum(after[n].fro_norm ** 2 for n in after if n in penalised)
    # A tensor the rewrite left alone keeps the squared norm the solve started from.
    known = group.layer.tensor_l2_before
    unchanged = [n for n in penalised if n not in after]
    missing = [n for n in unchanged if n not in known]
    stats = compute_stats(original, missing) if missing else {}
    changed += math.fsum(known[n] if n in known else stats[n].fro_norm ** 2 for n in unchanged)
    return replace(group, l2_after=changed), checks


def _ratio(after: dict[str, TensorStats], before: dict[str, TensorStats], name: str) -> float:
    old = before[name].fro_norm
    return after[name].fro_norm / old if old > 0 else 1.0


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
