"""Structure spec files (TOML): reading them strictly, and writing them.

Version 2 adds, on a [[chain]]: `flatten` (the order in which a conv's channels are
flattened into the next linear layer: "channel-major", "channel-last" or "time-major",
for every flatten of the chain, or a table keyed by the flattened layer), with
`features_per_step` (time-major over a [C, T, F] map: F); `slope` (a leaky ReLU's negative
slope) and `slopes` (a PReLU's slope tensors, one per hidden space, never scaled). On a
[[symmetry]]: `guess` (what its channel layout takes for granted; per-channel rebalancing
refuses it). Version 1 files read as before.
"""

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
    FLATTEN_ORDERS,
    LEAKY_SLOPE,
    Activation,
    Chain,
    Flatten,
    Layer,
    Member,
    Structure,
    Symmetry,
    Unassigned,
)
from weissi_cli.structure.layers import bias_problem, connection, group_modules

SPEC_VERSION = 2
VERSIONS = (1, 2)
_TOP_LEVEL_KEYS = {"version", "chain", "symmetry"}
_CHAIN_KEYS = {"id", "activation", "layers"}
_CHAIN_KEYS_2 = {"flatten", "features_per_step", "slope", "slopes"}
_SYMMETRY_KEYS = {"id", "size", "tie", "exact", "note", "members", "kind", "block"}
_SYMMETRY_KEYS_2 = {"guess"}
_MEMBER_KEYS = {"tensor", "axis", "exponent", "block", "offset"}
_MEMBER_KEYS_2 = {"repeat"}


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
    if type(version) is not int or version not in VERSIONS:
        raise InputError(
            f"{path}: `version = {SPEC_VERSION}` is required (found {version!r}; version 1 "
            "files are read too)"
        )
    tables = document.get("chain", [])
    symmetry_tables = document.get("symmetry", [])
    if not isinstance(tables, list) or not isinstance(symmetry_tables, list):
        raise InputError(f"{path}: `chain` and `symmetry` must be arrays of tables ([[chain]])")
    if not tables and not symmetry_tables:
        raise InputError(f"{path}: declares no [[chain]] or [[symmetry]] tables")
    chains: list[Chain] = []
    owner: dict[str, str] = {}
    for index, table in enumerate(tables):
        chain = _chain_from_table(path, index, table, checkpoint, version)
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
        _symmetry_from_table(path, index, table, checkpoint, version)
        for index, table in enumerate(symmetry_tables)
    ]
    repeated = _repeated(ids + [symmetry.id for symmetry in symmetries])
    if repeated:
        raise StructureError(f"{path}: id(s) {', '.join(repeated)} used twice")
    scaled = {name: chain.id for chain in chains for name in chain.tensor_names()}
    for chain in chains:
        for slope in chain.slopes:
            if slope in scaled:
                raise StructureError(
                    f"{path}: {slope} is a PReLU slope of {chain.id} and a weight or bias of "
                    f"{scaled[slope]}; slopes are never scaled"
                )
    claimed = {name for chain in chains for name in chain.claimed()}
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


def _chain_from_table(
    path: Path,
    index: int,
    table: Any,
    checkpoint: Checkpoint,
    version: int = SPEC_VERSION,
) -> Chain:
    where = f"{path}: [[chain]] #{index + 1}"
    if not isinstance(table, dict):
        raise InputError(f"{where} is not a table")
    known = _CHAIN_KEYS | (_CHAIN_KEYS_2 if version >= 2 else set())
    unknown = sorted(set(table) - known)
    if unknown:
        newer = sorted(set(unknown) & _CHAIN_KEYS_2)
        hint = f"; {', '.join(newer)} need(s) `version = 2`" if newer else ""
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: "
            f"{', '.join(sorted(known))}){hint}"
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
    link_notes: list[str] = []
    for producer, consumer in zip(layers, layers[1:], strict=False):
        block, note = connection(producer, consumer)
        if block is None:
            raise StructureError(f"{where}: {note}; they cannot be consecutive layers of a chain")
        blocks.append(block)
        link_notes.append(note)
    flattens = _flattens(where, table, layers, blocks)
    notes = [
        f"{producer.prefix} is flattened into {consumer.prefix}: {flatten.describe()}"
        if flatten is not None and flatten.proven
        else note
        for producer, consumer, flatten, note in zip(
            layers, layers[1:], flattens, link_notes, strict=False
        )
        if note
    ]
    if len(layers) == 1:
        notes.append(f"a chain of one layer ({layers[0].prefix}) has no scale symmetry")
    slope, slopes = _slopes(where, table, activation, layers, checkpoint)
    typed_activation: Activation = activation
    return Chain(
        chain_id,
        "spec",
        typed_activation,
        tuple(layers),
        tuple(blocks),
        tuple(notes),
        flattens=tuple(flattens),
        slope=slope,
        slopes=slopes,
    )


def _flattens(
    where: str, table: dict[str, Any], layers: list[Layer], blocks: list[int]
) -> list[Flatten | None]:
    """Per link, the stated flatten (unstated: channel-major, assumed)."""
    stated = table.get("flatten")
    features = table.get("features_per_step")
    flattened = {
        producer.prefix: block
        for producer, block in zip(layers, blocks, strict=False)
        if block != 1
    }
    orders = ", ".join(f'"{order}"' for order in FLATTEN_ORDERS)
    if stated is None:
        if features is not None:
            raise InputError(f'{where}: `features_per_step` goes with flatten = "time-major"')
        return [None if block == 1 else Flatten("", block) for block in blocks]
    if isinstance(stated, str):
        by_layer = dict.fromkeys(flattened, stated)
    elif isinstance(stated, dict) and all(isinstance(v, str) for v in stated.values()):
        unknown = sorted(set(stated) - set(flattened))
        if unknown:
            raise StructureError(
                f"{where}: flatten names {', '.join(unknown)}, which the chain does not "
                f"flatten into its next layer (flattened here: {', '.join(flattened) or 'none'})"
            )
        by_layer = {prefix: stated.get(prefix, "") for prefix in flattened}
    else:
        raise InputError(
            f"{where}: `flatten` is one of {orders}, or a table of them keyed by the "
            "flattened layer"
        )
    if not flattened:
        raise StructureError(
            f"{where}: flatten is given, but no layer of the chain is flattened into the next"
        )
    bad = sorted({order for order in by_layer.values() if order and order not in FLATTEN_ORDERS})
    if bad:
        raise InputError(f"{where}: unknown flatten order(s) {', '.join(bad)}; use one of {orders}")
    uses_time = "time-major" in by_layer.values()
    if features is not None and (type(features) is not int or features < 1 or not uses_time):
        raise InputError(
            f"{where}: `features_per_step` is a positive integer, for time-major flattens only"
        )
    found: list[Flatten | None] = []
    for producer, consumer, block in zip(layers, layers[1:], blocks, strict=False):
        order = by_layer.get(producer.prefix, "")
        if block == 1:
            found.append(None)
            continue
        step = features if features is not None else 1
        if order == "time-major" and features is None and producer.kind != "conv1d":
            raise InputError(
                f"{where}: a time-major flatten of {producer.prefix} ({producer.kind}) needs "
                "`features_per_step` (F of its [C, T, F] map)"
            )
        try:
            found.append(Flatten.stated(order, block, step) if order else Flatten("", block))
        except ValueError as error:
            raise StructureError(
                f"{where}: {producer.prefix} into {consumer.prefix} ({block} inputs per "
                f"channel): {error}"
            ) from None
    return found


def _slopes(
    where: str,
    table: dict[str, Any],
    activation: str,
    layers: list[Layer],
    checkpoint: Checkpoint,
) -> tuple[float, tuple[str, ...]]:
    """A leaky ReLU's slope, or a PReLU's slope tensors (one per hidden space)."""
    slope = table.get("slope", LEAKY_SLOPE)
    slopes = table.get("slopes")
    if "slope" in table and (
        activation != "leaky_relu" or type(slope) not in (int, float) or not 0 <= slope < 1e6
    ):
        raise InputError(f'{where}: `slope` (a number >= 0) goes with activation = "leaky_relu"')
    if activation != "prelu":
        if slopes is not None:
            raise InputError(f'{where}: `slopes` goes with activation = "prelu"')
        return float(slope), ()
    hidden = layers[:-1]
    if (
        not isinstance(slopes, list)
        or len(slopes) != len(hidden)
        or not all(isinstance(name, str) for name in slopes)
    ):
        raise InputError(
            f"{where}: a PReLU chain names its slope tensors: `slopes` lists one per hidden "
            f"space ({len(hidden)} here), in order"
        )
    for name, producer in zip(slopes, hidden, strict=True):
        if name not in checkpoint:
            close = difflib.get_close_matches(name, [i.name for i in checkpoint.tensors], n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise StructureError(f"{where}: unknown slope tensor {name!r}{hint}")
        info = checkpoint.info(name)
        if not info.is_supported_float or info.numel not in (1, producer.out_features):
            raise StructureError(
                f"{where}: {name} ({info.dtype}, shape {info.shape}) cannot be the PReLU after "
                f"{producer.prefix}: it needs 1 or {producer.out_features} float slopes"
            )
    return LEAKY_SLOPE, tuple(slopes)


def _symmetry_from_table(
    path: Path, index: int, table: Any, checkpoint: Checkpoint, version: int = SPEC_VERSION
) -> Symmetry:
    where = f"{path}: [[symmetry]] #{index + 1}"
    if not isinstance(table, dict):
        raise InputError(f"{where} is not a table")
    keys = _SYMMETRY_KEYS | (_SYMMETRY_KEYS_2 if version >= 2 else set())
    unknown = sorted(set(table) - keys)
    if unknown:
        known = ", ".join(sorted(keys))
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {known})")
    guess = table.get("guess", "")
    if not isinstance(guess, str):
        raise InputError(f"{where}: `guess` must be a string")
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
    parsed = tuple(
        member for item in members for member in _members(where, item, size, checkpoint, version)
    )
    return Symmetry(symmetry_id, size, parsed, tie, exact, "spec", note, kind, block, guess)


def _members(
    where: str, item: Any, size: int, checkpoint: Checkpoint, version: int = SPEC_VERSION
) -> tuple[Member, ...]:
    """One member table: `repeat` (version 2) lays the pattern of `size` channels × `block`
    entries that many times along the axis, one after the other (a channel-last or
    time-major flatten: channel c covers entries offset + r·size·block + c·block ...)."""
    if not isinstance(item, dict):
        raise InputError(
            f"{where}: every member is an inline table "
            "{ tensor = ..., axis = ..., exponent = ... }"
        )
    keys = _MEMBER_KEYS | (_MEMBER_KEYS_2 if version >= 2 else set())
    unknown = sorted(set(item) - keys)
    if unknown:
        raise InputError(f"{where}: member has unknown key(s) {', '.join(unknown)}")
    tensor = item.get("tensor")
    axis, exponent = item.get("axis"), item.get("exponent")
    block, offset = item.get("block", 1), item.get("offset", 0)
    repeat = item.get("repeat", 1)
    if (
        not isinstance(tensor, str)
        or type(axis) is not int
        or type(exponent) is not int
        or type(block) is not int
        or type(offset) is not int
        or type(repeat) is not int
    ):
        raise InputError(
            f"{where}: a member needs `tensor` (string), `axis` and `exponent` (integers); "
            "`block`, `offset` and `repeat` are integers too"
        )
    if repeat < 1:
        raise StructureError(f"{where}: {tensor}: repeat must be >= 1")
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
    if offset + repeat * size * block > info.shape[axis]:
        times = f" × repeat {repeat}" if repeat != 1 else ""
        raise StructureError(
            f"{where}: {tensor}: {size} channels × block {block}{times} from offset {offset} "
            f"run past axis {axis} (size {info.shape[axis]})"
        )
    period = size * block
    return tuple(Member(tensor, axis, exponent, block, offset + r * period) for r in range(repeat))


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
    lines += [f"# not placed (rebalance --assume-relu refuses): {r}" for r in structure.refusals]
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
        lines += _emit_chain_extras(chain)
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
        if symmetry.guess:
            lines.append(
                "# check that layout; state the true one in the members (block, repeat), "
                "then delete `guess`"
            )
            lines.append(f"guess = {_quote(symmetry.guess)}")
        lines.append("members = [")
        for member, repeat in _runs(symmetry.members, symmetry.size):
            fields = [
                f"tensor = {_quote(member.tensor)}",
                f"axis = {member.axis}",
                f"exponent = {member.exponent}",
            ]
            if member.block != 1:
                fields.append(f"block = {member.block}")
            if member.offset:
                fields.append(f"offset = {member.offset}")
            if repeat != 1:
                fields.append(f"repeat = {repeat}")
            lines.append("  { " + ", ".join(fields) + " },")
        lines.append("]")
    for stop in structure.stops:
        lines.append(f"# dropped: {'+'.join(stop.producers)} at {stop.node}: {stop.reason}")
    if not structure.chains and not structure.symmetries:
        lines.append("# nothing was found: add [[chain]] or [[symmetry]] tables by hand")
    return "\n".join(lines) + "\n"


def _runs(members: tuple[Member, ...], size: int) -> list[tuple[Member, int]]:
    """Consecutive members that repeat one pattern along an axis, as (first, repeat): what
    `repeat` in a member table reads back into."""
    runs: list[tuple[Member, int]] = []
    for member in members:
        if runs:
            first, count = runs[-1]
            period = size * first.block
            same = (first.tensor, first.axis, first.exponent, first.block) == (
                member.tensor,
                member.axis,
                member.exponent,
                member.block,
            )
            if same and member.offset == first.offset + count * period:
                runs[-1] = (first, count + 1)
                continue
        runs.append((member, 1))
    return runs


def _emit_chain_extras(chain: Chain) -> list[str]:
    """The version 2 keys a chain needs: its flatten orders, its activation's slopes."""
    lines: list[str] = []
    if chain.activation == "leaky_relu" and chain.slope != LEAKY_SLOPE:
        lines.append(f"slope = {chain.slope!r}")
    if chain.slopes:
        lines.append(f"slopes = [{', '.join(_quote(name) for name in chain.slopes)}]")
    links = [
        (producer, flatten)
        for index, producer in enumerate(chain.layers[:-1])
        if (flatten := chain.flatten(index)) is not None
    ]
    stated = {producer.prefix: flatten for producer, flatten in links if flatten.proven}
    if not links:
        return lines
    if not stated:
        lines.append(
            f"# flatten = {_quote('channel-major')}  # state the order (one of "
            f"{', '.join(FLATTEN_ORDERS)}) to rebalance per channel"
        )
        return lines
    orders = {flatten.order for flatten in stated.values()}
    if len(stated) == len(links) and len(orders) == 1:
        lines.append(f"flatten = {_quote(orders.pop())}")
    else:
        entries = ", ".join(f"{_quote(k)} = {_quote(f.order)}" for k, f in stated.items())
        lines.append(f"flatten = {{ {entries} }}")
    steps = {f.run for f in stated.values() if f.order == "time-major"}
    if steps:
        lines.append(f"features_per_step = {max(steps)}")
    return lines


def _quote(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's), keeping non-ASCII as written."""
    return json.dumps(value, ensure_ascii=False)
