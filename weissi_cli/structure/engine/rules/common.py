"""What every op rule shares: argument access, the guard that stops a node a rule cannot follow."""

from __future__ import annotations

import math
from typing import Any

from weissi_cli.structure.engine.scale import (
    Scale,
    unsqueeze,
)
from weissi_cli.structure.engine.walk import Rule, Value, Walk, force_inputs

Arguments = dict[str, Any]

NON_HOMOGENEOUS = "does not commute with a per-channel scale (not positively homogeneous)"


def first_argument(arguments: Arguments) -> Any:
    return next(iter(arguments.values()))


def out_shape(walk: Walk, node: Any) -> tuple[int, ...]:
    shape = walk.shape_of(node)
    if shape is None:
        raise Unfollowable("an output of unknown shape (export with static shapes)")
    return shape


class Unfollowable(Exception):
    """A rule cannot follow this node: its inputs are stopped."""


def guarded(rule: Rule) -> Rule:
    """Run a rule; where it cannot follow the node (unknown shapes, odd arguments), stop the
    node's inputs instead."""

    def run(walk: Walk, node: Any, arguments: Arguments) -> Value:
        try:
            return rule(walk, node, arguments)
        except Unfollowable as error:
            force_inputs(walk, arguments, str(error))
        except (TypeError, ValueError, IndexError, KeyError) as error:
            # arguments the rule cannot read (symbolic sizes of a dynamic-shape export, odd
            # values in an untrusted program): stop what reaches the node, say why
            force_inputs(walk, arguments, f"arguments the rule cannot follow ({error})")
        return walk.ones_like_output(node)

    run.__wrapped__ = rule  # type: ignore[attr-defined]
    return run


def align(scale: Scale, rank: int) -> Scale:
    while scale.rank < rank:
        scale = unsqueeze(scale, 0)
    return scale


def is_wildcard(value: Any) -> bool:
    """A constant that any positive scale leaves as it is: 0 and ±inf."""
    return isinstance(value, int | float) and (value == 0 or math.isinf(value))
