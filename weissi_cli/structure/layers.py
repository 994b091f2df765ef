"""Turning tensor names into modules (prefixes) and deciding whether two layers connect."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from weissi_cli.io.checkpoint import Checkpoint, TensorInfo
from weissi_cli.ir import Layer

# A module whose last name component says "normalisation" (norm, LayerNorm, ln_f, bn1 ...).
_NORM_NAME = re.compile(r"(norm|^ln(_|\d|$)|^bn(_|\d|$))", re.IGNORECASE)
_RUNNING_STATS = ("running_mean", "running_var")


@dataclass
class Module:
    """The tensors that share a prefix, in discovery order."""

    prefix: str
    tensors: dict[str, TensorInfo] = field(default_factory=dict)  # suffix -> info

    def names(self) -> list[str]:
        return [info.name for info in self.tensors.values()]


def split_name(name: str) -> tuple[str, str]:
    prefix, _, suffix = name.rpartition(".")
    return prefix, suffix


def group_modules(checkpoint: Checkpoint) -> list[Module]:
    """Modules in the order their first tensor appears."""
    modules: dict[str, Module] = {}
    for info in checkpoint.tensors:
        prefix, suffix = split_name(info.name)
        modules.setdefault(prefix, Module(prefix)).tensors[suffix] = info
    return list(modules.values())


def is_normalisation(module: Module) -> bool:
    if any(stat in module.tensors for stat in _RUNNING_STATS):
        return True
    last = module.prefix.rpartition(".")[2]
    return bool(_NORM_NAME.search(last))


def as_layer(module: Module) -> Layer | None:
    """A module is a layer when its `weight` is a float tensor of 2 to 5 dims."""
    weight = module.tensors.get("weight")
    if weight is None or not weight.is_supported_float or not 2 <= len(weight.shape) <= 5:
        return None
    bias = module.tensors.get("bias")
    bias_name = bias.name if bias is not None else None
    return Layer(prefix=module.prefix, weight=weight.name, bias=bias_name, shape=weight.shape)


def bias_problem(layer: Layer, checkpoint: Checkpoint) -> str | None:
    """Why the layer's bias cannot be a bias of its output channels, if it cannot."""
    if layer.bias is None:
        return None
    info = checkpoint.info(layer.bias)
    if info.shape != (layer.out_features,):
        return f"{layer.bias} has shape {info.shape}, not ({layer.out_features},)"
    if not info.is_supported_float:
        return f"{layer.bias} has dtype {info.dtype}"
    return None


def connection(producer: Layer, consumer: Layer) -> tuple[int | None, str]:
    """How many consumer inputs each producer output feeds (None: they do not connect)."""
    produced, expected = producer.out_features, consumer.in_features
    if expected == produced:
        return 1, ""
    if producer.kind != "linear" and consumer.kind == "linear" and expected % produced == 0:
        block = expected // produced
        return block, (
            f"{producer.prefix} ({produced} channels) is flattened into {consumer.prefix} "
            f"({expected} inputs), {block} inputs per channel in an order the weights do not "
            "show (channel-major assumed: per-channel rebalancing needs the order stated)"
        )
    return None, (
        f"{producer.prefix} outputs {produced} channels but {consumer.prefix} takes "
        f"{expected} inputs"
    )
