"""Chains guessed from tensor names and shapes alone: an assumption, labelled as one."""

from __future__ import annotations

from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.ir import Chain, Layer, Structure, Unassigned
from weissi_cli.structure.layers import (
    as_layer,
    bias_problem,
    connection,
    group_modules,
    is_normalisation,
)

ASSUMPTION = (
    "structure inferred from tensor names and shapes; activations assumed ReLU between "
    "consecutive layers (check it with `weissi graph`, pin it with a spec file)"
)


ORDER_ASSUMPTION = (
    "safetensors files do not record the order of modules: layers were taken in natural name "
    "order (net.2 before net.10); where that is not the forward order, pin it with a spec file"
)


def infer_structure(checkpoint: Checkpoint) -> Structure:
    """Consecutive layers whose shapes connect form a chain; anything else ends it."""
    unassigned: list[Unassigned] = []
    runs: list[tuple[list[Layer], list[int], list[str]]] = []
    run: list[Layer] = []
    blocks: list[int] = []
    notes: list[str] = []

    def close(reason: str) -> None:
        nonlocal run, blocks, notes
        if len(run) == 1:
            layer = run[0]
            why = f"single layer: {reason}" if reason else "single layer"
            unassigned.extend(Unassigned(name, why) for name in _layer_tensors(layer))
        elif run:
            runs.append((run, blocks, notes))
        run, blocks, notes = [], [], []

    for module in group_modules(checkpoint):
        non_float = [info for info in module.tensors.values() if not info.is_supported_float]
        for info in non_float:
            unassigned.append(Unassigned(info.name, f"{info.dtype} tensor: skipped"))
        layer = as_layer(module)
        if layer is not None and not module.prefix:
            reason = "a tensor at the top level has no module name: no chain or spec can name it"
            close(reason)
            unassigned.extend(Unassigned(name, reason) for name in module.names())
            continue
        if layer is not None and not is_normalisation(module):
            problem = bias_problem(layer, checkpoint) or _shared_problem(layer, checkpoint)
            if problem is not None:
                close(f"{layer.prefix} cannot be rescaled ({problem})")
                unassigned.extend(
                    Unassigned(name, f"cannot be rescaled: {problem}")
                    for name in _layer_tensors(layer)
                )
                continue
            extras = [
                info
                for suffix, info in module.tensors.items()
                if suffix not in ("weight", "bias") and info.is_supported_float
            ]
            if extras:
                names = ", ".join(info.name for info in extras)
                close(f"{layer.prefix} has other parameters ({names})")
                unassigned.extend(
                    Unassigned(name, f"module {layer.prefix} also holds {names}; not a plain layer")
                    for name in [*_layer_tensors(layer), *(info.name for info in extras)]
                )
                continue
            if run:
                block, note = connection(run[-1], layer)
                if block is None:
                    close(note)
                else:
                    blocks.append(block)
                    if note:
                        notes.append(note)
            run.append(layer)
            continue
        floats = [info for info in module.tensors.values() if info.is_supported_float]
        if not floats:
            continue
        if is_normalisation(module):
            reason = f"normalisation layer {module.prefix or '(root)'}: ends a chain"
        else:
            reason = (
                f"module {module.prefix or '(root)'} is not a linear or conv layer: ends a chain"
            )
        close(reason)
        unassigned.extend(Unassigned(info.name, reason) for info in floats)
    close("no neighbouring layer with matching shapes")

    chains = tuple(
        Chain(
            id=f"chain{index}",
            origin="heuristic",
            activation="relu",
            layers=tuple(layers),
            blocks=tuple(chain_blocks),
            notes=tuple(chain_notes),
        )
        for index, (layers, chain_blocks, chain_notes) in enumerate(runs)
    )
    assumptions: tuple[str, ...] = (ASSUMPTION,) if chains else ()
    if chains and checkpoint.format.startswith("safetensors"):
        assumptions += (ORDER_ASSUMPTION,)
    return Structure(chains, tuple(unassigned), "heuristic", assumptions)


def _layer_tensors(layer: Layer) -> list[str]:
    return [layer.weight] + ([layer.bias] if layer.bias else [])


def _shared_problem(layer: Layer, checkpoint: Checkpoint) -> str | None:
    for name in _layer_tensors(layer):
        others = checkpoint.shared_storage(name)
        if others:
            return f"{name} shares memory with {', '.join(others)} (tied weights)"
    return None
