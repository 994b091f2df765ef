"""Exact scale symmetries from a `torch.export` program, by walking its graph.

Each parameterised producer (linear, conv, batch-norm and layer-norm affines) starts a
*space*: its output channels, which a positive per-channel scale may multiply. The walk
follows every value forward through ops that commute with such a scale (the op tables
below), and records the members that absorb it: the columns of the next linear or conv,
a batch norm's running statistics. A residual add merges the spaces of its operands (every
producer feeding the sum must take the same scale); a concatenation on the channel axis
places each operand's channels at an offset; a flatten spreads each channel over a block of
features. Anything else a space reaches — a non-homogeneous activation, a layer-norm input,
the graph output, an op not in the tables — stops it: the space is dropped, and `graph`
reports which op stopped it and where.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from weissi_cli.ir import Member, Stop, Structure, Symmetry, Unassigned


def _aten(*names: str) -> frozenset[Any]:
    import torch

    found = []
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(torch.ops.aten, packet, None)
        if op is not None and hasattr(op, overload or "default"):
            found.append(getattr(op, overload or "default"))
    return frozenset(found)


@dataclass(frozen=True)
class _Ops:
    """One table per class of op; the export and core-ATen spellings of an op together."""

    linear: frozenset[Any]
    conv: frozenset[Any]
    conv_transposed: frozenset[Any]
    batch_norm: frozenset[Any]
    layer_norm: frozenset[Any]
    elementwise: frozenset[Any]  # f(c·x) = c·f(x) for c > 0, per element
    pooling: frozenset[Any]  # per-channel windows: max, average, nearest upsampling
    reductions: frozenset[Any]  # mean/sum over non-channel axes
    reshape: frozenset[Any]
    permute: frozenset[Any]
    transpose: frozenset[Any]
    concatenate: frozenset[Any]
    add: frozenset[Any]
    scalar_scale: frozenset[Any]  # multiply/divide by a Python number


def _tables() -> _Ops:
    return _Ops(
        linear=_aten("linear"),
        conv=_aten(
            "conv1d",
            "conv2d",
            "conv3d",
            "conv1d.padding",
            "conv2d.padding",
            "conv3d.padding",
            "convolution",
        ),
        conv_transposed=_aten(
            "conv_transpose1d.input", "conv_transpose2d.input", "conv_transpose3d.input"
        ),
        batch_norm=_aten("batch_norm", "_native_batch_norm_legit_no_training"),
        layer_norm=_aten("layer_norm", "native_layer_norm"),
        elementwise=_aten(
            "relu",
            "relu_",
            "leaky_relu",
            "leaky_relu_",
            "prelu",
            "dropout",
            "clone",
            "alias",
            "detach",
            "contiguous",
        ),
        pooling=_aten(
            "max_pool1d",
            "max_pool2d",
            "max_pool3d",
            "max_pool2d_with_indices",
            "max_pool3d_with_indices",
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
            "_adaptive_avg_pool2d",
            "_adaptive_avg_pool3d",
            "adaptive_max_pool1d",
            "adaptive_max_pool2d",
            "adaptive_max_pool3d",
            "upsample_nearest1d.vec",
            "upsample_nearest2d.vec",
            "upsample_nearest3d.vec",
        ),
        reductions=_aten("mean.dim", "sum.dim_IntList"),
        reshape=_aten("view", "reshape", "_unsafe_view", "flatten.using_ints"),
        permute=_aten("permute"),
        transpose=_aten("transpose.int"),
        concatenate=_aten("cat"),
        add=_aten("add.Tensor", "add_.Tensor"),
        scalar_scale=_aten("mul.Tensor", "mul_.Tensor", "div.Tensor", "div_.Tensor"),
    )


@dataclass(frozen=True)
class Segment:
    """`channels` consecutive channels of a value's channel axis, each covering `block`
    entries, that belong to `space` (None: channels no scale can reach, e.g. an input)."""

    space: int | None
    channels: int
    block: int = 1


@dataclass(frozen=True)
class Layout:
    axis: int
    segments: tuple[Segment, ...]


@dataclass
class _Space:
    producers: list[str] = field(default_factory=list)  # module names, for the id
    members: list[Member] = field(default_factory=list)
    size: int = 0
    stopped: tuple[str, str] | None = None  # (reason, node)
    approximate: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


class _Walk:
    def __init__(self, program: Any) -> None:
        self.program = program
        self.ops = _tables()
        signature = program.graph_signature
        self.parameters: dict[str, str] = dict(signature.inputs_to_parameters)
        self.parameters.update(signature.inputs_to_buffers)
        self.parameters.update(getattr(signature, "inputs_to_lifted_tensor_constants", {}))
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.layouts: dict[str, Layout | None] = {}

    # union-find over spaces ------------------------------------------------------------
    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, first: int, second: int) -> int:
        first, second = self.find(first), self.find(second)
        if first == second:
            return first
        self.parent[second] = first
        into, other = self.spaces[first], self.spaces[second]
        into.producers += other.producers
        into.members += other.members
        into.approximate += other.approximate
        into.consumers += other.consumers
        into.stopped = into.stopped or other.stopped
        return first

    def new_space(self, size: int, producer: str, members: list[Member]) -> int:
        self.spaces.append(_Space([producer], members, size))
        self.parent.append(len(self.parent))
        return len(self.spaces) - 1

    def stop(self, layout: Layout | None, node: str, reason: str) -> None:
        for segment in layout.segments if layout else ():
            if segment.space is not None:
                space = self.spaces[self.find(segment.space)]
                if space.stopped is None:
                    space.stopped = (reason, node)

    # helpers --------------------------------------------------------------------------
    def tensor_name(self, argument: Any) -> str | None:
        name = getattr(argument, "name", None)
        return self.parameters.get(name) if name is not None else None

    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        value = node.meta.get("val") if hasattr(node, "meta") else None
        shape = getattr(value, "shape", None)
        if shape is None:
            return None
        try:
            return tuple(int(size) for size in shape)
        except TypeError:  # symbolic sizes
            return None

    def layout_of(self, argument: Any) -> Layout | None:
        name = getattr(argument, "name", None)
        return self.layouts.get(name) if name is not None else None

    def inputs(self, node: Any) -> list[Any]:
        found: list[Any] = []

        def collect(value: Any) -> None:
            if isinstance(value, list | tuple):
                for item in value:
                    collect(item)
            elif hasattr(value, "op") and hasattr(value, "name"):
                found.append(value)

        collect(node.args)
        collect(dict(node.kwargs).values())
        return found

    # the walk -------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                self.layouts[node.name] = None
            elif node.op == "output":
                for argument in self.inputs(node):
                    self.stop(self.layout_of(argument), node.name, "reaches the graph output")
            elif node.op == "call_function":
                self.layouts[node.name] = self.visit(node)

    def visit(self, node: Any) -> Layout | None:
        target, ops = node.target, self.ops
        if target is operator.getitem:
            source, index = node.args
            layout = self.layout_of(source)
            if index == 0:
                return layout
            return None  # indices of a max pool, statistics of a norm: not scaled values
        if target in ops.linear:
            return self.linear(node)
        if target in ops.conv or target in ops.conv_transposed:
            return self.conv(node)
        if target in ops.batch_norm:
            return self.batch_norm(node)
        if target in ops.layer_norm:
            return self.layer_norm(node)
        tracked = [a for a in self.inputs(node) if self.layout_of(a) is not None]
        if not tracked:
            return None
        if target in ops.elementwise or target in ops.pooling:
            return (
                self.layout_of(node.args[0])
                if all(a is node.args[0] for a in tracked)
                else self.refuse(node, tracked, "mixes a scaled value into a parameter")
            )
        if target in ops.scalar_scale:
            if (
                isinstance(node.args[1], int | float)
                and node.args[0] is tracked[0]
                and len(tracked) == 1
            ):
                return self.layout_of(node.args[0])
            return self.refuse(node, tracked, "multiplies by a tensor")
        if target in ops.reductions:
            return self.reduction(node, tracked)
        if target in ops.reshape:
            return self.reshape(node)
        if target in ops.permute or target in ops.transpose:
            return self.permute(node)
        if target in ops.concatenate:
            return self.concatenate(node)
        if target in ops.add:
            return self.add(node)
        return self.refuse(
            node, tracked, f"{_op_name(target)} does not commute with a per-channel scale"
        )

    def refuse(self, node: Any, tracked: Sequence[Any], reason: str) -> Layout | None:
        """Stop the spaces of `tracked` at `node`; the result carries no scale."""
        for argument in tracked:
            self.stop(self.layout_of(argument), node.name, reason)
        return None

    def consume(
        self, layout: Layout | None, node: Any, tensor: str, axis: int, kernel: bool
    ) -> None:
        """Columns (axis 1, or 0 for transposed convs) of `tensor` absorb the input's scales."""
        if layout is None:
            return
        offset = 0
        for segment in layout.segments:
            if kernel and segment.block != 1:
                self.stop(layout, node.name, "a flattened value feeds a convolution")
                return
            if segment.space is not None:
                root = self.find(segment.space)
                self.spaces[root].members.append(Member(tensor, axis, -1, segment.block, offset))
                self.spaces[root].consumers.append(tensor.rpartition(".")[0])
            offset += segment.channels * segment.block

    def linear(self, node: Any) -> Layout | None:
        source, weight = node.args[0], self.tensor_name(node.args[1])
        bias = self.tensor_name(node.args[2]) if len(node.args) > 2 else None
        layout, shape = self.layout_of(source), self.shape(source)
        if weight is None:
            return self.refuse(node, [source], "a linear layer without a parameter weight")
        if layout is not None and shape is not None and layout.axis != len(shape) - 1:
            self.stop(layout, node.name, "linear layer reads a value whose channels are not last")
        else:
            self.consume(layout, node, weight, 1, kernel=False)
        out = self.shape(node)
        if out is None:
            return None
        return self.produce(out[-1], len(out) - 1, weight, bias, 0)

    def conv(self, node: Any) -> Layout | None:
        transposed = node.target in self.ops.conv_transposed or (
            len(node.args) > 6 and node.target in self.ops.conv and node.args[6] is True
        )
        source, weight = node.args[0], self.tensor_name(node.args[1])
        bias = self.tensor_name(node.args[2]) if len(node.args) > 2 else None
        groups = _groups(node, self.ops)
        layout = self.layout_of(source)
        if weight is None:
            return self.refuse(node, [source], "a convolution without a parameter weight")
        if groups != 1:
            self.stop(layout, node.name, f"grouped convolution (groups={groups})")
            return None
        if layout is not None and layout.axis != 1:
            self.stop(
                layout, node.name, "convolution reads a value whose channels are not on axis 1"
            )
        else:
            self.consume(layout, node, weight, 0 if transposed else 1, kernel=True)
        out = self.shape(node)
        if out is None:
            return None
        return self.produce(out[1], 1, weight, bias, 1 if transposed else 0)

    def produce(
        self, channels: int, axis: int, weight: str, bias: str | None, weight_axis: int
    ) -> Layout:
        members = [Member(weight, weight_axis, 1)]
        if bias is not None:
            members.append(Member(bias, 0, 1))
        space = self.new_space(channels, weight.rpartition(".")[0], members)
        return Layout(axis, (Segment(space, channels),))

    def batch_norm(self, node: Any) -> Layout | None:
        args = list(node.args)
        source = args[0]
        weight, bias = self.tensor_name(args[1]), self.tensor_name(args[2])
        mean, var = self.tensor_name(args[3]), self.tensor_name(args[4])
        eps = args[6] if "legit" in _op_name(node.target) else args[7]
        layout = self.layout_of(source)
        if layout is not None:
            if layout.axis != 1 or any(s.block != 1 for s in layout.segments):
                self.stop(
                    layout, node.name, "batch norm over a value whose channels are not axis 1"
                )
            else:
                offset = 0
                for segment in layout.segments:
                    if segment.space is not None:
                        root = self.find(segment.space)
                        if mean is not None and var is not None:
                            self.spaces[root].members.append(Member(mean, 0, 1, 1, offset))
                            self.spaces[root].members.append(Member(var, 0, 2, 1, offset))
                        self.spaces[root].approximate.append(
                            f"batch norm {node.name} absorbs the scale only up to its eps={eps:g}"
                        )
                        self.spaces[root].consumers.append((mean or node.name).rpartition(".")[0])
                    offset += segment.channels
        out = self.shape(node)
        if weight is None or out is None:
            return None
        return self.produce(out[1], 1, weight, bias, 0)

    def layer_norm(self, node: Any) -> Layout | None:
        source = node.args[0]
        self.stop(self.layout_of(source), node.name, "a layer norm's input (it mixes channels)")
        normalized = node.args[1]
        weight = self.tensor_name(node.args[2]) if len(node.args) > 2 else None
        bias = self.tensor_name(node.args[3]) if len(node.args) > 3 else None
        out = self.shape(node) or (self.shape(source) if node.target is not None else None)
        if weight is None or out is None or len(normalized) != 1:
            return None
        return self.produce(out[-1], len(out) - 1, weight, bias, 0)

    def reduction(self, node: Any, tracked: Sequence[Any]) -> Layout | None:
        source = node.args[0]
        layout, shape = self.layout_of(source), self.shape(source)
        if layout is None or shape is None or len(node.args) < 2:
            return self.refuse(node, tracked, "a reduction over every axis")
        dims = {d % len(shape) for d in node.args[1]}
        keep = node.args[2] if len(node.args) > 2 else False
        if (
            layout.axis in dims
            or source is not tracked[0]
            or any(s.block != 1 for s in layout.segments)
        ):
            return self.refuse(node, tracked, "a reduction over the channel axis")
        axis = layout.axis if keep else layout.axis - sum(1 for d in dims if d < layout.axis)
        return Layout(axis, layout.segments)

    def reshape(self, node: Any) -> Layout | None:
        source = node.args[0]
        layout, before, after = self.layout_of(source), self.shape(source), self.shape(node)
        if layout is None or before is None or after is None:
            return self.refuse(node, [source], "a reshape of unknown shape")
        axis = layout.axis
        if after == before or tuple(after[: axis + 1]) == tuple(before[: axis + 1]):
            return layout  # the channel axis and everything before it untouched
        if axis < len(after) and list(after[:axis]) == list(before[:axis]):
            # channels stay whole when axis `axis` absorbs the axes after it (a flatten)
            for end in range(axis + 1, len(before) + 1):
                merged = 1
                for size in before[axis:end]:
                    merged *= size
                if merged == after[axis] and tuple(after[axis + 1 :]) == tuple(before[end:]):
                    spread = merged // before[axis]
                    return Layout(
                        axis,
                        tuple(
                            Segment(s.space, s.channels, s.block * spread) for s in layout.segments
                        ),
                    )
        return self.refuse(node, [source], "a reshape that splits or mixes channels")

    def permute(self, node: Any) -> Layout | None:
        source = node.args[0]
        layout, shape = self.layout_of(source), self.shape(source)
        if layout is None or shape is None:
            return None
        rank = len(shape)
        if node.target in self.ops.transpose:
            first, second = node.args[1] % rank, node.args[2] % rank
            order = list(range(rank))
            order[first], order[second] = order[second], order[first]
        else:
            order = [d % rank for d in node.args[1]]
        if any(s.block != 1 for s in layout.segments):
            return self.refuse(node, [source], "a permutation of a flattened value")
        return Layout(order.index(layout.axis), layout.segments)

    def concatenate(self, node: Any) -> Layout | None:
        parts = list(node.args[0])
        shapes = [self.shape(part) for part in parts]
        if any(shape is None for shape in shapes):
            return self.refuse(node, parts, "a concatenation of unknown shapes")
        rank = len(shapes[0])  # type: ignore[arg-type]
        dim = (node.args[1] if len(node.args) > 1 else 0) % rank
        layouts = [self.layout_of(part) for part in parts]
        tracked = [layout for layout in layouts if layout is not None]
        if dim == tracked[0].axis and all(layout.axis == dim for layout in tracked):
            segments: list[Segment] = []
            for layout, shape in zip(layouts, shapes, strict=True):
                if layout is None:
                    segments.append(Segment(None, shape[dim]))  # type: ignore[index]
                else:
                    segments += layout.segments
            return Layout(dim, tuple(segments))
        return self.merge(node, parts, layouts, "a concatenation along another axis")

    def add(self, node: Any) -> Layout | None:
        operands = [node.args[0], node.args[1]]
        layouts = [self.layout_of(operand) for operand in operands]
        if any(not hasattr(operand, "op") for operand in operands):
            tracked = [o for o, layout in zip(operands, layouts, strict=True) if layout is not None]
            return self.refuse(node, tracked, "adds a constant (an affine shift)")
        return self.merge(node, operands, layouts, "a residual add")

    def merge(
        self, node: Any, operands: Sequence[Any], layouts: Sequence[Layout | None], what: str
    ) -> Layout | None:
        """Operands that meet element by element must carry the same scales: merge them."""
        if any(layout is None for layout in layouts):
            tracked = [o for o, layout in zip(operands, layouts, strict=True) if layout is not None]
            return self.refuse(node, tracked, f"{what} with a value no scale reaches")
        first = layouts[0]
        assert first is not None
        for other in layouts[1:]:
            assert other is not None
            shape_of = [(s.channels, s.block) for s in first.segments]
            if (
                other.axis != first.axis
                or [(s.channels, s.block) for s in other.segments] != shape_of
            ):
                return self.refuse(node, operands, f"{what} of differently laid out values")
        merged = []
        others = [layout for layout in layouts[1:] if layout is not None]
        unreachable = f"{what} with a value no scale reaches"
        for index, segment in enumerate(first.segments):
            space = segment.space
            for other in others:
                other_segment = other.segments[index]
                if space is None or other_segment.space is None:
                    self.stop(Layout(first.axis, (segment,)), node.name, unreachable)
                    self.stop(Layout(first.axis, (other_segment,)), node.name, unreachable)
                    space = None
                    break
                space = self.union(space, other_segment.space)
            merged.append(Segment(space, segment.channels, segment.block))
        return Layout(first.axis, tuple(merged))

    # results --------------------------------------------------------------------------
    def symmetries(self) -> tuple[list[Symmetry], list[Stop]]:
        found: list[Symmetry] = []
        stops: list[Stop] = []
        seen: set[int] = set()
        for index in range(len(self.spaces)):
            root = self.find(index)
            if root in seen:
                continue
            seen.add(root)
            space = self.spaces[root]
            producers = tuple(dict.fromkeys(space.producers))
            if space.stopped is not None:
                reason, node = space.stopped
                stops.append(Stop(producers, node, reason))
                continue
            consumers = [m for m in space.members if m.exponent < 0 or m.exponent > 1]
            if not consumers:
                stops.append(Stop(producers, "", "nothing consumes it"))
                continue
            members = tuple(dict.fromkeys(space.members))
            notes = [f"into {', '.join(dict.fromkeys(space.consumers))}"] + list(
                dict.fromkeys(space.approximate)
            )
            found.append(
                Symmetry(
                    id="+".join(producers),
                    size=space.size,
                    members=members,
                    exact=not space.approximate,
                    origin="graph",
                    note="; ".join(notes),
                )
            )
        return found, stops


def _op_name(target: Any) -> str:
    return (
        str(getattr(target, "__name__", target)) if not hasattr(target, "_schema") else str(target)
    )


def _groups(node: Any, ops: _Ops) -> int:
    # aten.convolution: (x, w, b, stride, padding, dilation, transposed, output_padding,
    # groups); conv{1,2,3}d and conv_transpose{1,2,3}d.input have groups at index 6.
    index = 8 if "convolution" in _op_name(node.target) else 6
    if len(node.args) > index and isinstance(node.args[index], int):
        return int(node.args[index])
    return int(dict(node.kwargs).get("groups", 1))


def structure_from_program(
    program: Any, tensor_names: Sequence[str]
) -> tuple[Structure, list[Stop]]:
    """The exact symmetries of an exported program, and where others were dropped."""
    walk = _Walk(program)
    walk.run()
    symmetries, stops = walk.symmetries()
    claimed = {member.tensor for symmetry in symmetries for member in symmetry.members}
    unassigned = tuple(
        Unassigned(name, "in no scale symmetry of the graph")
        for name in tensor_names
        if name not in claimed
    )
    return Structure(
        chains=(),
        unassigned=unassigned,
        origin="graph",
        symmetries=tuple(symmetries),
        stops=tuple(stops),
    ), stops


__all__ = ["Layout", "Segment", "structure_from_program"]
