"""`check`: a CI gate — thresholds on tensors, chains and symmetries, one streaming pass per
checkpoint, over any number of checkpoints."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from weissi_cli.api.symmetries import SquaresToRead, solve_group
from weissi_cli.api.trend import CHECKPOINT_SUFFIXES, GLOB_CHARACTERS, factor_spread
from weissi_cli.balance.analysis import ChainAnalysis, analyse_chain
from weissi_cli.balance.factors import Squares
from weissi_cli.config import CheckSettings
from weissi_cli.errors import InputError, UsageError, WeissiError
from weissi_cli.io import detect_format, open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint, natural_key
from weissi_cli.ir import Structure
from weissi_cli.progress import phase
from weissi_cli.report.check import CheckError, CheckReport, CheckRun, RuleResult
from weissi_cli.report.common import Source
from weissi_cli.stats import TensorStats, axis_squares
from weissi_cli.stats_details import TensorDetails, compute_stats_and_details
from weissi_cli.structure import discover
from weissi_cli.structure.source import StructureSource

SHOWN_INDICES = 8

PathLike = str | os.PathLike[str]
SpecLike = str | os.PathLike[str] | StructureSource | None

# What to do about each rule's failure ({rebalance}: the command that fixes an imbalance).
FIXES = {
    "non-finite": "training diverged or a conversion overflowed: export again from the last "
    "checkpoint with finite weights",
    "max-abs": "find what grew this value (learning rate, weight decay, a conversion), or "
    "raise --max-abs",
    "max-norm": "this tensor grew past the limit: check its learning rate and weight decay, "
    "or raise --max-norm",
    "max-imbalance": "{rebalance} evens the layer norms without changing the function",
    "max-l2-ratio": "{rebalance} removes the slack without changing the function",
    "dead-units": "these units get no input or feed nothing: prune them, or look at the "
    "initialisation and learning rate",
    "fp16-overflow": "keep this tensor in float32 or bfloat16 (float32's range); float16 "
    "turns these values into Inf",
    "fp16-flush": "keep this tensor in float32 or bfloat16, or let a few values flush with "
    "--fp16-tolerance (they are below 2^-25 and round to 0 in float16)",
}


def check_checkpoint(
    path: PathLike,
    settings: CheckSettings | None = None,
    settings_file: PathLike | None = None,
    spec: SpecLike = None,
    threads: int = 2,
) -> CheckReport:
    """Check one checkpoint against `settings` (default: only the rules that always run,
    non-finite values and dead units as warnings) in one streaming pass over its tensors.

    `settings_file` is where the settings came from (shown in the reports); `spec` a
    structure spec file or a `StructureSource`. A rule that is asked for but cannot be
    evaluated (no chains, a degenerate chain, NaN in the tensors it needs) is a result with
    verdict `skip` and the reason, never a silent pass.
    """
    path = Path(path)
    settings = settings or CheckSettings()
    with phase(f"checking {path.name}"), open_checkpoint(path) as checkpoint:
        structure = discover(checkpoint, StructureSource.of(spec))
        solving = (
            settings.max_l2_ratio is not None or settings.max_imbalance is not None
        ) and bool(structure.symmetries)
        in_pass = {info.name for info in checkpoint.tensors if info.is_supported_float}
        wanted = (
            SquaresToRead.of(checkpoint, structure, False, "layer", in_pass) if solving else None
        )
        # The squares the symmetry rules solve from come from the same pass, except where
        # headroom counts put the pass on numpy: the kernel's squares are the ones solved
        # from everywhere else, and the reports stay the same to the last digit.
        squared = (
            {n: keep for n, keep in wanted.held.items() if n in in_pass}
            if wanted is not None and not settings.fp16_headroom
            else {}
        )
        stats, details, read = compute_stats_and_details(
            checkpoint, headroom=settings.fp16_headroom, threads=threads, squared=squared
        )
        results: list[RuleResult] = []
        for name in stats:
            results += _tensor_rules(stats[name], details[name], settings)
        rebalance = f"`weissi rebalance {path} -o OUT`"
        results += _structure_rules(structure, stats, settings, rebalance)
        if wanted is not None:
            rest = {n: keep for n, keep in wanted.held.items() if n not in squared}
            read = {**read, **(axis_squares(checkpoint, list(rest), threads, rest) if rest else {})}
            squares = wanted.assemble(checkpoint, stats, read, threads)
            results += _symmetry_rules(checkpoint, structure, stats, squares, settings, rebalance)
        return CheckReport(
            source=Source.of(checkpoint, str(path)),
            settings=settings,
            settings_file=str(settings_file) if settings_file is not None else None,
            results=tuple(results),
            warnings=(*checkpoint.notes, *structure.assumptions),
        )


def iter_checks(
    paths: Sequence[PathLike],
    settings: CheckSettings | None = None,
    settings_file: PathLike | None = None,
    spec: SpecLike = None,
    threads: int = 2,
) -> Iterator[CheckReport | CheckError]:
    """Check each checkpoint `paths` name (files, folders, glob patterns: see
    `expand_checkpoints`) in turn, yielding its report as soon as it is done. A checkpoint
    that cannot be read is yielded as a `CheckError` (and the others are still checked);
    with a single checkpoint the error is raised instead."""
    found = expand_checkpoints(paths)
    for path in found:
        try:
            yield check_checkpoint(path, settings, settings_file, spec, threads)
        except WeissiError as error:
            if len(found) == 1 or error.exit_code != 2:
                raise
            yield CheckError(str(path), str(error), error.exit_code)


def check_checkpoints(
    paths: Sequence[PathLike],
    settings: CheckSettings | None = None,
    settings_file: PathLike | None = None,
    spec: SpecLike = None,
    threads: int = 2,
) -> CheckRun:
    """`check_checkpoint` over every checkpoint `paths` name, as one record from which every
    report format is made (`to_junit`, `to_markdown`, `to_github`, `to_json`)."""
    return CheckRun(tuple(iter_checks(paths, settings, settings_file, spec, threads)))


def expand_checkpoints(paths: Sequence[PathLike]) -> list[Path]:
    """The checkpoints `paths` name, in order and each once: a file or model folder as it
    is; a glob pattern the shell did not expand (quoted in a CI file) as its matches; a
    folder that is not itself a checkpoint as the checkpoints directly inside it."""
    if isinstance(paths, str | os.PathLike):
        raise UsageError("give the checkpoints as a list of paths, not one string")
    if not paths:
        raise UsageError("give at least one checkpoint")
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        text = str(path)
        if not path.exists() and any(character in text for character in GLOB_CHARACTERS):
            matches = sorted(glob.glob(text), key=natural_key)
            if not matches:
                raise InputError(f"{text}: no file or folder matches this pattern")
            found += [Path(match) for match in matches]
        elif path.is_dir() and not _is_checkpoint(path):
            inside = _checkpoints_in(path)
            if not inside:
                raise InputError(
                    f"{path}: neither a checkpoint folder nor a folder holding checkpoints "
                    f"({', '.join(CHECKPOINT_SUFFIXES)} files or model folders)"
                )
            found += inside
        else:
            found.append(path)
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _is_checkpoint(path: Path) -> bool:
    try:
        detect_format(path)
    except InputError:
        return False
    return True


def _checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint files and model folders directly in `folder`; the shards of a sharded
    checkpoint through its index."""
    children = sorted(folder.iterdir(), key=lambda child: natural_key(child.name))
    indexes = [c for c in children if c.name.lower().endswith(".safetensors.index.json")]
    sharded = {shard for index in indexes for shard in _shards(index)}
    return [
        child
        for child in children
        if (child.is_dir() and _is_checkpoint(child))
        or (
            child.is_file()
            and child.name.lower().endswith(CHECKPOINT_SUFFIXES)
            and child.name not in sharded
        )
    ]


def _shards(index: Path) -> set[str]:
    import json

    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return {str(name) for name in weight_map.values()}
    except (OSError, ValueError, AttributeError):
        return set()  # reading it as a checkpoint says what is wrong with it


# --- rules -----------------------------------------------------------------------------


def _structure_rules(
    structure: Structure,
    stats: dict[str, TensorStats],
    settings: CheckSettings,
    rebalance: str,
) -> list[RuleResult]:
    """max-imbalance and max-l2-ratio of every chain; skipped where nothing can say."""
    asked = [
        (rule, threshold)
        for rule, threshold in (
            ("max-imbalance", settings.max_imbalance),
            ("max-l2-ratio", settings.max_l2_ratio),
        )
        if threshold is not None
    ]
    if not asked:
        return []
    if not structure.chains and not structure.symmetries:
        reason = (
            "not evaluated: no chains of layers or scale symmetries were found (see `weissi "
            "graph`; pin the structure with --spec)"
        )
        return [_skip(rule, "structure", threshold, (), reason) for rule, threshold in asked]
    results: list[RuleResult] = []
    for chain in structure.chains:
        names = chain.tensor_names()
        if any(name in stats and not stats[name].is_finite for name in names):
            reason = "not evaluated: its weights hold NaN or Inf (see the non-finite rule)"
            results += [
                _skip(rule, chain.id, threshold, names, reason) for rule, threshold in asked
            ]
            continue
        analysis = analyse_chain(chain, stats)
        for rule, threshold in asked:
            results.append(_chain_rule(rule, threshold, analysis, names, rebalance))
    return results


def _chain_rule(
    rule: str, threshold: float, analysis: ChainAnalysis, names: tuple[str, ...], rebalance: str
) -> RuleResult:
    scope = analysis.chain.id
    if analysis.problem is not None:
        return _skip(rule, scope, threshold, names, f"not evaluated: {analysis.problem}")
    if rule == "max-imbalance":
        if analysis.imbalance is None:
            return _skip(rule, scope, threshold, names, "not evaluated: no layer norms")
        return _threshold(
            rule, scope, analysis.imbalance, threshold, names, "largest/smallest layer norm",
            rebalance,
        )  # fmt: skip
    if not analysis.l2_penalty or not analysis.min_l2_penalty:
        return _skip(
            rule, scope, threshold, names, "not evaluated: the chain's weights are all zero"
        )
    return _threshold(
        rule,
        scope,
        analysis.l2_penalty / analysis.min_l2_penalty,
        threshold,
        names,
        "L2 penalty / its minimum over scale shifts",
        rebalance,
    )


def _symmetry_rules(
    checkpoint: Checkpoint,
    structure: Structure,
    stats: dict[str, TensorStats],
    squares: Mapping[str, Squares],
    settings: CheckSettings,
    rebalance: str,
) -> list[RuleResult]:
    """The rules on the free symmetries (a graph's, a config's or a spec's) solved
    together: L2 over its layer-wise minimum, and the spread of the optimal factors (a
    chain's imbalance, for any structure)."""
    names = tuple(dict.fromkeys(m.tensor for s in structure.symmetries for m in s.members))
    asked = [
        (rule, threshold)
        for rule, threshold in (
            ("max-imbalance", settings.max_imbalance),
            ("max-l2-ratio", settings.max_l2_ratio),
        )
        if threshold is not None
    ]
    broken = [name for name in names if name in stats and not stats[name].is_finite]
    if broken:
        reason = f"not evaluated: {broken[0]} holds NaN or Inf (see the non-finite rule)"
        return [_skip(rule, "symmetries", t, names, reason) for rule, t in asked]
    solved = solve_group(checkpoint, structure, include_bias=False, granularity="layer",
                         stats=stats, squares=squares)  # fmt: skip
    group = solved[0] if solved is not None else None
    results = []
    for rule, threshold in asked:
        if group is None or group.layer.l2_after <= 0:
            results.append(
                _skip(rule, "symmetries", threshold, names, "not evaluated: no penalised weights")
            )
            continue
        if rule == "max-l2-ratio":
            value: float | None = group.l2_penalty / group.layer.l2_after
            what = "L2 penalty / its minimum over the scale symmetries"
        else:
            value = factor_spread(group)
            what = "spread of the optimal scale factors (a chain's imbalance)"
        if value is None:
            results.append(_skip(rule, "symmetries", threshold, names, "not evaluated"))
            continue
        results.append(_threshold(rule, "symmetries", value, threshold, names, what, rebalance))
    return results


def _skip(
    rule: str, scope: str, threshold: float | None, tensors: Iterable[str], reason: str
) -> RuleResult:
    return RuleResult(rule, scope, None, threshold, "skip", tuple(tensors), reason)


def _threshold(
    rule: str,
    scope: str,
    value: float,
    threshold: float,
    tensors: tuple[str, ...],
    what: str,
    rebalance: str = "",
) -> RuleResult:
    verdict = "pass" if value <= threshold else "fail"
    relation = "≤" if verdict == "pass" else ">"
    return RuleResult(
        rule,
        scope,
        value,
        threshold,
        verdict,
        tensors,
        f"{what}: {value:.4g} {relation} {threshold:g}",
        FIXES[rule].format(rebalance=rebalance) if verdict == "fail" else "",
    )


def _tensor_rules(
    stats: TensorStats, details: TensorDetails, settings: CheckSettings
) -> list[RuleResult]:
    name = stats.name
    found = [
        RuleResult(
            "non-finite",
            name,
            float(stats.nonfinite),
            0.0,
            "fail" if stats.nonfinite else "pass",
            (name,),
            f"{stats.nonfinite} NaN/Inf value(s)" if stats.nonfinite else "all values finite",
            FIXES["non-finite"] if stats.nonfinite else "",
        )
    ]
    if settings.max_abs is not None:
        found.append(
            _threshold("max-abs", name, stats.max_abs, settings.max_abs, (name,), "max |w|")
        )
    if settings.max_norm is not None:
        if stats.is_finite:
            found.append(
                _threshold(
                    "max-norm", name, stats.fro_norm, settings.max_norm, (name,), "Frobenius norm"
                )
            )
        else:
            found.append(
                _skip(
                    "max-norm",
                    name,
                    settings.max_norm,
                    (name,),
                    f"not evaluated: {stats.nonfinite} NaN/Inf value(s) (see the non-finite rule)",
                )
            )
    dead = len(details.zero_rows) + len(details.zero_columns)
    if dead:
        parts = []
        if details.zero_rows:
            parts.append(f"{len(details.zero_rows)} all-zero row(s) {_indices(details.zero_rows)}")
        if details.zero_columns:
            parts.append(
                f"{len(details.zero_columns)} all-zero column(s) {_indices(details.zero_columns)}"
            )
        found.append(
            RuleResult(
                "dead-units",
                name,
                float(dead),
                0.0 if settings.no_dead_units else None,
                "fail" if settings.no_dead_units else "warn",
                (name,),
                "dead units: " + "; ".join(parts),
                FIXES["dead-units"]
                + ("" if settings.no_dead_units else " (--no-dead-units makes this a failure)"),
            )
        )
    if settings.fp16_headroom:
        found.append(_headroom_rule(stats, details, settings))
    return found


def _headroom_rule(
    stats: TensorStats, details: TensorDetails, settings: CheckSettings
) -> RuleResult:
    """Overflow in float16 or bfloat16 always fails; values that flush to zero fail beyond
    the tolerance (a fraction of the tensor's values, or a count)."""
    name = stats.name
    allowed = settings.allowed_flushes(stats.elements)
    overflow = {dtype: n for dtype, n in details.overflow.items() if n}
    flushed = {dtype: n for dtype, n in details.underflow.items() if n}
    worst = max(flushed.values(), default=0)
    problems = [f"{n} value(s) overflow {dtype}" for dtype, n in overflow.items()]
    problems += [f"{n} non-zero value(s) flush to zero in {dtype}" for dtype, n in flushed.items()]
    failed = bool(overflow) or worst > allowed
    if not problems:
        message = "fits float16 and bfloat16"
    else:
        message = "; ".join(problems)
        if flushed and not overflow:
            relation = "within" if worst <= allowed else "beyond"
            message += f" ({relation} the tolerance of {allowed})"
    fix = ""
    if failed:
        fix = FIXES["fp16-overflow"] if overflow else FIXES["fp16-flush"]
    return RuleResult(
        "fp16-headroom",
        name,
        float(sum(overflow.values()) + worst),
        float(allowed),
        "fail" if failed else "pass",
        (name,),
        message,
        fix,
    )


def _indices(indices: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in indices[:SHOWN_INDICES])
    more = f", … ({len(indices) - SHOWN_INDICES} more)" if len(indices) > SHOWN_INDICES else ""
    return f"[{shown}{more}]"


__all__ = ["check_checkpoint", "check_checkpoints", "expand_checkpoints", "iter_checks"]
