"""`trend`: the penalties of a training run's checkpoints, one streaming pass each, in the
order of the training steps their names carry."""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from weissi_cli.api.symmetries import BUFFER_SUFFIXES, solve_group, statistics_pass
from weissi_cli.balance.analysis import ChainAnalysis, analyse_chain
from weissi_cli.balance.layerwise import weissi_penalty
from weissi_cli.errors import InputError, UsageError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.checkpoint import Checkpoint, natural_key
from weissi_cli.ir import Structure
from weissi_cli.progress import phase
from weissi_cli.report.common import Source
from weissi_cli.report.symmetries import SymmetryGroup
from weissi_cli.report.trend import (
    ChainPoint,
    Step,
    SymmetriesPoint,
    TrendPoint,
    TrendReport,
    TrendSettings,
)
from weissi_cli.stats import TensorStats
from weissi_cli.structure import discover

ORDERS = ("step", "given")
CHECKPOINT_SUFFIXES = (
    ".safetensors.index.json",
    ".safetensors",
    ".pt2",
    ".pt",
    ".pth",
    ".bin",
    ".ckpt",
)
# A number after a word that names a training step. Rank: what the number counts, most
# specific first; within a name the last match of the best rank wins
# (`epoch=3-step=1200.ckpt` is step 1200).
_KEYWORD = re.compile(
    r"(?<![a-z])(global[_-]?step|steps?|iter(?:ation)?s?|checkpoint|ckpt|epochs?)"
    r"[-_=.]?(\d+)(?!\d)",
    re.IGNORECASE,
)
_RANKS = (
    (("global", "step"), "step"),
    (("iter",), "iteration"),
    (("checkpoint", "ckpt"), "step"),
    (("epoch",), "epoch"),
)
_NUMBER = re.compile(r"\d+")
GLOB_CHARACTERS = "*?["
# How many enclosing folders may name the step (run/global_step500/model_states.pt).
PARENT_LEVELS = 2


def trend_checkpoints(
    paths: Sequence[str | os.PathLike[str]],
    spec: str | os.PathLike[str] | None = None,
    lambda1: float = 1.0,
    lambda2: float = 1.0,
    order: str = "step",
    threads: int = 2,
) -> TrendReport:
    """Read each checkpoint once (the statistics `inspect` computes) and return one point per
    checkpoint in training order: by the step parsed from its name (`order="step"`), or as
    given (`order="given"`). `paths` may hold files, model folders, a run folder (expanded to
    the checkpoints inside whose names carry a step) and quoted glob patterns. A `spec` file
    applies to every checkpoint. Only one checkpoint is open at a time."""
    if order not in ORDERS:
        raise UsageError(f"--order must be one of {', '.join(ORDERS)}, not {order!r}")
    for name, value in (("--lambda1", lambda1), ("--lambda2", lambda2)):
        if not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, not {value}")
    found = expand_paths([Path(path) for path in paths])
    ordered = order_checkpoints(found, order)
    spec_path = Path(spec) if spec is not None else None
    points: list[TrendPoint] = []
    warnings: list[str] = []
    for path, step in ordered:
        point, notes = measure_checkpoint(path, step, spec_path, lambda1, lambda2, threads)
        points.append(point)
        warnings += [note for note in notes if note not in warnings]
    warnings += _differences(points)
    warnings += [f"{_label(point)}: {problem}" for point in points for problem in point.problems]
    return TrendReport(
        settings=TrendSettings(
            lambda1, lambda2, order, str(spec_path) if spec_path is not None else None
        ),
        points=tuple(points),
        x_axis=_x_axis(points),
        warnings=tuple(warnings),
    )


# --- which checkpoints, in which order ---------------------------------------------------


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Globs that the shell did not expand, and run folders, become the checkpoints they
    name; anything else is kept as given (and refused later if it is not a checkpoint)."""
    if not paths:
        raise UsageError("give at least one checkpoint")
    found: list[Path] = []
    for path in paths:
        text = str(path)
        if not path.exists() and any(char in text for char in GLOB_CHARACTERS):
            matches = sorted(glob.glob(text), key=natural_key)
            if not matches:
                raise InputError(f"{text}: no file or folder matches this pattern")
            found += [Path(match) for match in matches]
        elif path.is_dir() and not _is_checkpoint_folder(path):
            inside = sorted(
                (child for child in path.iterdir() if _looks_like_checkpoint(child)),
                key=lambda child: natural_key(child.name),
            )
            if not inside:
                raise InputError(
                    f"{path}: neither a checkpoint folder nor a run folder holding checkpoints "
                    "whose names carry a step (checkpoint-500/, step_100.pt, ...)"
                )
            found += inside
        else:
            found.append(path)
    return found


def _is_checkpoint_folder(path: Path) -> bool:
    from weissi_cli.io import detect_format

    try:
        detect_format(path)
    except InputError:
        return False
    return True


def _looks_like_checkpoint(path: Path) -> bool:
    if parse_step(path, parents=False) is None:
        return False
    if path.is_dir():
        return _is_checkpoint_folder(path)
    return path.name.lower().endswith(CHECKPOINT_SUFFIXES)


def checkpoint_stem(name: str) -> str:
    """The name without its checkpoint suffix (`step_100.safetensors` -> `step_100`)."""
    lowered = name.lower()
    for suffix in CHECKPOINT_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_step(path: Path, parents: bool = True) -> Step | None:
    """The training step a checkpoint's name gives: a number after a step word in its own
    name (step_100, checkpoint-500, global_step7, iter_0001000, epoch=3), else after one in
    an enclosing folder's name (run/checkpoint-500/model.safetensors), else the last number
    in its own name (model_00500.pt); None when there is none."""
    own = checkpoint_stem(path.name)
    found = _keyword_step(own)
    if found is None and parents:
        for folder in list(path.absolute().parents)[:PARENT_LEVELS]:
            found = _keyword_step(folder.name)
            if found is not None:
                break
    if found is None:
        numbers = list(_NUMBER.finditer(own))
        if numbers:
            found = Step(int(numbers[-1].group()), "step", own)
    return found


def _keyword_step(name: str) -> Step | None:
    best: tuple[int, Step] | None = None
    for match in _KEYWORD.finditer(name):
        word = match.group(1).lower()
        rank, unit = next(
            (rank, unit) for rank, (starts, unit) in enumerate(_RANKS) if word.startswith(starts)
        )
        if best is None or rank <= best[0]:
            best = (rank, Step(int(match.group(2)), unit, name))
    return best[1] if best is not None else None


def order_checkpoints(paths: Sequence[Path], order: str = "step") -> list[tuple[Path, Step | None]]:
    """The checkpoints with their steps, sorted by step or kept as given."""
    steps = [(path, parse_step(path)) for path in paths]
    if order == "given" or len(steps) == 1:  # one checkpoint: nothing to order
        return steps
    for path, step in steps:
        if step is None:
            raise UsageError(
                f"{path}: no training step in its name (as in step_100.pt or checkpoint-500/); "
                "pass --order given to keep the order on the command line"
            )
    units = {step.unit for _, step in steps if step is not None}
    if len(units) > 1:
        examples = ", ".join(
            next(f"{p} ({s.unit} {s.value})" for p, s in steps if s is not None and s.unit == u)
            for u in sorted(units)
        )
        raise UsageError(
            f"the names count different things ({examples}); pass --order given to keep the "
            "order on the command line"
        )
    seen: dict[int, Path] = {}
    for path, step in steps:
        assert step is not None
        if step.value in seen:
            raise UsageError(
                f"{seen[step.value]} and {path} both name {step.unit} {step.value}; pass one "
                "checkpoint per step, or --order given"
            )
        seen[step.value] = path
    return sorted(steps, key=lambda item: item[1].value if item[1] is not None else 0)


def _x_axis(points: Sequence[TrendPoint]) -> str:
    steps = [point.step for point in points]
    if not steps or any(step is None for step in steps):
        return "index"
    values = [step.value for step in steps if step is not None]
    units = {step.unit for step in steps if step is not None}
    if len(units) != 1 or any(b <= a for a, b in zip(values, values[1:], strict=False)):
        return "index"
    return units.pop()


def _label(point: TrendPoint) -> str:
    if point.step is None:
        return point.source.path
    return f"{point.source.path} ({point.step.unit} {point.step.value})"


# --- one checkpoint ----------------------------------------------------------------------


def measure_checkpoint(
    path: Path,
    step: Step | None,
    spec: Path | None,
    lambda1: float,
    lambda2: float,
    threads: int = 2,
) -> tuple[TrendPoint, list[str]]:
    """One pass over `path`: its point, and what a user should know (assumptions, notes)."""
    with phase(f"reading {path.name}"), open_checkpoint(path) as checkpoint:
        structure = discover(checkpoint, spec)
        penalised = penalised_weights(checkpoint)
        in_chains = [name for chain in structure.chains for name in chain.tensor_names()]
        names = list(dict.fromkeys([*penalised, *in_chains]))
        stats, _, group_squares = statistics_pass(
            checkpoint, structure, False, "layer", threads, names=names
        )
        chains = [analyse_chain(chain, stats, lambda1, lambda2) for chain in structure.chains]
        problems = _problems(names, set(penalised), stats)
        problem_tensors = {problem.split(" ", 1)[0] for problem in problems}
        problems += [
            f"{chain.chain.id}: {chain.problem}"
            for chain in chains
            if chain.problem and not problem_tensors & set(chain.chain.tensor_names())
        ]
        group: SymmetryGroup | None = None
        if structure.symmetries and not any(not stats[n].is_finite for n in penalised):
            solved = solve_group(
                checkpoint, structure, False, "layer", threads, squares=group_squares
            )
            group = solved[0] if solved else None
        point = _point(
            Source.of(checkpoint, str(path)),
            step,
            structure,
            penalised,
            stats,
            chains,
            group,
            problems,
            (lambda1, lambda2),
        )
        notes = [*checkpoint.notes, *structure.assumptions]
        notes += [f"{chain.id}: {note}" for chain in structure.chains for note in chain.notes]
        return point, notes


def penalised_weights(checkpoint: Checkpoint) -> list[str]:
    """What the L2 penalty counts by default: float tensors with two or more dimensions,
    never buffers (by the program's own list for `.pt2`, else by name)."""
    buffers = getattr(checkpoint, "buffers", None)
    return [
        info.name
        for info in checkpoint.tensors
        if info.is_supported_float
        and len(info.shape) >= 2
        and not (
            info.name in buffers if buffers is not None else info.name.endswith(BUFFER_SUFFIXES)
        )
    ]


def _problems(
    names: Sequence[str], penalised: set[str], stats: dict[str, TensorStats]
) -> list[str]:
    """Each starts with the tensor's name."""
    problems = []
    for name in names:
        found = stats[name]
        if not found.is_finite:
            problems.append(f"{name} holds {found.nonfinite} non-finite value(s) (NaN or Inf)")
        elif name in penalised and found.fro_norm == 0.0:
            problems.append(f"{name} is all zeros: ln‖W‖ and W/‖W‖ are undefined")
    return problems


def _point(
    source: Source,
    step: Step | None,
    structure: Structure,
    penalised: Sequence[str],
    stats: dict[str, TensorStats],
    chains: Sequence[ChainAnalysis],
    group: SymmetryGroup | None,
    problems: list[str],
    lambdas: tuple[float, float],
) -> TrendPoint:
    finite = all(stats[name].is_finite for name in penalised)
    norms = {name: stats[name].fro_norm for name in penalised} if finite else {}
    l2 = math.fsum(norm * norm for norm in norms.values()) if finite else None
    defined = finite and all(norm > 0 for norm in norms.values())
    log_sum = math.fsum(math.log(norm) for norm in norms.values()) if defined else None
    l1_sum = math.fsum(stats[name].l1_direction or 0.0 for name in penalised) if defined else None
    weissi = (
        weissi_penalty(log_sum, l1_sum, *lambdas)
        if log_sum is not None and l1_sum is not None
        else None
    )
    symmetries = _symmetries_point(group)
    slack: float | None = None
    if l2 is not None and all(chain.l2_slack is not None for chain in chains):
        slack = math.fsum(chain.l2_slack or 0.0 for chain in chains)
        if symmetries is not None:
            slack += max(symmetries.l2_penalty - symmetries.min_l2_penalty, 0.0)
    spreads = [chain.imbalance for chain in chains if chain.imbalance is not None]
    if symmetries is not None and symmetries.spread is not None:
        spreads.append(symmetries.spread)
    largest = max(norms, key=lambda name: norms[name]) if norms else None
    return TrendPoint(
        source=source,
        step=step,
        structure=structure.origin,
        assumed=structure.is_assumed,
        penalised=len(penalised),
        l2_penalty=l2,
        min_l2_penalty=l2 - slack if l2 is not None and slack is not None else None,
        l2_slack=slack,
        log_norm_sum=log_sum,
        l1_direction_sum=l1_sum,
        weissi_penalty=weissi,
        imbalance=max(spreads) if spreads else None,
        max_norm=norms[largest] if largest is not None else None,
        max_norm_tensor=largest,
        chains=tuple(_chain_point(chain) for chain in chains),
        symmetries=symmetries,
        problems=tuple(problems),
    )


def _chain_point(analysis: ChainAnalysis) -> ChainPoint:
    return ChainPoint(
        id=analysis.chain.id,
        origin=analysis.chain.origin,
        depth=analysis.chain.depth,
        l2_penalty=analysis.l2_penalty,
        min_l2_penalty=analysis.min_l2_penalty,
        l2_slack=analysis.l2_slack,
        weissi_penalty=analysis.weissi_penalty,
        imbalance=analysis.imbalance,
        problem=analysis.problem,
    )


def _symmetries_point(group: SymmetryGroup | None) -> SymmetriesPoint | None:
    """The layer-wise joint optimum of the free symmetries; the spread of the optimal factors
    over the tensors they move is a chain's imbalance when they form a chain (max n / min n
    = max γ* / min γ*), and says as much for any other structure."""
    if group is None or not group.symmetries:
        return None
    solution = group.layer
    return SymmetriesPoint(
        count=len(group.symmetries),
        unbounded=sum(1 for item in solution.symmetries.values() if item.unbounded),
        l2_penalty=solution.l2_before,
        min_l2_penalty=min(solution.l2_after, solution.l2_before),
        spread=factor_spread(group),
    )


def factor_spread(group: SymmetryGroup) -> float | None:
    """Largest / smallest factor by which the layer-wise optimum changes the norm of a
    tensor the symmetries move: a chain's imbalance when they form a chain; None without
    any tensor of non-zero norm."""
    solution = group.layer
    factors = [
        math.sqrt(solution.tensor_l2_after[name] / before)
        for name, before in solution.tensor_l2_before.items()
        if before > 0 and solution.tensor_l2_after.get(name, 0.0) > 0
    ]
    return max(factors) / min(factors) if factors else None


def _differences(points: Sequence[TrendPoint]) -> list[str]:
    """A point whose totals cover other tensors than the first's is not comparable."""
    if not points:
        return []
    first = points[0]
    return [
        f"{_label(point)}: its totals cover {point.penalised} tensor(s) with structure "
        f"{point.structure}, the first checkpoint's {first.penalised} with {first.structure}; "
        "the series compare different things"
        for point in points[1:]
        if (point.penalised, point.structure, len(point.chains))
        != (first.penalised, first.structure, len(first.chains))
    ]
