"""Small deterministic torch models for the graph walk, and a helper that exports them.

Every builder returns `(model, example_args)` with the model in eval mode. Batch norms get
non-trivial statistics and affines (a few training-mode passes on random data, then random
affines), so a scale that reaches them is visible in the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weissi_cli.ir import Symmetry

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


def export(model: nn.Module, example_args: tuple[torch.Tensor, ...], path: Path) -> Path:
    """`torch.export.export` the model on `example_args` and save the program at `path`."""
    program = torch.export.export(model, example_args)
    torch.export.save(program, path)
    return path


def _unbalance(model: nn.Module, seed: int) -> None:
    """Multiply each output channel of every linear, conv and batch-norm affine (weight and
    bias) by its own factor between 1/8 and 8, so rebalancing has work to do even with
    power-of-two scales. (This changes the model; the tests compare against the exported
    program, not against the untouched initialisation.)"""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d | nn.BatchNorm2d):
                weight = module.weight
                factors = torch.exp2(torch.rand(weight.shape[0], generator=generator) * 6 - 3)
                weight.mul_(factors.reshape(-1, *([1] * (weight.dim() - 1))))
                if module.bias is not None:
                    module.bias.mul_(factors)


def _settle_batch_norms(model: nn.Module, shape: tuple[int, ...], seed: int) -> None:
    """Give every batch norm running statistics from a few training passes, and an affine
    whose channels differ by up to 64x (as `_unbalance` does for the other layers)."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape, generator=generator) * 2.0 + 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                spread = torch.exp2(torch.rand(size, generator=generator) * 6 - 3)
                module.weight.copy_((torch.rand(size, generator=generator) + 0.5) * spread)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.5)
    model.eval()


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (identity, or a strided 1x1 conv + BN), ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module | None = None
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet() -> Built:
    """Stem conv-BN-ReLU, an identity block (8 channels), a projection block (16, stride 2),
    global average pooling, a linear head. Input (2, 3, 16, 16)."""
    torch.manual_seed(0)
    model = ResNet()
    _unbalance(model, seed=1)
    _settle_batch_norms(model, (4, 3, 16, 16), seed=1)
    return model, (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)),)


class ConcatConv(nn.Module):
    """Two conv-ReLU branches (4 and 6 channels) concatenated on dim 1, mixed by a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 6, 3, padding=1)
        self.mix = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        mixed = torch.relu(self.mix(joined))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(mixed, 1), 1))


class ConcatFlatten(nn.Module):
    """Two conv-ReLU branches (4 and 6 channels, 4x4 maps) concatenated, flattened into a
    linear layer: each channel feeds a block of H*W = 16 features."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(10 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.fc(torch.flatten(joined, 1))


def concat_conv() -> Built:
    """Input (2, 3, 8, 8)."""
    torch.manual_seed(3)
    model = ConcatConv()
    _unbalance(model, seed=3)
    return model.eval(), (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)),)


def concat_flatten() -> Built:
    """Input (2, 3, 4, 4)."""
    torch.manual_seed(5)
    model = ConcatFlatten()
    _unbalance(model, seed=5)
    return model.eval(), (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6)),)


class ReluBeforeNorm(nn.Module):
    """conv → ReLU → BN → conv → ReLU → flatten → linear (4x4 maps)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.bn(torch.relu(self.conv1(x)))
        hidden = torch.relu(self.conv2(hidden))
        return self.fc(torch.flatten(hidden, 1))


def relu_before_bn() -> Built:
    """Input (2, 3, 4, 4)."""
    torch.manual_seed(7)
    model = ReluBeforeNorm()
    _unbalance(model, seed=8)
    _settle_batch_norms(model, (8, 3, 4, 4), seed=8)
    return model, (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(9)),)


def _mlp(sizes: tuple[int, ...], activation: Callable[[], nn.Module], seed: int) -> Built:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if index:
            layers.append(activation())
        layers.append(nn.Linear(fan_in, fan_out))
    model = nn.Sequential(*layers)
    _unbalance(model, seed=seed)
    inputs = torch.randn(4, sizes[0], generator=torch.Generator().manual_seed(seed + 1))
    return model.eval(), (inputs,)


def gelu_mlp() -> Built:
    """Linear(6, 8) → GELU → Linear(8, 3): names `0`, `2`."""
    return _mlp((6, 8, 3), nn.GELU, seed=10)


def relu6_mlp() -> Built:
    """Linear(6, 8) → ReLU6 → Linear(8, 3): names `0`, `2`."""
    return _mlp((6, 8, 3), nn.ReLU6, seed=12)


def relu_mlp() -> Built:
    """Linear(6, 8) → ReLU → Linear(8, 5) → ReLU → Linear(5, 3): names `0`, `2`, `4`."""
    return _mlp((6, 8, 5, 3), nn.ReLU, seed=14)


class ResidualMLP(nn.Module):
    """Linear `inp` → ReLU → h + ReLU(`inner`(h)) → Linear `out`: `inner` maps the hidden
    space to itself, so the hidden space's one symmetry scales its rows and its columns."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.inner, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.inp(x))
        hidden = hidden + torch.relu(self.inner(hidden))
        return self.out(hidden)


class ResidualConv(nn.Module):
    """The same with convolutions: a 3x3 conv `inner` (padded) inside the residual branch,
    between a 3x3 stem `inp` and a 1x1 head `out`."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, 6, 3, padding=1)
        self.inner = nn.Conv2d(6, 6, 3, padding=1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.inp(x))
        hidden = hidden + torch.relu(self.inner(hidden))
        return self.out(hidden)


def residual_mlp() -> Built:
    torch.manual_seed(16)
    model = ResidualMLP()
    _unbalance(model, seed=16)
    return model.eval(), (torch.randn(4, 6, generator=torch.Generator().manual_seed(17)),)


def residual_conv() -> Built:
    torch.manual_seed(18)
    model = ResidualConv()
    _unbalance(model, seed=18)
    return model.eval(), (torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(19)),)


BUILDERS: dict[str, Callable[[], Built]] = {
    "resnet": resnet,
    "concat_conv": concat_conv,
    "concat_flatten": concat_flatten,
    "relu_before_bn": relu_before_bn,
    "gelu_mlp": gelu_mlp,
    "relu6_mlp": relu6_mlp,
    "relu_mlp": relu_mlp,
    "residual_mlp": residual_mlp,
    "residual_conv": residual_conv,
}


def export_all(folder: Path) -> dict[str, Path]:
    """Every model exported once into `folder`, as `<name>.pt2`."""
    paths = {}
    for name, build in BUILDERS.items():
        model, args = build()
        paths[name] = export(model, args, folder / f"{name}.pt2")
    return paths


def member_factors(
    symmetries: Iterable[Symmetry],
    scales: Mapping[str, torch.Tensor | np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """The factor (float64, the tensor's shape) that applying `scales[symmetry.id]` to every
    member multiplies each tensor by, straight from the definition of `ir.Member`: along
    `axis`, entries `offset ... offset + size * block` take `c ** exponent`, each channel
    repeated over `block` consecutive entries."""
    factors: dict[str, torch.Tensor] = {}
    for symmetry in symmetries:
        scale = torch.as_tensor(np.asarray(scales[symmetry.id]), dtype=torch.float64)
        assert scale.shape == (symmetry.size,)
        for member in symmetry.members:
            shape = shapes[member.tensor]
            factor = factors.setdefault(member.tensor, torch.ones(shape, dtype=torch.float64))
            along = torch.ones(shape[member.axis], dtype=torch.float64)
            span = slice(member.offset, member.offset + symmetry.size * member.block)
            along[span] = torch.repeat_interleave(scale**member.exponent, member.block)
            view = [1] * len(shape)
            view[member.axis] = shape[member.axis]
            factor *= along.reshape(view)
    return factors
