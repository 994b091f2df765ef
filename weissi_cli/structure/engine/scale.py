"""How a value of the graph scales: a product of factors, each an array of atoms over some of
its dimensions.

A value of shape `(n0, n1, ...)` scales element `(i0, i1, ...)` by the product, over its
factors, of `c[factor.ids[i restricted to factor.dims]]`. Most values have one factor per
dimension (a weight: rows times columns). A factor covers several dimensions when a channel
dimension was split (`[hidden] -> [heads, head_dim]`): each head then keeps its own scales.
Every dimension belongs to exactly one factor. Atom 0 is the constant 1, so a dimension that
cannot carry a scale (batch, sequence, spatial positions) has a factor of zeros.

The operations here only move atoms around (views, slices, concatenations); where an
operation would need a product of two free factors in one place, it forces them to 1
instead (`Atoms.force`): the symmetries found are then fewer, never wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from weissi_cli.structure.engine.atoms import Atoms, Ids


@dataclass(frozen=True)
class Factor:
    """Atoms over `dims` of a value (array axes in the order of `dims`)."""

    dims: tuple[int, ...]
    ids: Ids


def constant(shape: Sequence[int]) -> Ids:
    return np.zeros(tuple(shape), dtype=np.int64)


@dataclass(frozen=True)
class Scale:
    """The factors of one value, which together cover each of its dimensions once."""

    shape: tuple[int, ...]
    factors: tuple[Factor, ...]

    @staticmethod
    def ones(shape: Sequence[int]) -> Scale:
        shape = tuple(int(size) for size in shape)
        return Scale(shape, tuple(Factor((d,), constant((size,))) for d, size in enumerate(shape)))

    @staticmethod
    def fresh(shape: Sequence[int], atoms: Atoms) -> Scale:
        """One new atom per index of each dimension (a parameter: rows times columns ...)."""
        shape = tuple(int(size) for size in shape)
        return Scale(shape, tuple(Factor((d,), atoms.new((size,))) for d, size in enumerate(shape)))

    @property
    def rank(self) -> int:
        return len(self.shape)

    def factor_of(self, dim: int) -> Factor:
        for factor in self.factors:
            if dim in factor.dims:
                return factor
        raise KeyError(dim)

    def all_ids(self) -> list[Ids]:
        return [factor.ids for factor in self.factors]

    def is_one(self, atoms: Atoms) -> bool:
        return all(atoms.all_forced(factor.ids) for factor in self.factors)


def force_all(scale: Scale, atoms: Atoms) -> None:
    for factor in scale.factors:
        atoms.force(factor.ids)


def simplify(scale: Scale, atoms: Atoms) -> Scale:
    """A joint factor that does not vary along one of its dimensions gives that dimension a
    factor of its own (atoms known to be 1 keep their ids, so that reports can still say
    which parameters they belonged to)."""
    factors: list[Factor] = []
    for factor in scale.factors:
        if len(factor.dims) == 1 or not factor.ids.size:
            factors.append(factor)
            continue
        roots, parity = atoms.find(factor.ids)
        dims, ids = list(factor.dims), factor.ids
        axis = 0
        while len(dims) > 1 and axis < len(dims):
            first = np.take(roots, [0], axis=axis)
            first_parity = np.take(parity, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, roots.shape), roots) and np.array_equal(
                np.broadcast_to(first_parity, parity.shape), parity
            ):
                # constant along this axis: the atoms at index 0 stand for every index
                factors.append(Factor((dims[axis],), constant((scale.shape[dims[axis]],))))
                ids = np.take(ids, 0, axis=axis)
                roots = np.take(roots, 0, axis=axis)
                parity = np.take(parity, 0, axis=axis)
                del dims[axis]
                continue
            axis += 1
        factors.append(Factor(tuple(dims), ids))
    return Scale(scale.shape, tuple(sorted(factors, key=lambda f: f.dims[0])))


def joint(scale: Scale, dims: Sequence[int], atoms: Atoms) -> tuple[tuple[int, ...], Ids] | None:
    """One array of atoms over `dims` (and any dimension a factor shares with them) that
    equals the product of the factors there, or None when two free factors meet."""
    wanted = set(dims)
    touching = [f for f in scale.factors if wanted & set(f.dims)]
    free = [f for f in touching if not atoms.all_forced(f.ids)]
    if len(free) > 1:
        return None
    covered: list[int] = list(dims)
    for factor in touching:
        covered += [d for d in factor.dims if d not in covered]
    shape = tuple(scale.shape[d] for d in covered)
    if not free:
        return tuple(covered), constant(shape)
    factor = free[0]
    order = [factor.dims.index(d) for d in covered if d in factor.dims]
    moved = np.transpose(factor.ids, order)
    expanded_shape = tuple(scale.shape[d] if d in factor.dims else 1 for d in covered)
    return tuple(covered), np.broadcast_to(moved.reshape(expanded_shape), shape)


def replace_dims(scale: Scale, dims: Sequence[int], new: Factor, atoms: Atoms) -> Scale:
    """`scale` with every factor touching `dims` replaced by `new` (which covers them)."""
    kept = [f for f in scale.factors if not set(f.dims) & set(new.dims)]
    return Scale(scale.shape, (*kept, new))


def permute(scale: Scale, order: Sequence[int]) -> Scale:
    """Dimension `order[k]` of the input becomes dimension `k`."""
    position = {old: new for new, old in enumerate(order)}
    shape = tuple(scale.shape[d] for d in order)
    return Scale(
        shape, tuple(Factor(tuple(position[d] for d in f.dims), f.ids) for f in scale.factors)
    )


def unsqueeze(scale: Scale, dim: int) -> Scale:
    rank = scale.rank + 1
    dim %= rank
    shift = {d: d + (d >= dim) for d in range(scale.rank)}
    factors = [Factor(tuple(shift[d] for d in f.dims), f.ids) for f in scale.factors]
    factors.append(Factor((dim,), constant((1,))))
    shape = scale.shape[:dim] + (1,) + scale.shape[dim:]
    return Scale(shape, tuple(factors))


def drop_dim(scale: Scale, dim: int, index: int, atoms: Atoms) -> Scale:
    """Select one index of `dim` and remove the dimension (`select`, `squeeze`): where the
    dimension has a factor of its own, the chosen atom would scale the whole result, so it
    is forced to 1."""
    factors: list[Factor] = []
    for factor in scale.factors:
        if dim not in factor.dims:
            factors.append(factor)
            continue
        axis = factor.dims.index(dim)
        if len(factor.dims) == 1:
            atoms.force(factor.ids[index : index + 1])
            continue
        ids = np.take(factor.ids, index, axis=axis)
        factors.append(Factor(tuple(d for d in factor.dims if d != dim), ids))
    renumber = {d: d - (d > dim) for d in range(scale.rank) if d != dim}
    shape = scale.shape[:dim] + scale.shape[dim + 1 :]
    return Scale(shape, tuple(Factor(tuple(renumber[d] for d in f.dims), f.ids) for f in factors))


def take(scale: Scale, dim: int, positions: np.ndarray) -> Scale:
    """Keep the indices `positions` of `dim`, in that order (slices, flips, repeats)."""
    factors = []
    for factor in scale.factors:
        if dim in factor.dims:
            axis = factor.dims.index(dim)
            factor = Factor(factor.dims, np.take(factor.ids, positions, axis=axis))
        factors.append(factor)
    shape = scale.shape[:dim] + (len(positions),) + scale.shape[dim + 1 :]
    return Scale(shape, tuple(factors))


def expand(scale: Scale, shape: Sequence[int]) -> Scale:
    """Broadcast to `shape` (new leading dimensions, size-1 dimensions repeated): a copy of
    an element carries the element's scale."""
    shape = tuple(int(size) for size in shape)
    lead = len(shape) - scale.rank
    factors = [Factor((d,), constant((shape[d],))) for d in range(lead)]
    for factor in scale.factors:
        dims = tuple(d + lead for d in factor.dims)
        target = tuple(shape[d] for d in dims)
        factors.append(Factor(dims, np.broadcast_to(factor.ids, target)))
    return Scale(shape, tuple(factors))


def reshape(scale: Scale, shape: Sequence[int], atoms: Atoms) -> Scale:
    """View the value with another shape. Runs of dimensions whose sizes multiply to the same
    size map onto each other; the atoms of runs that share a factor are reshaped together,
    which is possible when at most one free factor covers them (a channel split into heads,
    a channel flattened with spatial positions of scale 1); otherwise they are forced."""
    shape = tuple(int(size) for size in shape)
    if shape == scale.shape:
        return scale
    source = scale
    # Size-1 dimensions carry at most one atom each; drop them, forcing that atom.
    for dim in reversed(range(source.rank)):
        if source.shape[dim] == 1:
            source = drop_dim(source, dim, 0, atoms)
    kept = [d for d, size in enumerate(shape) if size != 1]
    target = tuple(shape[d] for d in kept)
    runs = _runs(source.shape, target)
    if runs is None:
        force_all(source, atoms)
        return Scale.ones(shape)
    run_of = {d: index for index, (inputs, _) in enumerate(runs) for d in inputs}
    # runs that share a factor are reshaped together
    parent = list(range(len(runs)))

    def root(index: int) -> int:
        while parent[index] != index:
            index = parent[index]
        return index

    for factor in source.factors:
        touched = sorted({root(run_of[d]) for d in factor.dims})
        for other in touched[1:]:
            parent[other] = touched[0]
    together: dict[int, list[int]] = {}
    for index in range(len(runs)):
        together.setdefault(root(index), []).append(index)
    result: list[Factor] = []
    for members in together.values():
        inputs = [d for index in members for d in runs[index][0]]
        outputs = [kept[o] for index in members for o in runs[index][1]]
        if all(len(runs[i][0]) == 1 and len(runs[i][1]) == 1 for i in members):
            rename = {runs[i][0][0]: kept[runs[i][1][0]] for i in members}
            result += [
                Factor(tuple(rename[d] for d in f.dims), f.ids)
                for f in source.factors
                if f.dims[0] in rename
            ]
            continue
        found = joint(source, inputs, atoms)
        if found is None:
            for factor in source.factors:
                if factor.dims[0] in inputs:
                    atoms.force(factor.ids)
            found = joint(source, inputs, atoms)
            assert found is not None
        covered, ids = found
        order = [covered.index(d) for d in inputs]
        ids = np.ascontiguousarray(np.transpose(ids, order))
        result.append(Factor(tuple(outputs), ids.reshape(tuple(shape[d] for d in outputs))))
    covered_out = {d for f in result for d in f.dims}
    result += [
        Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d not in covered_out
    ]
    return Scale(shape, tuple(result))


def _runs(
    before: tuple[int, ...], after: tuple[int, ...]
) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input and output dimensions (none of size 1) with equal products."""
    runs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(before) or j < len(after):
        if i >= len(before) or j >= len(after):
            return None
        inputs, outputs = [i], [j]
        left, right = before[i], after[j]
        i, j = i + 1, j + 1
        while left != right:
            if left < right:
                if i >= len(before):
                    return None
                left *= before[i]
                inputs.append(i)
                i += 1
            else:
                if j >= len(after):
                    return None
                right *= after[j]
                outputs.append(j)
                j += 1
        runs.append((inputs, outputs))
    return runs


def concatenate(scales: Sequence[Scale], dim: int, atoms: Atoms) -> Scale:
    """Join values along `dim`: their atoms follow each other there; along every other
    dimension the parts must scale alike, so their atoms are joined."""
    first = scales[0]
    structure = [tuple(sorted(f.dims for f in s.factors)) for s in scales]
    if any(layout != structure[0] for layout in structure):
        # differently grouped factors: bring each to one factor per dimension where they
        # are forced, or force them
        scales = [_separate(s, atoms) for s in scales]
    factors: list[Factor] = []
    for factor in scales[0].factors:
        if dim in factor.dims:
            axis = factor.dims.index(dim)
            parts = [s.factor_of(factor.dims[0]) for s in scales]
            if any(p.dims != factor.dims for p in parts):
                for s in scales:
                    force_all(s, atoms)
                return Scale.ones(_cat_shape(scales, dim))
            ids = np.concatenate([np.asarray(p.ids) for p in parts], axis=axis)
            factors.append(Factor(factor.dims, ids))
        else:
            for other in scales[1:]:
                part = other.factor_of(factor.dims[0])
                if part.dims != factor.dims:
                    for s in scales:
                        force_all(s, atoms)
                    return Scale.ones(_cat_shape(scales, dim))
                atoms.join(factor.ids, part.ids)
            factors.append(factor)
    del first
    return Scale(_cat_shape(scales, dim), tuple(factors))


def _cat_shape(scales: Sequence[Scale], dim: int) -> tuple[int, ...]:
    shape = list(scales[0].shape)
    shape[dim] = sum(s.shape[dim] for s in scales)
    return tuple(shape)


def _separate(scale: Scale, atoms: Atoms) -> Scale:
    """One factor per dimension: joint factors are forced (a conservative loss)."""
    factors: list[Factor] = []
    for factor in scale.factors:
        if len(factor.dims) == 1:
            factors.append(factor)
        else:
            atoms.force(factor.ids)
            factors += [Factor((d,), constant((scale.shape[d],))) for d in factor.dims]
    return Scale(scale.shape, tuple(factors))


def equate(first: Scale, second: Scale, atoms: Atoms) -> Scale:
    """Two values that meet element by element (an add, the branches of a `where`) must
    scale alike: join their atoms, broadcasting size-1 dimensions. Returns the scale of the
    broadcast result."""
    rank = max(first.rank, second.rank)
    a = _align(first, rank)
    b = _align(second, rank)
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape, strict=True))
    a, b = expand(a, shape), expand(b, shape)
    a, b = simplify(a, atoms), simplify(b, atoms)
    a_dims = sorted(f.dims for f in a.factors)
    b_dims = sorted(f.dims for f in b.factors)
    if a_dims != b_dims:
        merged_a, merged_b = _merge_layouts(a, b, atoms)
        if merged_a is None or merged_b is None:
            return Scale.ones(shape)
        a, b = merged_a, merged_b
    for factor in a.factors:
        other = b.factor_of(factor.dims[0])
        order = [other.dims.index(d) for d in factor.dims]
        atoms.join(factor.ids, np.transpose(other.ids, order))
    return a


def _align(scale: Scale, rank: int) -> Scale:
    while scale.rank < rank:
        scale = unsqueeze(scale, 0)
    return scale


def _merge_layouts(a: Scale, b: Scale, atoms: Atoms) -> tuple[Scale | None, Scale | None]:
    """Bring two differently grouped scales of one shape to the same grouping: every group
    of dimensions joined in either becomes one factor in both (where each side has at most
    one free factor there); otherwise both are forced."""
    groups: list[set[int]] = [set(f.dims) for f in a.factors] + [set(f.dims) for f in b.factors]
    merged: list[set[int]] = []
    for group in groups:
        for existing in [m for m in merged if m & group]:
            group |= existing
            merged.remove(existing)
        merged.append(group)
    results: list[Scale | None] = []
    for scale in (a, b):
        factors: list[Factor] = []
        for group in merged:
            dims = sorted(group)
            found = joint(scale, dims, atoms)
            if found is None:
                force_all(a, atoms)
                force_all(b, atoms)
                return None, None
            covered, ids = found
            order = [covered.index(d) for d in dims]
            factors.append(Factor(tuple(dims), np.transpose(ids, order)))
        results.append(Scale(scale.shape, tuple(factors)))
    return results[0], results[1]


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
