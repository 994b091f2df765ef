"""Verification with the user's own model code (`--model FILE.py:NAME`): load both
checkpoints into the module and compare what it computes on random example inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError
from weissi_cli.progress import phase
from weissi_cli.structure.source import StructureSource
from weissi_cli.verification import SEED, ChainVerification
from weissi_cli.verify_outputs import OutputChange

PROBES = 4


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


@phase("verifying: running the model's code on both checkpoints")
def run_module(source: StructureSource, original: Path, rewritten: Path) -> ChainVerification:
    """Build the module on the CPU, load each checkpoint into it and compare every floating
    output on PROBES random inputs of the example shapes."""
    import torch

    from weissi_cli.structure.trace import build_module, match_state_dict

    assert source.model is not None
    module = build_module(source.model, device="cpu")
    model_names = set(module.state_dict())
    dtype = getattr(torch, source.example_dtype)
    generator = torch.Generator().manual_seed(SEED)
    inputs = [
        tuple(
            torch.randn(shape, generator=generator).to(dtype)
            if dtype.is_floating_point
            else torch.randint(0, 2, shape, generator=generator, dtype=dtype)
            for shape in source.example_shapes
        )
        for _ in range(PROBES)
    ]
    outputs = []
    for path in (original, rewritten):
        state = load_state(path)
        names, _ = match_state_dict(model_names, list(state))
        missing = sorted(model_names - set(names))
        if missing:
            raise InputError(
                f"{path}: --model {source.model} needs {missing[0]}"
                + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                + ", which the checkpoint does not hold"
            )
        module.load_state_dict({name: state[names[name]] for name in model_names})
        with torch.no_grad():
            outputs.append([_floats(module(*args)) for args in inputs])
    change = OutputChange()
    for before_run, after_run in zip(*outputs, strict=True):
        for old, new in zip(before_run, after_run, strict=True):
            change.add_torch(old, new)
    shapes = ", ".join("x".join(map(str, shape)) for shape in source.example_shapes)
    return change.verification(
        "model",
        "model",
        f"ran {source.model} on both checkpoints with {PROBES} random inputs ({shapes}, "
        f"{source.example_dtype}): {change.outcome()}",
        PROBES,
    )


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
