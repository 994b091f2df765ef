"""Normalisations: they pin their input; their gain and shift scale the output."""

from __future__ import annotations

from typing import Any

import numpy as np

from weissi_cli.structure.engine.rules.common import (
    Arguments,
    Unfollowable,
)
from weissi_cli.structure.engine.scale import (
    Factor,
    Scale,
    constant,
)
from weissi_cli.structure.engine.walk import Derived, Value, Walk


def layer_norm(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """The input is normalised over its last axes: its scale is removed only up to eps, so it
    is forced to 1; the gain and shift scale the output together."""
    x = walk.scale_of(arguments["input"])
    walk.state.force_scale(x, "a normalisation's input (it divides by its own size)")
    shapes = walk.output_shapes(node)
    shape = shapes[0]
    if shape is None:
        raise Unfollowable("a normalisation of unknown shape")
    normalized = list(arguments.get("normalized_shape") or [])
    tail = len(normalized)
    out = Scale.ones(shape)
    weight = walk.scale_of(arguments.get("weight"))
    bias = walk.scale_of(arguments.get("bias"))
    gain = weight or bias
    if gain is not None:
        factors = [
            Factor(tuple(d + len(shape) - tail for d in f.dims), f.ids) for f in gain.factors
        ]
        factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape) - tail)]
        out = Scale(shape, tuple(factors))
        if weight is not None and bias is not None:
            for wf, bf in zip(weight.factors, bias.factors, strict=True):
                walk.atoms.join(wf.ids, bf.ids)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return [out] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return out


def group_norm(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Group norm: the input is normalised (pinned); gain and shift scale the output."""
    x = walk.scale_of(arguments["input"])
    walk.state.force_scale(x, "a normalisation's input (it divides by its own size)")
    shapes = walk.output_shapes(node)
    shape = shapes[0]
    if shape is None:
        raise Unfollowable("a normalisation of unknown shape")
    weight = walk.scale_of(arguments.get("weight"))
    bias = walk.scale_of(arguments.get("bias"))
    out = Scale.ones(shape)
    gain = weight or bias
    if gain is not None:
        factors = [Factor((1,), gain.factors[0].ids)]
        factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d != 1]
        out = Scale(shape, tuple(factors))
        if weight is not None and bias is not None:
            walk.atoms.join(weight.factors[0].ids, bias.factors[0].ids)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return [out] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return out


def batch_norm(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Evaluation-mode batch norm: the input's channel scale is absorbed by the running mean
    (× c) and variance (× c²), exactly only up to eps (marked approximate); the affine gain
    and shift scale the output."""
    x_node = arguments["input"]
    x = walk.scale_of(x_node)
    shapes = walk.output_shapes(node)
    shape = shapes[0]
    if shape is None:
        raise Unfollowable("a batch norm of unknown shape")
    # instance norm with use_input_stats normalises by the input's own statistics
    training = bool(arguments.get("training", arguments.get("use_input_stats", False)))
    mean_node, var_node = arguments.get("running_mean"), arguments.get("running_var")
    mean, var = walk.scale_of(mean_node), walk.scale_of(var_node)
    var_name = walk.placeholders.get(getattr(var_node, "name", ""), None)
    if x is not None:
        if (
            not training
            and mean is not None
            and var is not None
            and var_name is not None
            and var_node is not None
            and len(var_node.users) == 1
            and len(x.factor_of(1).dims) == 1
        ):
            channel = x.factor_of(1).ids
            walk.atoms.join(mean.factors[0].ids, channel)
            walk.state.settle(var.factors[0].ids)
            walk.state.derived.append(Derived(var_name, 0, np.asarray(channel), 2))
            eps = arguments.get("eps", 1e-5)
            walk.state.approximate.append(
                (
                    np.asarray(channel),
                    f"batch norm {node.name} absorbs the scale only up to its eps={eps:g}",
                )
            )
            others = [f for f in x.factors if 1 not in f.dims]
            walk.state.force([f.ids for f in others], "a batch norm's positions")
        else:
            walk.state.force_scale(x, "a batch norm's input")
    weight = walk.scale_of(arguments.get("weight"))
    bias = walk.scale_of(arguments.get("bias"))
    gain = weight or bias
    out = Scale.ones(shape)
    if gain is not None:
        factors = [Factor((1,), gain.factors[0].ids)]
        factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d != 1]
        out = Scale(shape, tuple(factors))
        if weight is not None and bias is not None:
            walk.atoms.join(weight.factors[0].ids, bias.factors[0].ids)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return [out] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return out
