"""The intermediate representation: layers, chains and the scale symmetries they imply."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Origin = str  # "spec" | "graph" | "config:<architecture>" | "heuristic"
Activation = Literal["relu", "leaky_relu", "identity"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "leaky_relu", "identity")
LayerKind = Literal["linear", "conv1d", "conv2d", "conv3d"]


@dataclass(frozen=True)
class Member:
    """Scaling a symmetry by `c` multiplies `tensor` along `axis` by `c**exponent`.

    With `block > 1` each channel covers `block` consecutive entries of that axis
    (a conv flattened into a linear layer: block = H*W); the channels start at entry
    `offset` of the axis (a concatenation puts a producer's channels after another's).
    """

    tensor: str
    axis: int
    exponent: int
    block: int = 1
    offset: int = 0


@dataclass(frozen=True)
class Symmetry:
    """For any positive `c` of length `size`, applying every member leaves the function
    unchanged (exactly, or to first order when `exact` is False)."""

    id: str
    size: int
    members: tuple[Member, ...]
    tie: int = 1
    exact: bool = True
    origin: Origin = "heuristic"
    note: str = ""
    kind: str = ""  # what it relates, for reports: "q↔k", "up→down", ... ("" for graph/spec)
    group: str = ""  # where it sits, for reports: a transformer block's prefix


@dataclass(frozen=True)
class Layer:
    """A parameterised linear map: `<prefix>.weight` in torch layout `[out, in, ...]`."""

    prefix: str
    weight: str
    bias: str | None
    shape: tuple[int, ...]

    @property
    def kind(self) -> LayerKind:
        return layer_kind(self.shape)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]


def layer_kind(shape: tuple[int, ...]) -> LayerKind:
    kinds: dict[int, LayerKind] = {2: "linear", 3: "conv1d", 4: "conv2d", 5: "conv3d"}
    if len(shape) not in kinds:
        raise ValueError(f"a layer weight has 2 to 5 dimensions, not {len(shape)}")
    return kinds[len(shape)]


@dataclass(frozen=True)
class Chain:
    """Layers `W_1 ... W_L` joined by a positively homogeneous activation.

    `blocks[l]` is how many consecutive inputs of layer `l + 1` one output channel of
    layer `l` feeds (1, or H*W where a conv is flattened into a linear layer).
    """

    id: str
    origin: Origin
    activation: Activation
    layers: tuple[Layer, ...]
    blocks: tuple[int, ...]
    notes: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def is_assumed(self) -> bool:
        return self.origin == "heuristic"

    def tensor_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for layer in self.layers:
            names.append(layer.weight)
            if layer.bias is not None:
                names.append(layer.bias)
        return tuple(names)

    def symmetries(self) -> tuple[Symmetry, ...]:
        """One symmetry per hidden space: rows of W_l and b_l times c, columns of W_{l+1}
        divided by c."""
        found = []
        for index, (producer, consumer) in enumerate(
            zip(self.layers, self.layers[1:], strict=False)
        ):
            members = [Member(producer.weight, 0, 1)]
            if producer.bias is not None:
                members.append(Member(producer.bias, 0, 1))
            members.append(Member(consumer.weight, 1, -1, self.blocks[index]))
            found.append(
                Symmetry(
                    id=f"{self.id}.{index}",
                    size=producer.out_features,
                    members=tuple(members),
                    origin=self.origin,
                    note=f"{self.activation} between {producer.prefix} and {consumer.prefix}",
                )
            )
        return tuple(found)


@dataclass(frozen=True)
class Unassigned:
    """A tensor that belongs to no chain, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Stop:
    """Where a would-be symmetry was dropped, and why (an op that does not commute with a
    per-channel scale, the graph output, ...)."""

    producers: tuple[str, ...]
    node: str
    reason: str


@dataclass(frozen=True)
class Structure:
    """Everything weissi knows about a checkpoint's scale symmetries: chains of layers, and
    symmetries that are not chains (from a graph or a spec's [[symmetry]] tables)."""

    chains: tuple[Chain, ...]
    unassigned: tuple[Unassigned, ...]
    origin: Origin
    assumptions: tuple[str, ...] = field(default=())
    symmetries: tuple[Symmetry, ...] = field(default=())
    stops: tuple[Stop, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())  # facts about the structure a report states

    def all_symmetries(self) -> tuple[Symmetry, ...]:
        return tuple(s for chain in self.chains for s in chain.symmetries()) + self.symmetries

    @property
    def is_assumed(self) -> bool:
        return any(chain.is_assumed for chain in self.chains) or any(
            symmetry.origin == "heuristic" for symmetry in self.symmetries
        )

    def folded(self) -> Structure:
        """Chains that share tensors with free symmetries become free symmetries too, so one
        joint solve scales each tensor once."""
        shared = {member.tensor for symmetry in self.symmetries for member in symmetry.members}
        folding = [chain for chain in self.chains if shared & set(chain.tensor_names())]
        if not folding:
            return self
        kept = tuple(chain for chain in self.chains if chain not in folding)
        extra = tuple(symmetry for chain in folding for symmetry in chain.symmetries())
        return replace(self, chains=kept, symmetries=self.symmetries + extra)
