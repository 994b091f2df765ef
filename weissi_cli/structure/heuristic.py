"""Chains guessed from tensor names and shapes alone: an assumption, labelled as one."""

from __future__ import annotations

from collections.abc import Sequence

from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.ir import Chain, Layer, Member, Structure, Symmetry, Unassigned
from weissi_cli.structure.layers import (
    Module,
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
    symmetries = batch_norm_symmetries(checkpoint)
    if symmetries:
        claimed = {member.tensor for symmetry in symmetries for member in symmetry.members}
        unassigned = [entry for entry in unassigned if entry.name not in claimed]
    assumptions: tuple[str, ...] = (ASSUMPTION,) if chains or symmetries else ()
    if chains and checkpoint.format.startswith("safetensors"):
        assumptions += (ORDER_ASSUMPTION,)
    return Structure(
        chains,
        tuple(unassigned),
        "heuristic",
        assumptions,
        tuple(symmetries),
        refusals=placement_refusals(checkpoint, chains, symmetries),
    )


def placement_refusals(
    checkpoint: Checkpoint, chains: Sequence[Chain], symmetries: Sequence[Symmetry]
) -> tuple[str, ...]:
    """What names and shapes cannot place, so that rebalancing on them could change the
    function whatever the activations are:

    - a 1-D (or scalar) tensor that is neither a layer's bias nor part of a normalisation
      layer: a PReLU's slopes, a per-channel gate, a learned shift;
    - a layer outside a chain whose inputs match a hidden width of the chain: it may read
      that hidden space (a sibling head), which the chain rescales without it;
    - any other tensor outside every chain and symmetry with a dimension of a hidden width:
      it may act on that space (a norm between two layers whose names sort apart).
    """
    if not chains and not symmetries:
        return ()
    placed = {name for chain in chains for name in chain.claimed()}
    placed |= {member.tensor for symmetry in symmetries for member in symmetry.members}
    spaces: dict[int, list[str]] = {}  # width -> the hidden spaces of that width
    owner: dict[str, str] = {}  # layer prefix -> chain id
    for chain in chains:
        for producer in chain.layers[:-1]:
            spaces.setdefault(producer.out_features, []).append(f"{producer.prefix} ({chain.id})")
        owner.update({member.prefix: chain.id for member in chain.layers})
    hidden = {width: f"the output of {' or '.join(found)}" for width, found in spaces.items()}
    found: list[str] = []
    for module in group_modules(checkpoint):
        layer = as_layer(module) if module.prefix else None
        norm = is_normalisation(module)
        if layer is not None and not norm and module.prefix in owner:
            width = layer.in_features
            for chain in chains:
                if chain.id == owner[module.prefix]:
                    continue
                if any(width == other.out_features for other in chain.layers[:-1]):
                    found.append(
                        f"{layer.weight} takes {width} inputs, as many as a hidden space of "
                        f"{chain.id} has: it may read that space (a second head) while "
                        f"{chain.id} rescales it"
                    )
                    break
        for suffix, info in module.tensors.items():
            if info.name in placed or not info.is_supported_float:
                continue
            shape = tuple(info.shape)
            as_bias = (
                layer is not None
                and suffix == "bias"
                and not norm
                and bias_problem(layer, checkpoint) is None
            )
            if len(shape) <= 1 and not (as_bias or norm):
                found.append(
                    f"{info.name} {shape} is neither a layer's bias nor part of a normalisation "
                    "layer (a PReLU's slopes, a gate, a learned shift?)"
                )
                continue
            if (
                layer is not None
                and suffix == "weight"
                and not norm
                and layer.in_features in hidden
            ):
                found.append(
                    f"{info.name} takes {layer.in_features} inputs but is in no chain: it may "
                    f"read {hidden[layer.in_features]} (a second head), which would be "
                    "rescaled without it"
                )
                continue
            shared = [size for size in shape if size > 1 and size in hidden]
            if shared:
                found.append(
                    f"{info.name} {shape} is in no chain but has a dimension of {shared[0]}, "
                    f"the width of {hidden[shared[0]]}: it may act on that space"
                )
    return tuple(dict.fromkeys(found))


def batch_norm_symmetries(checkpoint: Checkpoint) -> list[Symmetry]:
    """conv/linear → batch norm → conv/linear, from module order and names alone.

    A layer directly followed by a batch norm of its width: the norm's running statistics
    absorb the layer's output scale (to first order: eps). A batch norm directly followed by
    a layer of the same parent module (conv1, bn1, conv2 inside one block): the layer's
    columns absorb the norm's gain — assuming ReLU or nothing between them. A norm followed
    by a layer of another module is left alone: a residual add may sit between them.
    """
    modules = [
        m
        for m in group_modules(checkpoint)
        if any(i.is_supported_float for i in m.tensors.values())
    ]
    found: list[Symmetry] = []
    for previous, current in zip(modules, modules[1:], strict=False):
        layer = as_layer(previous)
        if layer is not None and not is_normalisation(previous) and _is_batch_norm(current):
            stats_shape = current.tensors["running_mean"].shape
            if stats_shape == (layer.out_features,) and bias_problem(layer, checkpoint) is None:
                members = [Member(layer.weight, 0, 1)]
                if layer.bias is not None:
                    members.append(Member(layer.bias, 0, 1))
                members += [
                    Member(current.tensors["running_mean"].name, 0, 1),
                    Member(current.tensors["running_var"].name, 0, 2),
                ]
                found.append(
                    Symmetry(
                        layer.prefix,
                        layer.out_features,
                        tuple(members),
                        exact=False,
                        origin="heuristic",
                        note=(
                            f"batch norm {current.prefix} absorbs it up to its eps (assumed: it "
                            f"directly follows {layer.prefix})"
                        ),
                    )
                )
        consumer = as_layer(current)
        if (
            _is_batch_norm(previous)
            and "weight" in previous.tensors
            and consumer is not None
            and not is_normalisation(current)
            and previous.prefix.rpartition(".")[0] == current.prefix.rpartition(".")[0]
        ):
            channels = (
                previous.tensors["weight"].shape[0] if previous.tensors["weight"].shape else 0
            )
            block = (
                consumer.in_features // channels
                if channels and consumer.in_features % channels == 0
                else 0
            )
            if block == 1 or (block > 1 and consumer.kind == "linear"):
                members = [Member(previous.tensors["weight"].name, 0, 1)]
                if "bias" in previous.tensors:
                    members.append(Member(previous.tensors["bias"].name, 0, 1))
                members.append(Member(consumer.weight, 1, -1, block))
                found.append(
                    Symmetry(
                        previous.prefix,
                        channels,
                        tuple(members),
                        origin="heuristic",
                        note=(
                            f"assumed: {previous.prefix} feeds {current.prefix} through ReLU "
                            "or nothing"
                        ),
                        guess=(
                            f"the flatten of {previous.prefix} into {current.prefix} is assumed "
                            f"channel-major ({block} inputs per channel)"
                            if block > 1
                            else ""
                        ),
                    )
                )
    return found


def _is_batch_norm(module: Module) -> bool:
    return all(stat in module.tensors for stat in ("running_mean", "running_var"))


def _layer_tensors(layer: Layer) -> list[str]:
    return [layer.weight] + ([layer.bias] if layer.bias else [])


def _shared_problem(layer: Layer, checkpoint: Checkpoint) -> str | None:
    for name in _layer_tensors(layer):
        others = checkpoint.shared_storage(name)
        if others:
            return f"{name} shares memory with {', '.join(others)} (tied weights)"
    return None
