"""`rebalance`: apply the L2-optimal layer-wise shift, write a same-format copy, verify it."""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from weissi_cli import __version__
from weissi_cli.api.symmetries import (
    penalised_members,
    solve_group,
    statistics_pass,
    unbounded_hint,
)
from weissi_cli.api.verdict import guess_refusal, level_caveats, refusal_message
from weissi_cli.balance.analysis import ChainAnalysis, analyse_chain
from weissi_cli.balance.channelwise import (
    ChannelSolution,
    Squares,
    round_to_powers_of_two,
    solve,
)
from weissi_cli.balance.exact_pow2 import ExactLimits, exact_range
from weissi_cli.balance.layerwise import Shift, l2_penalty, pow2_shift, weissi_penalty
from weissi_cli.errors import ConsentError, StructureError, UsageError
from weissi_cli.headroom import measure_headroom
from weissi_cli.io import open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import is_16_bit
from weissi_cli.io.sharded import ShardedCheckpoint
from weissi_cli.ir import Chain, Structure
from weissi_cli.report.common import Source
from weissi_cli.report.rebalance import ChainResult, ChannelResult, RebalanceReport
from weissi_cli.report.symmetries import SymmetryGroup
from weissi_cli.rewrite import PendingOutput, check_output_path, input_files, write_rescaled
from weissi_cli.scales import (
    TensorScale,
    Vector,
    chain_channel_scales,
    from_symmetries,
    scale_record,
)
from weissi_cli.stats import TensorStats, compute_stats
from weissi_cli.structure import discover, is_approximate
from weissi_cli.structure.architectures import find_config
from weissi_cli.structure.source import StructureSource
from weissi_cli.threads import single_threaded_blas
from weissi_cli.verify import (
    ChainVerification,
    CheckAsWritten,
    Verification,
    combined_level,
    declared_level,
    is_probed,
    run_programs,
    verify_chain,
    verify_tensors,
)
from weissi_cli.verify_transformers import model_folder, require_transformers, run_transformers

ScalesMode = Literal["auto", "real", "pow2"]
SCALES_MODES: tuple[ScalesMode, ...] = ("auto", "real", "pow2")


def rebalance_checkpoint(
    path: Path,
    output: Path,
    spec: Path | StructureSource | None = None,
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
) -> RebalanceReport:
    """Write `output`, the rebalanced copy of `path`, only if verification passes.

    `extra_flags` are appended to the command a refusal suggests (the CLI's --json). A
    model folder in gives a model folder out (every other file copied). `verify_with=
    "transformers"` also runs both models with the architecture's own code; so does
    rebalancing an approximate symmetry (`allow_approximate`), to measure what it changed.
    When no scale differs from 1 nothing is written, unless `write_unchanged`.
    `hold_activations`: power-of-two scales never shrink a chain's hidden activations.
    """
    if scales not in SCALES_MODES:
        raise UsageError(f"--scales must be one of {', '.join(SCALES_MODES)}, not {scales!r}")
    if granularity not in ("layer", "channel"):
        raise UsageError(f"--granularity must be layer or channel, not {granularity!r}")
    if verify_with not in (None, "transformers"):
        raise UsageError(f"--verify-with takes transformers, not {verify_with!r}")
    folder = path.is_dir()
    with open_checkpoint(path) as checkpoint:
        written_format = "safetensors" if output_format == "safetensors" else checkpoint.format
        cleaned = check_output_path(checkpoint, output, force, output_format, folder=folder)
        source = StructureSource.of(spec, allow_approximate)
        structure = discover(checkpoint, source)
        approximate = [s.id for s in structure.symmetries if is_approximate(s)]
        config = find_config(checkpoint.path)
        if approximate and verify_with is None:
            verify_with = "transformers"
        not_run: list[str] = []
        traced = (
            source.spec is None and source.model is None and structure.origin.startswith("graph:")
        )
        if traced and config is not None and verify_with is None:
            # the architecture was traced from transformers' code: run that code on both
            # files, when both models fit in memory beside each other
            if fits_in_memory(checkpoint.file_bytes, copies=3):
                verify_with = "transformers"
            else:
                not_run.append(
                    f"{path.name} ({checkpoint.file_bytes / 2**30:.1f} GiB) is too large to load "
                    "twice in this machine's memory, so the architecture's own code was not run "
                    "on it: pass --verify-with transformers to run it anyway"
                )
        if verify_with is not None:
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
        plans = [
            _plan(
                chain,
                checkpoint,
                before,
                squares,
                scales,
                include_bias,
                granularity,
                hold_activations,
            )
            for chain in structure.chains
        ]
        if hold_activations and not any(plan.mode == "pow2" for plan in plans):
            raise UsageError(
                f"{path}: --hold-activations applies to power-of-two scales (16-bit chains "
                "under --scales auto, or --scales pow2); these chains take real scales"
            )
        warnings += [
            f"{plan.analysis.chain.id} left unchanged: {plan.analysis.problem}"
            for plan in plans
            if plan.channel_scales is None
        ]
        if plans and all(plan.channel_scales is None for plan in plans):
            problems = "; ".join(f"{p.analysis.chain.id}: {p.analysis.problem}" for p in plans)
            raise StructureError(f"{path}: nothing can be rebalanced ({problems})")
        shapes = {info.name: info.shape for info in checkpoint.tensors}
        group, group_scales, group_mode = _solve_group(
            checkpoint, structure, include_bias, granularity, scales, threads, group_squares
        )
        tensor_scales: dict[str, TensorScale] = dict(group_scales)
        warnings += unbounded_hint(group, include_bias)
        warnings += _held_warnings(plans, group)
        for plan in plans:
            if plan.channel_scales is not None:
                tensor_scales.update(
                    from_symmetries(plan.analysis.chain.symmetries(), plan.channel_scales, shapes)
                )
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
        power_of_two = all(scale.is_power_of_two for scale in tensor_scales.values())
        record = {
            "tool_version": __version__,
            "source": path.name,
            "method": f"{granularity}-wise L2-optimal scale shift",
            "include_bias": include_bias,
            "scales": {name: scale_record(scale) for name, scale in tensor_scales.items()},
        }
        as_written = _check_as_written(checkpoint, plans, group_scales, tensor_scales)
        with single_threaded_blas():  # the writer's threads run the probes' products
            pending = write_rescaled(
                checkpoint, tensor_scales, output, record, output_format, folder, as_written, force
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
                    checkpoint, rewritten, plans, tensor_scales, before, include_bias, as_written
                )
                if group is not None:
                    group, group_checks = _verify_group(
                        checkpoint,
                        rewritten,
                        group,
                        group_scales,
                        include_bias,
                        as_written,
                        power_of_two,
                    )
                    checks += group_checks
            if checkpoint.format == "onnx":
                from weissi_cli.verify_onnx import run_onnx

                checks.append(
                    run_onnx(
                        checkpoint.path, pending.readable_path, power_of_two, checkpoint.file_bytes
                    )
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
        verification = Verification.combine(
            checks, level_caveats(level, structure, source.spec, path, ran, config is not None)
        )
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


# The file name transformers looks for, per format, when a folder holds one weights file.
LOADER_NAMES = {"safetensors": "model.safetensors", "torch": "pytorch_model.bin"}


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


def _mode_for(chain: Chain, checkpoint: Checkpoint, scales: str) -> str:
    if scales != "auto":
        return scales
    sixteen_bit = any(is_16_bit(checkpoint.info(name).dtype) for name in chain.tensor_names())
    return "pow2" if sixteen_bit else "real"


@dataclass(frozen=True)
class _Plan:
    """What to do with one chain: its analysis, and the scale of every channel of each of
    its symmetries (None: leave it alone)."""

    analysis: ChainAnalysis
    channel_scales: dict[str, Vector] | None
    mode: str  # "real" | "pow2" | "none"
    shift: Shift | None = None  # layer granularity
    solution: ChannelSolution | None = None  # channel granularity
    held: int = 0  # link scales or channels that float16 exactness kept closer to 1


def _plan(
    chain: Chain,
    checkpoint: Checkpoint,
    before: dict[str, TensorStats],
    squares: Mapping[str, Squares],
    scales: str,
    include_bias: bool,
    granularity: str,
    hold_activations: bool = False,
) -> _Plan:
    """`hold_activations`: with power-of-two scales, no hidden activation is scaled down."""
    analysis = analyse_chain(chain, before, include_bias=include_bias)
    if analysis.optimal is None:
        return _Plan(analysis, None, "none")
    mode = _mode_for(chain, checkpoint, scales)
    limits = exact_limits(checkpoint, chain.tensor_names()) if mode == "pow2" else None
    hold = hold_activations and mode == "pow2"
    if granularity == "channel":
        symmetries = chain.symmetries()
        mine = {name: squares[name] for name in chain.tensor_names() if name in squares}
        solution = solve(symmetries, mine)
        if mode == "pow2":
            floors = frozenset(s.id for s in symmetries) if hold else frozenset()
            solution = round_to_powers_of_two(solution, symmetries, mine, limits, floors)
        held = sum(solution.held.values())
        return _Plan(analysis, solution.scales, mode, solution=solution, held=held)
    shift = analysis.optimal
    held = 0
    if mode == "pow2":
        biases = analysis.bias_norms if include_bias else None
        if not limits and not hold:
            shift = pow2_shift(analysis.optimal, analysis.weight_norms, biases)
        else:
            bounds = _layer_bounds(chain, limits or ExactLimits({}))
            if hold:  # Π_l = 2^k_l multiplies layer l's outputs: k_l >= 0
                bounds = [(weight, (max(bias[0], 0.0), bias[1])) for weight, bias in bounds]
            shift = pow2_shift(analysis.optimal, analysis.weight_norms, biases, bounds)
            # Held: links where the same search without the bounds (its candidates are wider
            # than the unbounded default's) would have chosen differently.
            unlimited = [((-math.inf, math.inf), (-math.inf, math.inf))] * len(bounds)
            free = pow2_shift(analysis.optimal, analysis.weight_norms, biases, unlimited)
            held = sum(a != b for a, b in zip(free.log_links, shift.log_links, strict=True))
    return _Plan(analysis, chain_channel_scales(chain, shift), mode, shift=shift, held=held)


def exact_limits(checkpoint: Checkpoint, names: Iterable[str]) -> ExactLimits:
    """The float16 headroom of `names` (empty, and free, when none is float16)."""
    wanted = [name for name in dict.fromkeys(names) if checkpoint.info(name).dtype == "float16"]
    headroom = measure_headroom(checkpoint, wanted) if wanted else {}
    return ExactLimits(headroom)


def _layer_bounds(
    chain: Chain, limits: ExactLimits
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Per layer, the exponents its weight's and its bias's uniform factor may take."""
    return [
        (
            exact_range(limits.headroom.get(layer.weight)),
            exact_range(limits.headroom.get(layer.bias) if layer.bias else None),
        )
        for layer in chain.layers
    ]


def _held_warnings(plans: list[_Plan], group: SymmetryGroup | None) -> list[str]:
    """Where float16 exactness kept power-of-two scales short of the L2 optimum."""
    reason = (
        "scaling further would push the lowest set bit of some float16 values below 2^-24, "
        "float16's smallest step, and round them; --scales real moves them fully and rounds "
        "each value once instead"
    )
    found = [
        f"{plan.analysis.chain.id}: float16 exactness held {plan.held} "
        f"{'channel' if plan.solution is not None else 'link'} scale(s) closer to 1 ({reason})"
        for plan in plans
        if plan.held
    ]
    solution = None if group is None else (group.channel or group.layer)
    if solution is not None and solution.held:
        of = f"{len(solution.held)} of {len(solution.symmetries)} symmetries"
        what = (
            f"{sum(solution.held.values())} channel scale(s) in {of}"
            if solution.granularity == "channel"
            else f"the scales of {of}"
        )
        found.append(f"float16 exactness held {what} closer to 1 ({reason})")
    return found


def _check_as_written(
    checkpoint: Checkpoint,
    plans: list[_Plan],
    group_scales: Mapping[str, TensorScale],
    scales: Mapping[str, TensorScale],
) -> CheckAsWritten:
    """What the writer checks as it writes: the free symmetries' tensors and every
    rewritten chain's, with the probes of chains of linear layers; not chains with path
    norms (channel-wise), which verification measures reading both files anyway."""
    chains = [
        plan.analysis.chain
        for plan in plans
        if plan.channel_scales is not None
        and not (is_probed(plan.analysis.chain) and plan.solution is not None)
    ]
    names = [*group_scales, *(name for chain in chains for name in chain.tensor_names())]
    checked = {name: scales[name] for name in names if name in scales}
    return CheckAsWritten(checkpoint, checked, [c for c in chains if is_probed(c)])


def _verify_and_measure(
    original: Checkpoint,
    rewritten: Checkpoint,
    plans: list[_Plan],
    scales: Mapping[str, TensorScale],
    before: dict[str, TensorStats],
    include_bias: bool,
    as_written: CheckAsWritten,
) -> tuple[list[ChainResult], list[ChainVerification]]:
    results: list[ChainResult] = []
    checks: list[ChainVerification] = []
    for plan in plans:
        chain = plan.analysis.chain
        after = before  # a chain left alone was copied byte for byte
        check = None
        if plan.channel_scales is not None:
            check = verify_chain(
                original, rewritten, chain, scales, plan.solution is not None, as_written
            )
            checks.append(check)
            after = check.after
        results.append(_chain_result(plan, before, after, include_bias, check))
    return results, checks


def _chain_result(
    plan: _Plan,
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


def _solve_group(
    checkpoint: Checkpoint,
    structure: Structure,
    include_bias: bool,
    granularity: str,
    scales: str,
    threads: int,
    squares: Mapping[str, Squares],
) -> tuple[SymmetryGroup | None, dict[str, TensorScale], str]:
    """The free symmetries' scales (graph or spec), solved jointly from their axis squares."""
    solved = solve_group(checkpoint, structure, include_bias, granularity, threads, squares=squares)
    if solved is None or not structure.symmetries:
        return (solved[0] if solved else None), {}, "none"
    group, squares = solved
    mode = scales
    members = {m.tensor for s in structure.symmetries for m in s.members}
    if scales == "auto":
        mode = "pow2" if any(is_16_bit(checkpoint.info(n).dtype) for n in members) else "real"
    chosen = group.channel or group.layer
    if mode == "pow2":
        limits = exact_limits(checkpoint, members)
        chosen = round_to_powers_of_two(chosen, structure.symmetries, squares, limits)
        group = replace(group, channel=chosen) if group.channel else replace(group, layer=chosen)
    tensor_scales = from_symmetries(structure.symmetries, chosen.scales, _shapes(checkpoint))
    return group, tensor_scales, mode


def _verify_group(
    original: Checkpoint,
    rewritten: Checkpoint,
    group: SymmetryGroup,
    scales: Mapping[str, TensorScale],
    include_bias: bool,
    as_written: CheckAsWritten,
    power_of_two: bool,
) -> tuple[SymmetryGroup, list[ChainVerification]]:
    checks = (
        [
            verify_tensors(
                original,
                rewritten,
                "symmetries",
                scales,
                as_written=as_written,
                level=declared_level(*(s.origin for s in group.symmetries)),
            )
        ]
        if scales
        else []
    )
    program = getattr(original, "program", None)
    rewritten_program = getattr(rewritten, "program", None)
    if program is not None and rewritten_program is not None:
        checks.append(
            run_programs(program, rewritten_program, "program", power_of_two=power_of_two)
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


def _shapes(checkpoint: Checkpoint) -> dict[str, tuple[int, ...]]:
    return {info.name: info.shape for info in checkpoint.tensors}


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
