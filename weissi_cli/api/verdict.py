"""What a rebalance refuses, and what its verdict leaves the user to check."""

from __future__ import annotations

import shlex
from pathlib import Path

from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.dtypes import is_supported_float
from weissi_cli.ir import Structure
from weissi_cli.structure import UNREAD
from weissi_cli.verification import Level

SHOWN = 6  # refusal reasons named in a message (all of them are in `weissi graph`)


def _way_forward(path: Path, hugging_face: bool) -> str:
    quoted = shlex.quote(str(path))
    command = f"weissi graph {quoted} --emit-spec > spec.toml"
    way = (
        f"write a spec file that states every layer, branch and activation (start from "
        f"`{command}`, then pass --spec spec.toml)"
    )
    if hugging_face:
        way += " and add --verify-with transformers to run the architecture's own code"
    return (
        way + ", or export the model with torch.export and rebalance the .pt2 (its graph is exact)"
    )


def refusal_message(path: Path, structure: Structure, hugging_face: bool) -> str:
    """Why the guessed structure is refused (exit 2), naming what it cannot place."""
    reasons = list(structure.refusals)
    named = "; ".join(reasons[:SHOWN])
    if len(reasons) > SHOWN:
        named += f"; and {len(reasons) - SHOWN} more (`weissi graph` lists them)"
    return (
        f"{path}: refusing to rebalance a structure guessed from names and shapes: {named}. "
        "--assume-relu consents to ReLU-like activations, not to a topology weissi cannot "
        f"see: {_way_forward(path, hugging_face)}"
    )


def guess_refusal(path: Path, guesses: tuple[str, ...], what: str = "rebalancing") -> str:
    """Why channel granularity refuses a flatten nothing proves (layer granularity is fine:
    one scale for every channel is right in any order)."""
    return (
        f"{path}: per-channel {what} needs to know which inputs each channel feeds, and "
        f'{"; ".join(guesses)}: state the order in a spec file (flatten = "channel-major", '
        '"channel-last" or "time-major" on the chain), export the model with torch.export '
        "(its graph proves the order), or use --granularity layer"
    )


def level_caveats(
    level: Level,
    structure: Structure,
    spec: Path | None,
    path: Path,
    ran: bool,
    hugging_face: bool = False,
) -> list[str]:
    """One line per thing the verdict's level leaves to the user (nothing for a run of the
    real network). `ran`: whether the real network was run at all; `hugging_face`: a
    config.json is beside the checkpoint."""
    if level in ("real_network", "approximate"):
        return []
    origins = {chain.origin for chain in structure.chains}
    origins |= {symmetry.origin for symmetry in structure.symmetries}
    real = (
        "add --verify-with transformers to run the architecture's own code on both files"
        if hugging_face
        else "rebalance a torch.export .pt2 of the model for a verdict on the real network"
    )
    found: list[str] = []
    if "heuristic" in origins:
        guessed = [chain for chain in structure.chains if chain.origin == "heuristic"]
        layers = "; ".join(" → ".join(layer.prefix for layer in c.layers) for c in guessed)
        found.append(
            f"{layers or 'the structure'} guessed from names and shapes (--assume-relu): "
            "confirm these layers run in this order with ReLU-like activations between them "
            f"and nothing else reads their hidden outputs; pin them with a spec file, or {real}"
        )
    if "spec" in origins:
        found.append(
            f"the structure is what {spec} declares: confirm it matches the model's forward "
            f"pass (layer order, activations, flattens, branches), or {real}"
        )
    families = sorted(o.removeprefix("config:") for o in origins if o.startswith("config:"))
    if families and not ran:
        found.append(
            f"the {', '.join(families)} structure is weissi's registry entry and the model was "
            "not run: add --verify-with transformers to run the architecture's own code on "
            "both files"
        )
    traced = sorted(o.removeprefix("graph:") for o in origins if o.startswith("graph:"))
    if traced and not ran:
        found.append(
            f"the structure was traced from {traced[0]}'s own code but the model was not run "
            f"on the files: {real}"
        )
    onnx = path.suffix.lower() == ".onnx" or (path.is_dir() and any(path.glob("*.onnx")))
    if "graph" in origins and not ran and not onnx:  # an ONNX run says why it did not run
        found.append(
            f"{path.name} records no example inputs, so the program was not run: export it "
            "with example inputs to have both programs run"
        )
    if level == "values_only" and not found:
        found.append("only the rewritten values were checked; nothing about the function was run")
    return found


UNREAD_FLAG = "--allow-unread"


def unread_tensors(checkpoint: Checkpoint, structure: Structure) -> tuple[list[str], str]:
    """The floating tensors of the checkpoint that the traced graph does not read (integer
    ones, like a batch norm's step count, cannot carry a scale), and which forward pass
    was traced."""
    reasons = {
        entry.name: entry.reason.removeprefix(UNREAD).strip(" ()")
        for entry in structure.unassigned
        if entry.reason.startswith(UNREAD)
    }
    names = [
        info.name
        for info in checkpoint.tensors
        if info.name in reasons and is_supported_float(info.dtype)
    ]
    return names, reasons[names[0]] if names else ""


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def unread_caveat(names: list[str], forward: str) -> str:
    """What a rewrite leaves open while the traced forward pass reads none of `names`."""
    return (
        f"the traced forward pass ({forward}) does not read {_named(names)}, so nothing "
        "proves how they relate to the rescaled tensors: a path that reads them (an auxiliary "
        "head, a branch for training or for other input shapes) may read a rescaled hidden "
        "layer and then compute something else; run that path on both files before relying "
        "on it"
    )


def unread_refusal(path: Path, names: list[str], forward: str, command: str) -> str:
    """Why a rewrite traced from the model's code is refused while it reads none of `names`."""
    return (
        f"{path}: refusing to rebalance: the model's forward pass as traced ({forward}) does "
        f"not read {_named(names)}; another mode or input shape may read them from a hidden "
        "layer that rebalancing rescales (an auxiliary head, a training-only branch), which "
        "the traced structure cannot show. Rebalancing runs the module in eval and train mode "
        "and at a second batch size and fails if that changes its outputs; to proceed on that "
        f"check and accept the rest as unproven: {command}"
    )
