"""Mixture-of-experts: stacked expert weights and token rows routed to experts.

Two kinds of value keep one scale per expert where an ordinary `Scale` would have to join
them:

- `Stacked`: expert weights stacked along a new first axis (`torch.stack` of each expert's
  matrix, then `cat`/`transpose` of the stacks). Each expert keeps its own atoms.
- `Routed`: the output of a grouped matrix product (`grouped_mm(x, W, offsets)`): each row
  belongs to the expert the data routed it to, and scales by that expert's atoms. Row
  permutations, views, elementwise ops and products with ordinary values act expert by
  expert; anything that mixes rows of different experts (a sum over the top-k axis, an add
  with the residual stream) first *collapses* the value, joining the experts' atoms.

An op that does not know these kinds sees them collapsed: fewer symmetries, never a wrong
one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from weissi_cli.structure.engine.scale import (
    Factor,
    Scale,
    _runs,
    concatenate,
    constant,
    equate,
    permute,
    unsqueeze,
)


@dataclass(frozen=True)
class Stacked:
    """Expert weights stacked along axis 0: `parts[e]` is expert e's scale."""

    parts: tuple[Scale, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts), *self.parts[0].shape)


@dataclass(frozen=True)
class Routed:
    """Rows routed to experts by `key` (the routing's offsets): the rows along `rows` scale
    by the atoms of their expert, `parts[e]`."""

    parts: tuple[Scale, ...]
    rows: frozenset[int]
    key: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.parts[0].shape


Expert = Stacked | Routed

# Ops that act row by row, or only on axes that are not routed rows: run expert by expert.
ELEMENTWISE = frozenset(
    [
        *("to", "_to_copy", "clone", "alias", "detach", "contiguous", "lift_fresh_copy"),
        *("type_as", "neg", "abs", "relu", "leaky_relu", "dropout", "_assert_tensor_metadata"),
        *("mul", "div", "gelu", "silu", "sigmoid", "tanh", "softmax", "exp"),
    ]
)
VIEWS = frozenset(["view", "reshape", "_unsafe_view", "unsqueeze", "squeeze"])
SLICES = frozenset(["split", "split_with_sizes", "chunk", "slice", "narrow"])


def collapse(value: Expert, walk: Any) -> Scale:
    """An ordinary scale for `value`: the experts' atoms joined (all experts alike)."""
    if isinstance(value, Stacked):
        return concatenate([unsqueeze(part, 0) for part in value.parts], 0, walk.atoms)
    result = value.parts[0]
    for part in value.parts[1:]:
        result = equate(result, part, walk.atoms)
    return result


def stack(walk: Any, node: Any, arguments: dict[str, Any]) -> Any:
    """`torch.stack` on axis 0 of same-shaped weights: a `Stacked` value."""
    tensors = arguments.get("tensors") or []
    dim = arguments.get("dim", 0)
    scales = []
    for tensor in tensors:
        shape = walk.shape_of(tensor)
        if shape is None:
            return walk.ones_like_output(node)
        scales.append(walk.scale_of(tensor) or Scale.ones(shape))
    if dim != 0 or len({s.shape for s in scales}) != 1:
        from weissi_cli.structure.engine.rules import stack_rule

        return stack_rule(walk, node, arguments)
    return Stacked(tuple(scales))


def grouped_mm(walk: Any, node: Any, arguments: dict[str, Any]) -> Routed | Any:
    """`out[t] = x[t] @ W[e(t)]`, the rows of `x` grouped by expert along `offsets`: for
    each expert, x's last axis meets that expert's rows (scales multiply to 1) and the
    output rows routed to it scale like that expert's columns."""
    from weissi_cli.structure.engine.rules import contract

    values = list(arguments.values())
    x_node, w_node, offsets = values[0], values[1], values[2] if len(values) > 2 else None
    out_shape = walk.shape_of(node)
    x_shape, w_shape = walk.shape_of(x_node), walk.shape_of(w_node)
    if out_shape is None or x_shape is None or w_shape is None or len(w_shape) != 3:
        return _stop(walk, node, arguments)
    key = getattr(offsets, "name", "")
    x = walk.expert_value(x_node)
    weights = walk.expert_value(w_node)
    if not isinstance(weights, Stacked):
        scale = weights if isinstance(weights, Scale) else Scale.ones(w_shape)
        # one weight for all experts: the expert axis must not scale
        walk.state.force(scale.factor_of(0).ids, "experts stacked in one tensor")
        weights = Stacked(tuple(_expert_slice(scale, e) for e in range(w_shape[0])))
    experts = len(weights.parts)
    if isinstance(x, Routed) and (x.key != key or len(x.parts) != experts):
        x = collapse(x, walk)
    inputs = x.parts if isinstance(x, Routed) else (x or Scale.ones(x_shape),) * experts
    batch = "abcdefgh"[: len(x_shape) - 1]
    parts = tuple(
        contract(walk, inputs[e], batch + "z", weights.parts[e], "zy", batch + "y", out_shape)
        for e in range(experts)
    )
    return Routed(parts, frozenset(range(len(x_shape) - 1)), key)


def _expert_slice(scale: Scale, expert: int) -> Scale:
    from weissi_cli.structure.engine.scale import drop_dim

    class _NoForce:
        def force(self, ids: Any) -> None:
            return

    return drop_dim(scale, 0, expert, _NoForce())  # type: ignore[arg-type]


def _stop(walk: Any, node: Any, arguments: dict[str, Any]) -> Any:
    from weissi_cli.structure.engine.walk import force_inputs

    force_inputs(walk, arguments, f"{walk.state.op} over unknown shapes")
    return walk.ones_like_output(node)


def per_expert(
    walk: Any, node: Any, arguments: dict[str, Any], rule: Callable[..., Any]
) -> Any | None:
    """Run `rule` once per expert when its expert-valued arguments allow it; None when the
    op must see them collapsed."""
    op = walk.state.op
    names = [a for a in _node_args(arguments) if isinstance(walk.expert_value(a), Routed | Stacked)]
    values = [walk.expert_value(a) for a in names]
    if any(isinstance(v, Stacked) for v in values):
        return _stacked(walk, node, arguments, rule, names, values)
    routed = [v for v in values if isinstance(v, Routed)]
    if len({(r.key, len(r.parts)) for r in routed}) != 1:
        return None
    first = routed[0]
    if op in ELEMENTWISE:
        rows = first.rows
    elif op in VIEWS:
        source, target = walk.shape_of(names[0]), walk.shape_of(node)
        if source is None or target is None:
            return None
        mapped = _rows_through_view(source, target, first.rows)
        if mapped is None:
            return None
        rows = mapped
    elif op in SLICES:
        dim = arguments.get("dim", 0) % len(first.shape)
        if dim in first.rows:
            return None
        rows = first.rows
    elif op in ("index", "_unsafe_index"):
        indices = arguments.get("indices") or []
        picked = [d for d, item in enumerate(indices) if item is not None]
        if picked != [0] or 0 not in first.rows or len(first.rows) != 1:
            return None
        index_shape = walk.shape_of(indices[0])
        if index_shape is None:
            return None
        rows = frozenset(range(len(index_shape)))
    else:
        return None
    parts = []
    for expert in range(len(first.parts)):
        with walk.substituted(
            {n.name: v.parts[expert] for n, v in zip(names, values, strict=True)}
        ):
            parts.append(rule(walk, node, arguments))
    if isinstance(parts[0], list | tuple):
        return [
            Routed(tuple(p[i] for p in parts), rows, first.key) if parts[0][i] is not None else None
            for i in range(len(parts[0]))
        ]
    return Routed(tuple(parts), rows, first.key)


def _stacked(
    walk: Any,
    node: Any,
    arguments: dict[str, Any],
    rule: Callable[..., Any],
    names: list[Any],
    values: list[Any],
) -> Any | None:
    """Concatenations and transpositions that leave the expert axis in place."""
    op = walk.state.op
    if any(not isinstance(v, Stacked) for v in values) or len({len(v.parts) for v in values}) != 1:
        return None
    rank = len(values[0].shape)
    if op in ("cat", "concat"):
        dim = arguments.get("dim", 0) % rank
        if dim == 0 or any(
            not isinstance(walk.expert_value(t), Stacked) for t in arguments["tensors"]
        ):
            return None
        parts = []
        for expert in range(len(values[0].parts)):
            pieces = [walk.expert_value(t).parts[expert] for t in arguments["tensors"]]
            parts.append(concatenate(pieces, dim - 1, walk.atoms))
        return Stacked(tuple(parts))
    if op in ("transpose", "swapaxes"):
        first = arguments.get("dim0", 0) % rank
        second = arguments.get("dim1", 1) % rank
        if 0 in (first, second):
            return None
        order = list(range(rank - 1))
        order[first - 1], order[second - 1] = order[second - 1], order[first - 1]
        return Stacked(tuple(permute(part, order) for part in values[0].parts))
    if op in (
        "to",
        "_to_copy",
        "clone",
        "contiguous",
        "alias",
        "detach",
        "_assert_tensor_metadata",
    ):
        return values[0]
    return None


def _rows_through_view(
    source: tuple[int, ...], target: tuple[int, ...], rows: frozenset[int]
) -> frozenset[int] | None:
    """The target axes a view maps the routed axes to (None when it mixes them with the
    axes that are not routed)."""
    kept_source = [d for d, n in enumerate(source) if n != 1]
    kept_target = [d for d, n in enumerate(target) if n != 1]
    runs = _runs(tuple(source[d] for d in kept_source), tuple(target[d] for d in kept_target))
    if runs is None:
        return None
    mapped: set[int] = set()
    for inputs, outputs in runs:
        routed = {kept_source[d] in rows for d in inputs}
        if len(routed) > 1:
            return None
        if routed == {True}:
            mapped.update(kept_target[o] for o in outputs)
    return frozenset(mapped)


def _node_args(arguments: dict[str, Any]) -> list[Any]:
    found: list[Any] = []
    for value in arguments.values():
        items = value if isinstance(value, list | tuple) else [value]
        found += [item for item in items if hasattr(item, "op") and hasattr(item, "name")]
    return found


def ones_factor(size: int) -> Factor:
    return Factor((0,), constant((size,)))


__all__ = ["Routed", "Stacked", "collapse", "grouped_mm", "per_expert", "stack"]

_ = np  # numpy is used by the scale helpers these values rely on
