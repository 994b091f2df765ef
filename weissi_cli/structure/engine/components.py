"""From solved atoms to the IR: each free component of parameter atoms is one channel of a
symmetry; channels whose members repeat with a fixed stride form one `Symmetry`.

A channel (a root of the union-find) touches runs of consecutive indices of some tensor
axes, each with an exponent. Channels with the same runs (tensors, axes, exponents, run
lengths), whose run starts advance by the run length from one channel to the next, are the
channels `j = 0, 1, ...` of one symmetry with members `Member(tensor, axis, exponent,
block=length, offset=start of channel 0)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.ir import Member, Stop, Symmetry
from weissi_cli.structure.engine.atoms import ONE, Atoms, Ids
from weissi_cli.structure.engine.walk import WalkState


@dataclass(frozen=True)
class Entries:
    """Every (tensor, axis, index) whose scale follows an atom, as parallel arrays."""

    tensor: npt.NDArray[np.int32]
    axis: npt.NDArray[np.int8]
    index: npt.NDArray[np.int64]
    atom: Ids
    exponent: npt.NDArray[np.int8]


def entries(state: WalkState, names: Sequence[str]) -> Entries:
    number = {name: position for position, name in enumerate(names)}
    tensors, axes, indices, atoms, exponents = [], [], [], [], []
    for name, scale in state.parameters.items():
        if name not in number:
            continue
        for factor in scale.factors:
            (axis,) = factor.dims
            ids = np.asarray(factor.ids).ravel()
            tensors.append(np.full(ids.size, number[name], np.int32))
            axes.append(np.full(ids.size, axis, np.int8))
            indices.append(np.arange(ids.size, dtype=np.int64))
            atoms.append(ids)
            exponents.append(np.ones(ids.size, np.int8))
    for derived in state.derived:
        if derived.tensor not in number:
            continue
        ids = np.asarray(derived.ids).ravel()
        tensors.append(np.full(ids.size, number[derived.tensor], np.int32))
        axes.append(np.full(ids.size, derived.axis, np.int8))
        indices.append(np.arange(ids.size, dtype=np.int64))
        atoms.append(ids)
        exponents.append(np.full(ids.size, derived.exponent, np.int8))
    if not atoms:
        empty = np.zeros(0, np.int64)
        return Entries(
            empty.astype(np.int32), empty.astype(np.int8), empty, empty, empty.astype(np.int8)
        )
    return Entries(
        np.concatenate(tensors),
        np.concatenate(axes),
        np.concatenate(indices),
        np.concatenate(atoms),
        np.concatenate(exponents),
    )


def symmetries(
    state: WalkState,
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    origin: str,
    buffers: frozenset[str] = frozenset(),
) -> list[Symmetry]:
    """The free components of the solved walk as IR symmetries (`buffers`, like running
    statistics, are members but never name a symmetry)."""
    found = entries(state, names)
    if not found.atom.size:
        return []
    roots, parity = state.atoms.find(found.atom)
    free = roots != ONE
    root = roots[free]
    if not root.size:
        return []
    tensor = found.tensor[free].astype(np.int64)
    axis = found.axis[free].astype(np.int64)
    exponent = np.where(parity[free] == 1, -found.exponent[free], found.exponent[free])
    index = found.index[free]
    # Orient each channel so that its first gain or bias (else its first weight row) counts
    # +1: producers positive, consumers negative, as a reader expects. The priority rides
    # in the top bits of the sort key, so one sort finds each channel's deciding entry.
    rank = np.array([len(shapes[name]) for name in names], dtype=np.int64)
    rows = (axis == 0) & (np.abs(exponent) == 1)
    priority = np.where(rows, np.where(rank[tensor] == 1, 0, 1), 2)
    order = np.lexsort((index, axis, tensor, priority, root))
    root = root[order]
    starts = np.flatnonzero(np.r_[True, root[1:] != root[:-1]])
    counts = np.diff(np.r_[starts, root.size])
    sign = np.repeat(np.sign(exponent[order[starts]]), counts)
    # then (tensor, axis, exponent, index) packed in one key, exponents oriented:
    # tensors < 2**20, axes < 8, exponents in -8..7, indices < 2**32
    order_tensor, order_axis = tensor[order], axis[order]
    oriented = exponent[order] * sign
    place = ((order_tensor * 8 + order_axis) * 16 + (oriented + 8)) << 32 | index[order]
    again = np.lexsort((place, root))
    root, place = root[again], place[again]
    index = place & 0xFFFFFFFF
    packed = place >> 32
    exponent = (packed % 16 - 8).astype(np.int8)
    axis = (packed // 16 % 8).astype(np.int8)
    tensor = (packed // 128).astype(np.int32)
    # runs of consecutive indices with one (tensor, axis, exponent) inside each channel
    same = (
        (root[1:] == root[:-1])
        & (tensor[1:] == tensor[:-1])
        & (axis[1:] == axis[:-1])
        & (exponent[1:] == exponent[:-1])
        & (index[1:] == index[:-1] + 1)
    )
    run_start = np.flatnonzero(np.r_[True, ~same])
    run_length = np.diff(np.r_[run_start, root.size])
    run_root = root[run_start]
    run_tensor, run_axis = tensor[run_start], axis[run_start]
    run_exponent, run_first = exponent[run_start], index[run_start]
    channel_start = np.flatnonzero(np.r_[True, run_root[1:] != run_root[:-1]])
    runs_per_channel = np.diff(np.r_[channel_start, run_root.size])
    # a signature per channel: its runs without their starts
    key = (
        run_tensor.astype(np.int64) * 1_000_003
        + run_axis.astype(np.int64) * 10_007
        + (run_exponent.astype(np.int64) + 8) * 101
        + run_length.astype(np.int64) * 7_919_993
    )
    position = np.arange(run_root.size) - np.repeat(channel_start, runs_per_channel)
    mixed = (key * 2_654_435_761 + position * 40_503) % (1 << 61)
    signature = np.add.reduceat(mixed, channel_start) % (1 << 61)
    signature = signature * 131 + runs_per_channel
    first_run_start = run_first[channel_start]
    channel_order = np.lexsort((first_run_start, signature))
    results: list[Symmetry] = []
    approximate = _approximate_roots(state)
    ordered_signature = signature[channel_order]
    edges = np.flatnonzero(np.r_[True, ordered_signature[1:] != ordered_signature[:-1], True])
    for group_start, group_end in zip(edges[:-1], edges[1:], strict=True):
        channels = channel_order[group_start:group_end]
        count = runs_per_channel[channels[0]]
        run_index = channel_start[channels][:, None] + np.arange(count)[None, :]
        starts_matrix = run_first[run_index]
        lengths = run_length[run_index[0]]
        steps_ok = np.all(np.diff(starts_matrix, axis=0) == lengths[None, :], axis=1)
        breaks = np.flatnonzero(~steps_ok) + 1
        bounds = np.r_[0, breaks, channels.size]
        for segment_start, segment_end in zip(bounds[:-1], bounds[1:], strict=True):
            segment = channels[segment_start:segment_end]
            first_runs = run_index[segment_start]
            members = tuple(
                Member(
                    names[int(run_tensor[r])],
                    int(run_axis[r]),
                    int(run_exponent[r]),
                    int(run_length[r]),
                    int(run_first[r]),
                )
                for r in first_runs
            )
            notes: list[str] = []
            if approximate:
                roots_here = run_root[channel_start[segment]]
                notes = sorted({approximate[r] for r in roots_here.tolist() if r in approximate})
            results.append(_symmetry(members, segment.size, origin, notes, shapes, buffers))
    number = {name: position for position, name in enumerate(names)}
    return _unique_ids(sorted(results, key=lambda s: _sort_key(s, number)))


def _approximate_roots(state: WalkState) -> dict[int, str]:
    found: dict[int, str] = {}
    for ids, note in state.approximate:
        roots, _ = state.atoms.find(np.asarray(ids).ravel())
        for root in _distinct(roots).tolist():
            if root != ONE:
                found.setdefault(int(root), note)
    return found


def module_of(tensor: str) -> str:
    return tensor.rpartition(".")[0] or tensor


_NUMBERED = re.compile(r"^\d+$")


def block_of(tensors: Sequence[str]) -> str:
    """The innermost numbered container every member lives in (`model.layers.3`), or ''."""
    parts = [t.split(".") for t in tensors]
    common: list[str] = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    for cut in range(len(common), 0, -1):
        if _NUMBERED.match(common[cut - 1]):
            return ".".join(common[:cut])
    return ""


def _symmetry(
    members: tuple[Member, ...],
    size: int,
    origin: str,
    notes: list[str],
    shapes: Mapping[str, tuple[int, ...]],
    buffers: frozenset[str] = frozenset(),
) -> Symmetry:
    members = tuple(sorted(members, key=lambda m: (m.exponent < 0, m.tensor, m.axis, m.offset)))
    tensors = [m.tensor for m in members]
    group = block_of(tensors)
    cut = len(group) + 1 if group else 0

    def short(tensor: str) -> str:
        return module_of(tensor)[cut:] or module_of(tensor)

    producers = list(dict.fromkeys(short(m.tensor) for m in members if m.exponent > 0))
    consumers = list(dict.fromkeys(short(m.tensor) for m in members if m.exponent < 0))
    kind = f"{','.join(producers)} → {','.join(consumers)}" if consumers else ",".join(producers)
    first = members[0]
    whole = shapes[first.tensor][first.axis] == size * first.block
    naming = [m for m in members if m.exponent > 0 and m.tensor not in buffers] or [
        m for m in members if m.exponent > 0
    ]
    base = "+".join(dict.fromkeys(module_of(m.tensor) for m in naming))
    identifier = base if whole else f"{base}@{first.offset}"
    return Symmetry(
        id=identifier,
        size=size,
        members=members,
        exact=not notes,
        origin=origin,
        note="; ".join([f"into {', '.join(consumers)}"] + notes) if consumers else "; ".join(notes),
        kind=kind,
        group=group,
    )


def _sort_key(symmetry: Symmetry, number: Mapping[str, int]) -> tuple[int, int, int]:
    first = symmetry.members[0]
    return (number.get(first.tensor, 0), first.axis, first.offset)


def _unique_ids(found: list[Symmetry]) -> list[Symmetry]:
    seen: dict[str, int] = {}
    result = []
    for symmetry in found:
        count = seen.get(symmetry.id, 0)
        seen[symmetry.id] = count + 1
        if count:
            from dataclasses import replace

            symmetry = replace(symmetry, id=f"{symmetry.id}#{count + 1}")
        result.append(symmetry)
    return result


def _distinct(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The distinct values, sorted (sort-based: faster than hashing for atom ids)."""
    if not values.size:
        return values
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


class _Shadow(Atoms):
    """The components the joins alone make, ignoring every forcing and contradiction: what
    would have been one symmetry, to say where it stopped."""

    def force(self, ids: Ids) -> None:
        return


def stops(state: WalkState, names: Sequence[str]) -> list[Stop]:
    """Where a would-be symmetry over parameters was forced to 1, and why: one stop per node
    and reason, naming the parameters' modules it stopped."""
    shadow = _Shadow(max(state.atoms.count, 1))
    shadow.new(state.atoms.count - 1)
    for first, second, inverse in state.joins:
        keep = (first != ONE) & (second != ONE)  # a join to the constant is a forcing
        if keep.any():
            wanted = np.broadcast_to(np.asarray(inverse), first.shape)[keep]
            shadow.join(first[keep], second[keep], wanted)
    found = entries(state, names)
    if not found.atom.size:
        return []
    roots, _ = shadow.find(found.atom)
    real, _ = state.atoms.find(found.atom)
    # Only output channels (rows, gains) make a would-be symmetry worth naming; a kernel's
    # taps or a first layer's input columns never had one.
    forced_here = (real == ONE) & (found.axis == 0)
    # a constant held fixed is no symmetry that stopped (it never was a weight)
    constant = [n for n, name in enumerate(names) if name in state.constants]
    forced_here &= ~np.isin(found.tensor, constant)
    # which tensors own each shadow component (only components with a forced output channel)
    owner_roots = roots[forced_here]
    owner_tensors = found.tensor[forced_here].astype(np.int64)
    order_pairs = np.lexsort((owner_tensors, owner_roots))
    owner_roots, owner_tensors = owner_roots[order_pairs], owner_tensors[order_pairs]
    owned = np.zeros(shadow.count, dtype=bool)
    owned[owner_roots] = True
    claimed = np.zeros(shadow.count, dtype=bool)
    grouped: dict[tuple[str, str], set[str]] = {}
    order: list[tuple[str, str]] = []
    for forcing in state.forcings:
        shadow_roots, _ = shadow.find(forcing.ids)
        fresh = shadow_roots[owned[shadow_roots] & ~claimed[shadow_roots]]
        if not fresh.size:
            continue
        claimed[fresh] = True
        key = (forcing.node, forcing.reason)
        if key not in grouped:
            grouped[key] = set()
            order.append(key)
        marked = np.zeros(shadow.count, dtype=bool)
        marked[fresh] = True
        tensors = owner_tensors[marked[owner_roots]]
        grouped[key].update(names[int(t)] for t in _distinct(tensors))
    number = {name: position for position, name in enumerate(names)}
    result = []
    for node, reason in order:
        ordered = sorted(grouped[(node, reason)], key=number.__getitem__)
        modules = tuple(dict.fromkeys(module_of(t) for t in ordered))
        result.append(Stop(modules, node, reason))
    return result
