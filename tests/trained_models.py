"""Small networks trained for a few seconds on sklearn's digits, each one a case where names
and shapes alone mislead: sibling heads with PReLU slopes, flattens that are not
channel-major, a transformer outside the registry, float16 with small activations, a GELU
MLP. Each builder returns the trained model in eval mode; the tests run the model's own
forward pass before and after a rewrite.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

STEPS = 60
TRAINING = 512  # images trained on (the first ones); the rest are held out


@cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(images [1797, 1, 8, 8] in [0, 1], labels [1797])."""
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(data.target)


def training_digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = digits()
    return images[:TRAINING], labels[:TRAINING]


def quadrant_means(images: torch.Tensor) -> torch.Tensor:
    """A regression target per image: the mean ink of its four 4x4 quadrants."""
    return nn.functional.avg_pool2d(images, 4).flatten(1)


def train(
    model: nn.Module, loss: Callable[[nn.Module], torch.Tensor], steps: int = STEPS
) -> nn.Module:
    """Adam on the full batch, from a fixed seed."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        value = loss(model)
        value.backward()
        optimiser.step()
    return model.eval()


class TwoHeadPReLU(nn.Module):
    """A P-Net-like CNN: three conv + PReLU layers, then two sibling 1x1-conv heads on the
    last hidden map, class scores (`conv4_1`) and a box-like regression (`conv4_2`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.prelu1 = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 16, 3)
        self.prelu3 = nn.PReLU(16)
        self.conv4_1 = nn.Conv2d(16, 10, 1)
        self.conv4_2 = nn.Conv2d(16, 4, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.prelu1(self.conv1(images))
        hidden = self.prelu2(self.conv2(hidden))
        hidden = self.prelu3(self.conv3(hidden))
        return self.conv4_1(hidden).mean((2, 3)), self.conv4_2(hidden).mean((2, 3))


def two_head_prelu() -> TwoHeadPReLU:
    torch.manual_seed(0)
    images, labels = training_digits()
    boxes = quadrant_means(images)

    def loss(model: nn.Module) -> torch.Tensor:
        scores, regression = model(images)
        return nn.functional.cross_entropy(scores, labels) + nn.functional.mse_loss(
            regression, boxes
        )

    model = train(TwoHeadPReLU(), loss)
    with torch.no_grad():  # slopes that differ per channel and from ReLU's 0
        for prelu in (model.prelu1, model.prelu2, model.prelu3):
            prelu.weight.uniform_(0.05, 0.4)
    return model


class FlattenNet(nn.Module):
    """conv → ReLU (→ BatchNorm) → max-pool → flatten in `order` → linear → ReLU → linear.

    time-major: the [C, T, F] map is permuted to [T, C, F] (rows of the image as time steps),
    so each channel feeds runs of F inputs, once per step; channel-last: [H, W, C], as a
    Keras-converted model flattens (each channel feeds every C-th input)."""

    def __init__(self, order: str, batch_norm: bool) -> None:
        super().__init__()
        self.order = order
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6) if batch_norm else None
        self.fc1 = nn.Linear(6 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(images))
        if self.bn is not None:
            hidden = self.bn(hidden)
        hidden = nn.functional.max_pool2d(hidden, 2)
        if self.order == "time-major":
            hidden = hidden.permute(0, 2, 1, 3)
        elif self.order == "channel-last":
            hidden = hidden.permute(0, 2, 3, 1)
        hidden = hidden.reshape(hidden.shape[0], -1)
        return self.fc2(torch.relu(self.fc1(hidden)))


def flatten_net(order: str, batch_norm: bool) -> FlattenNet:
    torch.manual_seed(1)
    images, labels = training_digits()
    model = train(
        FlattenNet(order, batch_norm),
        lambda m: nn.functional.cross_entropy(m(images), labels),
    )
    with torch.no_grad():  # channels of unequal size, so per-channel scales differ widely
        spread = torch.exp2(torch.linspace(-3, 3, 6))
        model.conv.weight.mul_(spread.reshape(-1, 1, 1, 1))
        model.conv.bias.mul_(spread)
        if model.bn is not None:
            model.bn.running_mean.mul_(spread)
            model.bn.running_var.mul_(spread**2)
    return model


class SmallMLP(nn.Module):
    """64 → 64 → 32 → 10 with ReLU, the state dict names `net.0`, `net.2`, `net.4`."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)  # type: ignore[no-any-return]


def small_activation_mlp() -> SmallMLP:
    """Trained in float32, then shifted (the same function) so that the first hidden layer's
    activations are about 2^-8 of their trained size: in float16 many of them sit near or
    below 2^-14, where a power-of-two rescaling rounds them differently."""
    torch.manual_seed(2)
    images, labels = training_digits()
    flat = images.flatten(1)
    model = train(SmallMLP(), lambda m: nn.functional.cross_entropy(m(flat), labels))
    with torch.no_grad():
        model.net[0].weight.mul_(2.0**-11)
        model.net[0].bias.mul_(2.0**-11)
        model.net[2].weight.mul_(2.0**11)
    return model


class PReLUMLP(nn.Module):
    """64 → 48 → 24 → 10 with a PReLU (per-channel slopes) after each hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(64, 48), nn.PReLU(48)
        self.fc2, self.act2 = nn.Linear(48, 24), nn.PReLU(24)
        self.fc3 = nn.Linear(24, 10)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(inputs)))))  # type: ignore[no-any-return]


def prelu_mlp() -> PReLUMLP:
    torch.manual_seed(3)
    images, labels = training_digits()
    flat = images.flatten(1)
    model = train(PReLUMLP(), lambda m: nn.functional.cross_entropy(m(flat), labels))
    with torch.no_grad():
        model.act1.weight.uniform_(0.05, 0.5)
        model.act2.weight.uniform_(0.05, 0.5)
        model.fc1.weight.mul_(8.0)
        model.fc1.bias.mul_(8.0)
        model.fc2.weight.mul_(0.125)
    return model


# Digit images as token sequences: 17 ink levels (0..16) read row by row, after a start
# token 17. A tiny language model learns to continue them.
VOCABULARY = 18
START = 17


def digit_tokens() -> torch.Tensor:
    """[1797, 65] token ids."""
    data = torch.tensor(load_digits().data, dtype=torch.long)
    return torch.cat([torch.full((data.shape[0], 1), START), data], dim=1)


TRANSFORMERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # Outside weissi's registry: q_norm/k_norm after the query and key projections.
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        {
            "vocab_size": VOCABULARY,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 80,
        },
    ),
    # In the registry, with a GELU MLP: its up→down symmetries are approximate.
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {
            "vocab_size": VOCABULARY,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 80,
            "bos_token_id": START,
            "eos_token_id": START,
        },
    ),
}


def language_model(name: str, steps: int = 30) -> Any:
    """A tiny transformers model of `name`, built from its config with transformers' own
    classes and trained to continue digit token sequences."""
    import transformers

    config_class, model_class, fields = TRANSFORMERS[name]
    torch.manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = getattr(transformers, config_class)(**fields)
        model = getattr(transformers, model_class)(config)
    tokens = digit_tokens()[:TRAINING]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        start = (step * 16) % TRAINING
        batch = tokens[start : start + 16]
        optimiser.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        optimiser.step()
    return model.eval()


def held_out_tokens() -> torch.Tensor:
    """Digit token sequences the language models were not trained on: real inputs."""
    return digit_tokens()[1500:1564]
