"""Structure spec files (TOML, version 1): reading them strictly, and writing them."""

from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError, StructureError
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.io.documents import read_toml
from weissi_cli.ir import (
    ACTIVATIONS,
    Activation,
    Chain,
    Layer,
    Member,
    Structure,
    Symmetry,
    Unassigned,
)
from weissi_cli.structure.layers import bias_problem, connection, group_modules

SPEC_VERSION = 1
_TOP_LEVEL_KEYS = {"version", "chain", "symmetry"}
_CHAIN_KEYS = {"id", "activation", "layers"}
_SYMMETRY_KEYS = {"id", "size", "tie", "exact", "note", "members", "kind", "block"}
_MEMBER_KEYS = {"tensor", "axis", "exponent", "block", "offset"}


def read_spec(path: Path) -> dict[str, Any]:
    return read_toml(path, "spec file")


def structure_from_spec(path: Path, checkpoint: Checkpoint) -> Structure:
    """The chains a spec file declares, checked against the checkpoint's tensors."""
    document = read_spec(path)
    unknown = sorted(set(document) - _TOP_LEVEL_KEYS)
    if unknown:
        raise InputError(
            f"{path}: unknown key(s) {', '.join(unknown)}; spec version {SPEC_VERSION} has "
            "`version`, `[[chain]]` and `[[symmetry]]` tables"
        )
    version = document.get("version")
    if type(version) is not int or version != SPEC_VERSION:
        raise InputError(f"{path}: `version = {SPEC_VERSION}` is required (found {version!r})")
    tables = document.get("chain", [])
    symmetry_tables = document.get("symmetry", [])
    if not isinstance(tables, list) or not isinstance(symmetry_tables, list):
        raise InputError(f"{path}: `chain` and `symmetry` must be arrays of tables ([[chain]])")
    if not tables and not symmetry_tables:
        raise InputError(f"{path}: declares no [[chain]] or [[symmetry]] tables")
    chains: list[Chain] = []
    owner: dict[str, str] = {}
    for index, table in enumerate(tables):
        chain = _chain_from_table(path, index, table, checkpoint)
        for layer in chain.layers:
            if layer.prefix in owner:
                raise StructureError(
                    f"{path}: layer {layer.prefix!r} is in both {owner[layer.prefix]} "
                    f"and {chain.id}"
                )
            owner[layer.prefix] = chain.id
        chains.append(chain)
    ids = [chain.id for chain in chains]
    duplicates = _repeated(ids)
    if duplicates:
        raise StructureError(f"{path}: chain id(s) {', '.join(duplicates)} used twice")
    symmetries = [
        _symmetry_from_table(path, index, table, checkpoint)
        for index, table in enumerate(symmetry_tables)
    ]
    repeated = _repeated(ids + [symmetry.id for symmetry in symmetries])
    if repeated:
        raise StructureError(f"{path}: id(s) {', '.join(repeated)} used twice")
    claimed = {name for chain in chains for name in chain.tensor_names()}
    claimed |= {member.tensor for symmetry in symmetries for member in symmetry.members}
    unassigned = tuple(
        Unassigned(
            info.name,
            "not in the spec file" if info.is_supported_float else f"{info.dtype} tensor: skipped",
        )
        for info in checkpoint.tensors
        if info.name not in claimed
    )
    return Structure(tuple(chains), unassigned, "spec", symmetries=tuple(symmetries))


def _repeated(items: list[str]) -> list[str]:
    """The items that occur more than once, sorted (in linear time: a spec may list
    hundreds of thousands of layers)."""
    if len(set(items)) == len(items):
        return []
    return sorted(item for item, count in Counter(items).items() if count > 1)


def _chain_from_table(path: Path, index: int, table: Any, checkpoint: Checkpoint) -> Chain:
    where = f"{path}: [[chain]] #{index + 1}"
    if not isinstance(table, dict):
        raise InputError(f"{where} is not a table")
    unknown = sorted(set(table) - _CHAIN_KEYS)
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: id, activation, layers)"
        )
    chain_id = table.get("id", f"chain{index}")
    if not isinstance(chain_id, str) or not chain_id:
        raise InputError(f"{where}: `id` must be a non-empty string")
    activation = table.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise InputError(
            f"{where}: activation {activation!r} is not positively homogeneous; use one of "
            f"{', '.join(ACTIVATIONS)}"
        )
    prefixes = table.get("layers")
    if (
        not isinstance(prefixes, list)
        or not prefixes
        or not all(isinstance(p, str) for p in prefixes)
    ):
        raise InputError(f"{where}: `layers` must be a non-empty list of layer names")
    repeated = _repeated(prefixes)
    if repeated:
        raise StructureError(f"{where}: layer(s) {', '.join(repeated)} appear more than once")
    layers = [_layer(path, prefix, checkpoint) for prefix in prefixes]
    blocks: list[int] = []
    notes: list[str] = []
    for producer, consumer in zip(layers, layers[1:], strict=False):
        block, note = connection(producer, consumer)
        if block is None:
            raise StructureError(f"{where}: {note}; they cannot be consecutive layers of a chain")
        blocks.append(block)
        if note:
            notes.append(note)
    if len(layers) == 1:
        notes.append(f"a chain of one layer ({layers[0].prefix}) has no scale symmetry")
    typed_activation: Activation = activation
    return Chain(chain_id, "spec", typed_activation, tuple(layers), tuple(blocks), tuple(notes))


def _symmetry_from_table(path: Path, index: int, table: Any, checkpoint: Checkpoint) -> Symmetry:
    where = f"{path}: [[symmetry]] #{index + 1}"
    if not isinstance(table, dict):
        raise InputError(f"{where} is not a table")
    unknown = sorted(set(table) - _SYMMETRY_KEYS)
    if unknown:
        known = ", ".join(sorted(_SYMMETRY_KEYS))
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {known})")
    symmetry_id = table.get("id", f"symmetry{index}")
    size, tie = table.get("size"), table.get("tie", 1)
    exact, note = table.get("exact", True), table.get("note", "")
    kind, block = table.get("kind", ""), table.get("block", "")
    if not isinstance(kind, str) or not isinstance(block, str):
        raise InputError(f"{where}: `kind` and `block` (labels for reports) must be strings")
    if not isinstance(symmetry_id, str) or not symmetry_id:
        raise InputError(f"{where}: `id` must be a non-empty string")
    if type(size) is not int or size < 1:
        raise InputError(f"{where}: `size` (channels) must be a positive integer")
    if type(tie) is not int or tie < 1 or size % tie:
        raise InputError(f"{where}: `tie` must be a positive integer that divides size {size}")
    if not isinstance(exact, bool) or not isinstance(note, str):
        raise InputError(f"{where}: `exact` must be true or false and `note` a string")
    members = table.get("members")
    if not isinstance(members, list) or not members:
        raise InputError(f"{where}: `members` must be a non-empty array of inline tables")
    parsed = tuple(_member(where, item, size, checkpoint) for item in members)
    return Symmetry(symmetry_id, size, parsed, tie, exact, "spec", note, kind, block)


def _member(where: str, item: Any, size: int, checkpoint: Checkpoint) -> Member:
    if not isinstance(item, dict):
        raise InputError(
            f"{where}: every member is an inline table "
            "{ tensor = ..., axis = ..., exponent = ... }"
        )
    unknown = sorted(set(item) - _MEMBER_KEYS)
    if unknown:
        raise InputError(f"{where}: member has unknown key(s) {', '.join(unknown)}")
    tensor = item.get("tensor")
    axis, exponent = item.get("axis"), item.get("exponent")
    block, offset = item.get("block", 1), item.get("offset", 0)
    if (
        not isinstance(tensor, str)
        or type(axis) is not int
        or type(exponent) is not int
        or type(block) is not int
        or type(offset) is not int
    ):
        raise InputError(
            f"{where}: a member needs `tensor` (string), `axis` and `exponent` (integers); "
            "`block` and `offset` are integers too"
        )
    if tensor not in checkpoint:
        close = difflib.get_close_matches(tensor, [info.name for info in checkpoint.tensors], n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise StructureError(f"{where}: unknown tensor {tensor!r}{hint}")
    info = checkpoint.info(tensor)
    if not info.is_supported_float:
        raise StructureError(
            f"{where}: {tensor} is {info.dtype}; only float tensors can be rescaled"
        )
    if not 0 <= axis < len(info.shape):
        raise StructureError(
            f"{where}: {tensor} has {len(info.shape)} axes, so axis {axis} does not exist"
        )
    if exponent == 0 or block < 1 or offset < 0:
        raise StructureError(
            f"{where}: {tensor}: exponent must be non-zero, block >= 1, offset >= 0"
        )
    if offset + size * block > info.shape[axis]:
        raise StructureError(
            f"{where}: {tensor}: {size} channels × block {block} from offset {offset} run past "
            f"axis {axis} (size {info.shape[axis]})"
        )
    return Member(tensor, axis, exponent, block, offset)


def _layer(path: Path, prefix: str, checkpoint: Checkpoint) -> Layer:
    weight = f"{prefix}.weight"
    if weight not in checkpoint:
        # The checkpoint's layers are grouped only here, for the hint: a spec may list
        # hundreds of thousands of layers, and grouping them costs a pass over every name.
        layer_prefixes = [m.prefix for m in group_modules(checkpoint) if "weight" in m.tensors]
        close = difflib.get_close_matches(prefix, layer_prefixes, n=3)
        hint = (
            f"; did you mean {' or '.join(close)}?"
            if close
            else "; `weissi graph CKPT` lists the layers"
        )
        raise StructureError(
            f"{path}: unknown layer {prefix!r}: the checkpoint has no tensor {weight!r}{hint}"
        )
    info = checkpoint.info(weight)
    if not info.is_supported_float or not 2 <= len(info.shape) <= 5:
        raise StructureError(
            f"{path}: layer {prefix!r}: {weight} is {info.dtype} with shape {info.shape}; a layer "
            "weight is a float tensor of 2 to 5 dims"
        )
    bias = f"{prefix}.bias"
    layer = Layer(prefix, weight, bias if bias in checkpoint else None, info.shape)
    problem = bias_problem(layer, checkpoint)
    if problem is not None:
        raise StructureError(f"{path}: layer {prefix!r}: {problem}")
    for name in (layer.weight, layer.bias):
        if name is not None and checkpoint.shared_storage(name):
            others = ", ".join(checkpoint.shared_storage(name))
            raise StructureError(
                f"{path}: layer {prefix!r}: {name} shares memory with {others} (tied weights); "
                "rescaling it would rescale them too"
            )
    return layer


def emit_spec(structure: Structure, source: str) -> str:
    """A spec file that pins `structure`; reading it back gives the same chains."""
    lines = [
        f"# weissi structure spec for {source}",
        "# Review it, edit it, and pass it back with --spec.",
    ]
    lines += [f"# note: {assumption}" for assumption in structure.assumptions]
    lines += ["", f"version = {SPEC_VERSION}"]
    for chain in structure.chains:
        lines.append("")
        lines.append(f"# {chain.id}: {chain.depth} layers, found by {chain.origin}")
        lines += [f"# {note}" for note in chain.notes]
        lines.append("[[chain]]")
        lines.append(f"id = {_quote(chain.id)}")
        lines.append(f"activation = {_quote(chain.activation)}")
        names = ", ".join(_quote(layer.prefix) for layer in chain.layers)
        lines.append(f"layers = [{names}]")
    for symmetry in structure.symmetries:
        lines.append("")
        lines.append(f"# {symmetry.id}: {symmetry.size} channels, found by {symmetry.origin}")
        lines.append("[[symmetry]]")
        lines.append(f"id = {_quote(symmetry.id)}")
        lines.append(f"size = {symmetry.size}")
        if symmetry.tie != 1:
            lines.append(f"tie = {symmetry.tie}")
        lines.append(f"exact = {'true' if symmetry.exact else 'false'}")
        if symmetry.note:
            lines.append(f"note = {_quote(symmetry.note)}")
        if symmetry.kind:
            lines.append(f"kind = {_quote(symmetry.kind)}")
        if symmetry.group:
            lines.append(f"block = {_quote(symmetry.group)}")
        lines.append("members = [")
        for member in symmetry.members:
            fields = [
                f"tensor = {_quote(member.tensor)}",
                f"axis = {member.axis}",
                f"exponent = {member.exponent}",
            ]
            if member.block != 1:
                fields.append(f"block = {member.block}")
            if member.offset:
                fields.append(f"offset = {member.offset}")
            lines.append("  { " + ", ".join(fields) + " },")
        lines.append("]")
    for stop in structure.stops:
        lines.append(f"# dropped: {'+'.join(stop.producers)} at {stop.node}: {stop.reason}")
    if not structure.chains and not structure.symmetries:
        lines.append("# nothing was found: add [[chain]] or [[symmetry]] tables by hand")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's), keeping non-ASCII as written."""
    return json.dumps(value, ensure_ascii=False)
