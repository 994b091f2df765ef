"""One tiny module per op rule: the symmetries the engine finds are the expected ones, hold
when the module itself is run before and after a random rescaling, and are tight (leaving
out any member changes the outputs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from tests.structure.engine_helpers import (
    MemberKey,
    assert_exact_and_tight,
    engine_structure,
    keys,
)

Expected = set[tuple[int, frozenset[MemberKey]]]


def rows(name: str, exponent: int = 1, offset: int = 0) -> MemberKey:
    return (name, 0, exponent, 1, offset)


def cols(name: str, block: int = 1, offset: int = 0, exponent: int = -1) -> MemberKey:
    return (name, 1, exponent, block, offset)


def sym(size: int, *members: MemberKey) -> tuple[int, frozenset[MemberKey]]:
    flipped = frozenset((t, a, -e, b, o) for t, a, e, b, o in members)
    return size, min(frozenset(members), flipped, key=sorted)


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.7 + 0.1)
    return module.double().eval()


class Chain(nn.Module):
    """linear → act → linear: the classic hidden-unit symmetry."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(5, 6), act, nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)))


def linear_chain(act: nn.Module) -> Callable[[], tuple[nn.Module, Any, Expected]]:
    def build() -> tuple[nn.Module, Any, Expected]:
        expected = {sym(6, rows("a.weight"), rows("a.bias"), cols("b.weight"))}
        return Chain(act), (torch.randn(4, 5),), expected

    return build


def no_symmetry(act: nn.Module) -> Callable[[], tuple[nn.Module, Any, Expected]]:
    def build() -> tuple[nn.Module, Any, Expected]:
        return Chain(act), (torch.randn(4, 5),), set()

    return build


class Gated(nn.Module):
    """silu(gate(x)) · up(x) → down: up's rows pass to down's columns; the gate is pinned."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(5, 6), nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class Residual(nn.Module):
    """Two branches added: their producers share one scale, read by the head."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.head = nn.Linear(5, 6), nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.left(x) + self.right(x)))


class QueryKey(nn.Module):
    """softmax(q kᵀ) v → out, with two heads split by a view."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, 2, 4).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return self.o((scores @ v).transpose(1, 2).reshape(n, t, 8))


class Attention(QueryKey):
    """The same through scaled_dot_product_attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, 2, 4).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        )
        return self.o(out.transpose(1, 2).reshape(n, t, 8))


def attention_expected() -> Expected:
    return {
        sym(8, rows("q.weight"), rows("k.weight", -1)),
        sym(8, rows("v.weight"), cols("o.weight")),
    }


class NormGain(nn.Module):
    """layer_norm's gain and shift scale together into the next layer's columns."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.inp(x)))


class OnePlusGain(nn.Module):
    """A gain of the form (1 + w) cannot absorb a scale: nothing is free."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(6))
        self.inp, self.out = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inp(x)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.out(y * (1.0 + self.weight))


class Flatten(nn.Module):
    """conv → relu → flatten → linear: a channel covers H·W consecutive features."""

    def __init__(self, order: str = "channel-major") -> None:
        super().__init__()
        self.order = order
        self.conv, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        if self.order == "channel-last":
            y = y.permute(0, 2, 3, 1)
        return self.fc(y.reshape(y.shape[0], -1))


class Concat(nn.Module):
    """Two producers concatenated on the feature axis: each at its offset."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.head = nn.Linear(5, 2), nn.Linear(5, 3), nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(torch.cat([self.left(x), self.right(x)], dim=-1)))


class Split(nn.Module):
    """One producer chunked into two halves feeding two consumers (fused projections)."""

    def __init__(self) -> None:
        super().__init__()
        self.fused, self.a, self.b = nn.Linear(5, 8), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.fused(x).chunk(2, dim=-1)
        return self.a(torch.relu(first)) + self.b(torch.relu(second))


class Embedding(nn.Module):
    """An embedding's columns feed a linear layer: columns ↔ the layer's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.table, self.out = nn.Embedding(7, 4), nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.table(ids))


class Pooled(nn.Module):
    """conv → max pool → conv: pooling keeps each channel's scale."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.max_pool2d(torch.relu(self.a(x)), 2))


class GlobalPooled(nn.Module):
    """conv → global pooling that keeps its axes (squeeze-excitation style) → 1×1 conv: the
    channels keep their scale through the reduction."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.a(x))
        if self.how == "mean":
            pooled = hidden.mean(dim=(2, 3), keepdim=True)
        elif self.how == "amax":
            pooled = hidden.amax(dim=(-2, -1), keepdim=True)
        else:
            pooled = hidden.sum(dim=3, keepdim=True)
        return self.b(pooled)


class Grouped(nn.Module):
    """A grouped convolution: each group's inputs meet the same kernel columns."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1, groups=2)
        self.c = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class Rotary(nn.Module):
    """q and k rotated by rotate_half: dimensions i and i + d/2 must share a scale."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.arange(x.shape[1], dtype=x.dtype)[:, None] * torch.tensor([0.3, 0.7])
        cos = torch.cat([angles.cos(), angles.cos()], -1)
        sin = torch.cat([angles.sin(), angles.sin()], -1)

        def rotate(y: torch.Tensor) -> torch.Tensor:
            half = y.shape[-1] // 2
            return torch.cat([-y[..., half:], y[..., :half]], dim=-1)

        q, k = self.q(x), self.k(x)
        q = q * cos + rotate(q) * sin
        k = k * cos + rotate(k) * sin
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1)


CASES: dict[str, Callable[[], tuple[nn.Module, Any, Expected]]] = {
    "relu": linear_chain(nn.ReLU()),
    "leaky_relu": linear_chain(nn.LeakyReLU(0.1)),
    "prelu": linear_chain(nn.PReLU(6)),
    "identity": linear_chain(nn.Identity()),
    "gelu": no_symmetry(nn.GELU()),
    "tanh": no_symmetry(nn.Tanh()),
    "relu6": no_symmetry(nn.ReLU6()),
    "gated": lambda: (
        Gated(),
        (torch.randn(4, 5),),
        {sym(6, rows("up.weight"), rows("up.bias"), cols("down.weight"))},
    ),
    "residual": lambda: (
        Residual(),
        (torch.randn(4, 5),),
        {
            sym(
                6,
                rows("left.weight"),
                rows("left.bias"),
                rows("right.weight"),
                rows("right.bias"),
                cols("head.weight"),
            )
        },
    ),
    "matmul_attention": lambda: (QueryKey(), (torch.randn(2, 3, 8),), attention_expected()),
    "sdpa": lambda: (Attention(), (torch.randn(2, 3, 8),), attention_expected()),
    "layer_norm": lambda: (
        NormGain(),
        (torch.randn(4, 5),),
        {sym(6, rows("norm.weight"), rows("norm.bias"), cols("out.weight"))},
    ),
    "one_plus_gain": lambda: (OnePlusGain(), (torch.randn(4, 5),), set()),
    "flatten": lambda: (
        Flatten(),
        (torch.randn(2, 2, 4, 4),),
        {sym(3, rows("conv.weight"), rows("conv.bias"), cols("fc.weight", block=16))},
    ),
    "flatten_channel_last": lambda: (
        Flatten("channel-last"),
        (torch.randn(2, 2, 4, 4),),
        # channel c sits at feature p·3 + c of every position p: one member per position
        {
            sym(
                3,
                rows("conv.weight"),
                rows("conv.bias"),
                *(cols("fc.weight", offset=p * 3) for p in range(16)),
            )
        },
    ),
    "concat": lambda: (
        Concat(),
        (torch.randn(4, 5),),
        {
            sym(2, rows("left.weight"), rows("left.bias"), cols("head.weight")),
            sym(3, rows("right.weight"), rows("right.bias"), cols("head.weight", offset=2)),
        },
    ),
    "split": lambda: (
        Split(),
        (torch.randn(4, 5),),
        {
            sym(4, rows("fused.weight"), rows("fused.bias"), cols("a.weight")),
            sym(4, rows("fused.weight", offset=4), rows("fused.bias", offset=4), cols("b.weight")),
        },
    ),
    "embedding": lambda: (
        Embedding(),
        (torch.tensor([[1, 2, 6]]),),
        {sym(4, cols("table.weight", exponent=1), cols("out.weight"))},
    ),
    "max_pool": lambda: (
        Pooled(),
        (torch.randn(1, 2, 6, 6),),
        {sym(3, rows("a.weight"), rows("a.bias"), cols("b.weight"))},
    ),
    **{
        f"keepdim_{how}": (
            lambda how=how: (
                GlobalPooled(how),
                (torch.randn(1, 2, 5, 5),),
                {sym(3, rows("a.weight"), rows("a.bias"), cols("b.weight"))},
            )
        )
        for how in ("mean", "amax", "sum")
    },
    "grouped_conv": lambda: (
        Grouped(),
        (torch.randn(1, 2, 3, 3),),
        {
            # each group's input channels follow the same pattern: channel j of group 0 and
            # of group 1 share a scale, matched by kernel column j
            sym(
                2,
                rows("a.weight"),
                rows("a.bias"),
                rows("a.weight", offset=2),
                rows("a.bias", offset=2),
                cols("b.weight"),
            ),
            sym(4, rows("b.weight"), rows("b.bias"), cols("c.weight")),
        },
    ),
    "rotary": lambda: (
        Rotary(),
        (torch.randn(1, 3, 4),),
        {
            sym(
                2,
                rows("q.weight"),
                rows("q.weight", offset=2),
                rows("k.weight", -1),
                rows("k.weight", -1, offset=2),
            )
        },
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_finds_the_expected_symmetries_and_they_hold(case: str) -> None:
    model, args, expected = CASES[case]()
    model = _seeded(model, seed=len(case))
    args = tuple(a.double() if a.is_floating_point() else a for a in args)
    structure = engine_structure(model, args)
    assert {keys(s) for s in structure.symmetries} == expected
    assert_exact_and_tight(model, args, structure)


def test_a_non_symmetry_changes_the_outputs() -> None:
    """Scaling a producer's rows without its consumer's columns is caught by the check the
    tests rely on (the check itself can fail)."""
    from tests.structure.engine_helpers import rescaled_change
    from weissi_cli.ir import Member, Symmetry

    model = _seeded(Chain(nn.ReLU()), seed=3)
    wrong = Symmetry("wrong", 6, (Member("a.weight", 0, 1), Member("a.bias", 0, 1)))
    assert rescaled_change(model, (torch.randn(4, 5).double(),), [wrong]) > 1e-3


def test_an_op_without_a_rule_stops_its_inputs_and_is_named() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.special.i0(self.a(x)))

    model = _seeded(Odd(), seed=1)
    structure = engine_structure(model, (torch.randn(4, 5).double(),))
    assert structure.symmetries == ()
    assert any("special_i0" in note or "i0" in note for note in structure.notes)
    assert any(stop.producers == ("a",) and "no rule" in stop.reason for stop in structure.stops)
