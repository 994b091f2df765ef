"""Scale symmetries of any network, derived from its computation graph.

Every (value, dimension, index) of an ATen graph carries a positive scale; each op relates
the scales of its inputs and outputs (`rules`); the constraints are solved with a
union-find over atoms (`atoms`), and what stays free is the set of exact symmetries
(`components`), in the IR every other stage of weissi reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from weissi_cli.ir import Structure, Symmetry, Unassigned
from weissi_cli.structure.engine.components import stops, symmetries
from weissi_cli.structure.engine.rules import RULES
from weissi_cli.structure.engine.walk import Walk, WalkState

CONSTANT_NOTE = "a constant: multiplies scaled values elementwise, so it is held fixed"


def solve_graph(
    graph: Any,
    placeholders: Mapping[str, str],
    shapes: Mapping[str, tuple[int, ...]],
) -> WalkState:
    """Walk `graph` (placeholders named by `placeholders`: node -> tensor) and solve the
    constraints; only tensors in `shapes` (the checkpoint's) may carry a scale."""
    walk = Walk(graph, placeholders, lambda name: name in shapes, RULES)
    return walk.run()


def structure_from_graph(
    graph: Any,
    placeholders: Mapping[str, str],
    shapes: Mapping[str, tuple[int, ...]],
    origin: str = "graph",
    with_stops: bool = True,
    aliases: Mapping[str, Sequence[str]] | None = None,
    buffers: frozenset[str] = frozenset(),
) -> Structure:
    """The exact symmetries of the network `graph` computes, over the tensors of `shapes`.

    `aliases` names, for a tensor the graph reads, the other checkpoint names that hold the
    same tensor (tied weights): they scale with it."""
    state = solve_graph(graph, placeholders, shapes)
    names: Sequence[str] = list(shapes)
    found = symmetries(state, names, shapes, origin, buffers)
    if aliases:
        found = [_with_aliases(symmetry, aliases) for symmetry in found]
    stopped = stops(state, names) if with_stops else []
    claimed = {member.tensor for symmetry in found for member in symmetry.members}
    notes = tuple(
        f"{op} has no rule: the scales reaching it ({count}×) were stopped"
        for op, count in sorted(state.unknown_ops.items())
    )
    return Structure(
        chains=(),
        unassigned=tuple(
            Unassigned(
                name,
                CONSTANT_NOTE if name in state.constants else "in no scale symmetry of the graph",
            )
            for name in names
            if name not in claimed
        ),
        origin=origin,
        symmetries=tuple(found),
        stops=tuple(stopped),
        notes=notes,
    )


def _with_aliases(symmetry: Symmetry, aliases: Mapping[str, Sequence[str]]) -> Symmetry:
    extra = [
        replace(member, tensor=alias)
        for member in symmetry.members
        for alias in aliases.get(member.tensor, ())
    ]
    return replace(symmetry, members=symmetry.members + tuple(extra)) if extra else symmetry


__all__ = ["solve_graph", "structure_from_graph"]
