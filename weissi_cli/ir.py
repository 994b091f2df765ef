"""The intermediate representation: layers, chains and the scale symmetries they imply."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Origin = str  # "spec" | "graph" | "config:<architecture>" | "heuristic"
Activation = Literal["relu", "leaky_relu", "prelu", "identity"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "leaky_relu", "prelu", "identity")
LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative slope
LayerKind = Literal["linear", "conv1d", "conv2d", "conv3d"]
FlattenOrder = Literal["channel-major", "channel-last", "time-major"]
FLATTEN_ORDERS: tuple[FlattenOrder, ...] = ("channel-major", "channel-last", "time-major")


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
    # What the members' channel layout takes for granted without proof (an assumed flatten
    # order), or "": one scale for every channel is right either way, one per channel is not.
    guess: str = ""


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


@dataclass(frozen=True)
class Flatten:
    """Where a flatten puts each output channel of a conv among a linear layer's inputs:
    `run` consecutive inputs per channel, the pattern of all channels repeated `repeat`
    times. Channel-major (torch.flatten of [C, H, W]): run H·W, once. Channel-last (a
    Keras-style [H, W, C]): run 1, H·W times. Time-major ([C, T, F] permuted to [T, C, F]):
    run F, T times. `order` is "" when nothing states it: channel-major is then a guess.
    """

    order: str
    run: int
    repeat: int = 1

    @property
    def proven(self) -> bool:
        return bool(self.order)

    @property
    def block(self) -> int:
        """Inputs per channel in all."""
        return self.run * self.repeat

    @staticmethod
    def stated(order: str, block: int, features: int = 1) -> Flatten:
        """The layout `order` gives a channel that feeds `block` inputs (`features`: F of a
        time-major [C, T, F] map; 1 for a conv1d's [C, T])."""
        if order == "channel-major":
            return Flatten(order, block, 1)
        if order == "channel-last":
            return Flatten(order, 1, block)
        if order == "time-major":
            if features < 1 or block % features:
                raise ValueError(f"{features} features per step do not divide {block} inputs")
            return Flatten(order, features, block // features)
        raise ValueError(f"unknown flatten order {order!r}")

    def members(self, tensor: str, channels: int) -> tuple[Member, ...]:
        """The consumer's columns, divided by each channel's scale: one member per repeat."""
        period = channels * self.run
        return tuple(Member(tensor, 1, -1, self.run, r * period) for r in range(self.repeat))

    def describe(self) -> str:
        if not self.proven:
            return f"assumed channel-major ({self.block} inputs per channel)"
        if self.repeat == 1:
            return f"{self.order} ({self.run} inputs per channel)"
        return f"{self.order} ({self.run} input(s) per channel, {self.repeat} times)"


def layer_kind(shape: tuple[int, ...]) -> LayerKind:
    kinds: dict[int, LayerKind] = {2: "linear", 3: "conv1d", 4: "conv2d", 5: "conv3d"}
    if len(shape) not in kinds:
        raise ValueError(f"a layer weight has 2 to 5 dimensions, not {len(shape)}")
    return kinds[len(shape)]


@dataclass(frozen=True)
class Chain:
    """Layers `W_1 ... W_L` joined by a positively homogeneous activation.

    `blocks[l]` is how many inputs of layer `l + 1` one output channel of layer `l` feeds
    (1, or H*W where a conv is flattened into a linear layer); `flattens[l]` says where
    those inputs lie (empty: channel-major, assumed). A leaky ReLU has the negative
    `slope`; a PReLU's slopes are the tensors `slopes[l]` after layer `l`, never scaled.
    """

    id: str
    origin: Origin
    activation: Activation
    layers: tuple[Layer, ...]
    blocks: tuple[int, ...]
    notes: tuple[str, ...] = ()
    flattens: tuple[Flatten | None, ...] = ()
    slope: float = LEAKY_SLOPE
    slopes: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def is_assumed(self) -> bool:
        return self.origin == "heuristic"

    def tensor_names(self) -> tuple[str, ...]:
        """The weights and biases: what a rebalance may scale."""
        names: list[str] = []
        for layer in self.layers:
            names.append(layer.weight)
            if layer.bias is not None:
                names.append(layer.bias)
        return tuple(names)

    def claimed(self) -> tuple[str, ...]:
        """Every tensor the chain accounts for: its weights and biases, and PReLU slopes."""
        return self.tensor_names() + self.slopes

    def flatten(self, link: int) -> Flatten | None:
        """How layer `link` feeds layer `link + 1` through a flatten (None: directly)."""
        if link < len(self.flattens) and self.flattens[link] is not None:
            return self.flattens[link]
        block = self.blocks[link]
        return Flatten("", block) if block != 1 else None

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
            flatten = self.flatten(index)
            guess = ""
            if flatten is None:
                members.append(Member(consumer.weight, 1, -1))
            else:
                members += flatten.members(consumer.weight, producer.out_features)
                if not flatten.proven:
                    guess = (
                        f"the flatten of {producer.prefix} into {consumer.prefix} is "
                        f"{flatten.describe()}"
                    )
            found.append(
                Symmetry(
                    id=f"{self.id}.{index}",
                    size=producer.out_features,
                    members=tuple(members),
                    origin=self.origin,
                    note=f"{self.activation} between {producer.prefix} and {consumer.prefix}",
                    guess=guess,
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
    # Why a rebalance must not act on this (assumed) structure: tensors names and shapes
    # cannot place, an architecture without an exact structure. Reports show them.
    refusals: tuple[str, ...] = field(default=())

    def all_symmetries(self) -> tuple[Symmetry, ...]:
        return tuple(s for chain in self.chains for s in chain.symmetries()) + self.symmetries

    def guesses(self) -> tuple[str, ...]:
        """What the channel layout of its symmetries takes for granted (see Symmetry.guess)."""
        return tuple(dict.fromkeys(s.guess for s in self.all_symmetries() if s.guess))

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
