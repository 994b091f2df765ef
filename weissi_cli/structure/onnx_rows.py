"""What every ONNX row shares: the row record, attribute and axis helpers, and the padding
rules of convolutions and pools."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weissi_cli.io.onnx_model import Node
from weissi_cli.structure.onnx_graph import Builder, Unsupported

RowFunction = Callable[[Builder, Node, list[Any]], list[Any]]


@dataclass(frozen=True)
class Row:
    function: RowFunction
    aten: str  # what it becomes
    note: str = ""


def aten_ops() -> Any:
    import torch

    return torch.ops.aten


def attribute(node: Node, name: str, default: Any = None) -> Any:
    return node.attributes.get(name, default)


def rank_of(b: Builder, value: Any) -> int:
    return len(b.shape(value))


def normalised_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise Unsupported(f"axis {axis} of a rank-{rank} tensor")
    return axis % max(rank, 1)


def conv_pads(b: Builder, node: Node, spatial: list[int], kernel: list[int]) -> list[int]:
    """ONNX pads (begins then ends) for the node's auto_pad."""
    count = len(kernel)
    auto = attribute(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    strides = list(attribute(node, "strides", [1] * count))
    dilations = list(attribute(node, "dilations", [1] * count))
    if auto in ("NOTSET", ""):
        pads = list(attribute(node, "pads", [0] * (2 * count)))
        if len(pads) != 2 * count:
            raise Unsupported("pads of the wrong length")
        return pads
    if auto == "VALID":
        return [0] * (2 * count)
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends


def pad_first(b: Builder, x: Any, pads: list[int], value: float) -> tuple[Any, list[int]]:
    """Symmetric pads go to the op; others become an explicit pad first."""
    count = len(pads) // 2
    if pads[:count] == pads[count:]:
        return x, pads[:count]
    torch_pads: list[int] = []
    for dim in reversed(range(count)):
        torch_pads += [pads[dim], pads[dim + count]]
    return b.call(aten_ops().constant_pad_nd.default, x, torch_pads, value), [0] * count


def holds_only(b: Builder, value: Any, number: float) -> bool:
    """Whether `value` is known (a constant or an initializer) to be `number` everywhere: a
    gain of ones or a shift of zeros that exporters write where a layer has none."""
    if value is None:
        return False
    try:
        known = b.known_of(value)
    except Unsupported:
        return False
    return bool((known == number).all())
