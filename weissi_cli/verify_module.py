"""Verification with the user's own model code (`--model FILE.py:NAME`): load both
checkpoints into the module and compare what it computes in eval and train mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError
from weissi_cli.progress import phase
from weissi_cli.structure.source import StructureSource
from weissi_cli.verification import SEED, ChainVerification
from weissi_cli.verify_outputs import OutputChange

PROBES = 4  # random inputs at the example shapes in eval mode
TRAIN_PROBES = 2  # and in train mode
TRAIN_NOTE = " (dropout and other randomness seeded alike for both files)"


def load_state(path: Path) -> dict[str, Any]:
    """Every tensor of a checkpoint as torch tensors (for running a model on it)."""
    from weissi_cli.io import open_checkpoint

    with open_checkpoint(path) as checkpoint:
        if hasattr(checkpoint, "tensor"):
            return {info.name: checkpoint.tensor(info.name) for info in checkpoint.tensors}
        from safetensors.torch import load_file

        from weissi_cli.writers import input_files

        state: dict[str, Any] = {}
        for file in input_files(checkpoint):
            if file.suffix == ".safetensors":
                state.update(load_file(str(file)))
        return state


@dataclass(frozen=True)
class Run:
    """Inputs of `shapes` run `count` times through both checkpoints in `mode`; `required`:
    an original that raises on them leaves a caveat (not so for train mode at other batch
    sizes, or other spatial sizes or sequence lengths, which many models do not take)."""

    mode: str  # "eval" | "train"
    shapes: tuple[tuple[int, ...], ...]
    count: int
    required: bool = True


def planned_runs(shapes: tuple[tuple[int, ...], ...], dtype: Any) -> list[Run]:
    """The example shapes in eval mode (PROBES inputs) and in train mode, then the same at
    other batch sizes (1 and one more than the example's), and, once in eval mode, token
    inputs one longer or images twice as large in every spatial dimension."""
    runs = [Run("eval", shapes, PROBES), Run("train", shapes, TRAIN_PROBES)]
    batch = shapes[0][0] if shapes and shapes[0] else 0
    for size in (1, batch + 1):
        if batch and size != batch:
            other = tuple(
                (size, *shape[1:]) if shape and shape[0] == batch else shape for shape in shapes
            )
            # a batch norm cannot train on one example: train mode at other sizes is tried,
            # not required
            runs += [Run("eval", other, 1), Run("train", other, 1, required=False)]
    if dtype.is_floating_point:
        larger = tuple(
            (*shape[:2], *(size * 2 for size in shape[2:])) if len(shape) >= 4 else shape
            for shape in shapes
        )
    else:
        larger = tuple(
            (*shape[:-1], shape[-1] + 1) if len(shape) >= 2 else shape for shape in shapes
        )
    if larger != shapes:
        runs.append(Run("eval", larger, 1, required=False))
    return runs


@phase("verifying: running the model's code on both checkpoints")
def run_module(source: StructureSource, original: Path, rewritten: Path) -> ChainVerification:
    """Build the module on the CPU, load each checkpoint into it and compare every floating
    output of the planned runs: eval and train mode (the random generator seeded alike for
    both checkpoints, so dropout masks agree), at the example shapes and other sizes."""
    import torch

    from weissi_cli.structure.trace import build_module

    assert source.model is not None
    module = build_module(source.model, device="cpu")
    states = [_matched_state(module, path, source.model) for path in (original, rewritten)]
    dtype = getattr(torch, source.example_dtype)
    generator = torch.Generator().manual_seed(SEED)
    change = OutputChange()
    done: list[Run] = []
    skipped: list[str] = []
    for run in planned_runs(source.example_shapes, dtype):
        inputs = [
            tuple(
                torch.randn(shape, generator=generator).to(dtype)
                if dtype.is_floating_point
                else torch.randint(0, 2, shape, generator=generator, dtype=dtype)
                for shape in run.shapes
            )
            for _ in range(run.count)
        ]
        try:
            before = _outputs(module, states[0], run.mode, inputs)
        except Exception as error:  # the model's own code refuses these inputs: not a check
            if run.required:
                skipped.append(
                    f"in {run.mode} mode on {_describe(run)} "
                    f"(the original raised: {_first_line(error)})"
                )
            continue
        try:
            after = _outputs(module, states[1], run.mode, inputs)
        except Exception:
            change.mismatch()  # the original ran on these inputs, the rewrite does not
            after = before
        for before_run, after_run in zip(before, after, strict=True):
            if len(before_run) != len(after_run):
                change.mismatch()
            for old, new in zip(before_run, after_run, strict=False):
                change.add_torch(old, new)
        done.append(run)
    module.eval()
    caveat = (
        f"the module could not run {'; '.join(skipped)}, so that was not compared"
        if skipped
        else ""
    )
    modes = [
        f"{mode} mode{TRAIN_NOTE if mode == 'train' else ''}: "
        + ", ".join(_describe(run) for run in done if run.mode == mode)
        for mode in ("eval", "train")
        if any(run.mode == mode for run in done)
    ]
    return change.verification(
        "model",
        "model",
        f"ran {source.model} on both checkpoints with {source.example_dtype} random inputs: "
        + "; ".join([change.outcome(), *modes]),
        sum(run.count for run in done),
        caveat,
    )


def _describe(run: Run) -> str:
    shapes = ", ".join("x".join(map(str, shape)) for shape in run.shapes)
    return f"{run.count} of {shapes}"


def _matched_state(module: Any, path: Path, model: str) -> dict[str, Any]:
    """The checkpoint's tensors under the module's state dict names."""
    from weissi_cli.structure.trace import match_state_dict

    model_names = set(module.state_dict())
    state = load_state(path)
    names, _ = match_state_dict(model_names, list(state))
    missing = sorted(model_names - set(names))
    if missing:
        raise InputError(
            f"{path}: --model {model} needs {missing[0]}"
            + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
            + ", which the checkpoint does not hold"
        )
    return {name: state[names[name]] for name in model_names}


def _outputs(module: Any, state: dict[str, Any], mode: str, inputs: list[Any]) -> list[list[Any]]:
    """The floating outputs of `module` holding `state` on each of `inputs`, in `mode`; the
    state is loaded afresh, since train mode updates buffers (a batch norm's statistics)."""
    import torch

    module.load_state_dict(state)
    module.train(mode == "train")
    results = []
    with torch.no_grad():
        for index, args in enumerate(inputs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED + index)
                results.append(_floats(module(*args)))
    return results


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:160]


def _floats(result: Any) -> list[Any]:
    """The floating-point tensors of a module's output, in a fixed order."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result] if result.is_floating_point() else []
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, list | tuple):
        return [t for item in result for t in _floats(item)]
    return []
