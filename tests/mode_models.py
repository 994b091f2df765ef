"""Networks trained on digits whose forward pass depends on the mode or the batch size."""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch.nn import functional

from tests.trained_models import training_digits


def _pixels() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = training_digits()
    return images.flatten(1), labels


def _trained(model: nn.Module, with_aux: bool = False) -> nn.Module:
    pixels, labels = _pixels()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        optimiser.zero_grad()
        if with_aux:
            out, aux = model(pixels)
            loss = functional.cross_entropy(out, labels) + 0.3 * functional.cross_entropy(
                aux, labels
            )
        else:
            loss = functional.cross_entropy(model(pixels), labels)
        loss.backward()
        optimiser.step()
    return model.eval()


class AuxNet(nn.Module):
    """Deep supervision: in train mode an auxiliary head reads fc1's output and its logits
    are returned too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)
        self.aux = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        hidden = functional.relu(self.fc1(x))
        out = self.fc3(functional.relu(self.fc2(hidden)))
        if self.training:
            return out, self.aux(hidden)
        return out


class BatchDependent(nn.Module):
    """A single example takes a fast path; a batch adds a skip head on the hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)
        self.skip = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = functional.relu(self.fc1(x))
        if x.shape[0] == 1:
            return self.fc2(hidden)  # type: ignore[no-any-return]
        return self.fc2(hidden) + self.skip(hidden)  # type: ignore[no-any-return]


class DropoutNorm(nn.Module):
    """Linear, batch norm, ReLU, dropout, linear: every tensor read in both modes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 48)
        self.norm = nn.BatchNorm1d(48)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(48, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.drop(functional.relu(self.norm(self.fc1(x))))
        return self.fc3(functional.relu(self.fc2(hidden)))  # type: ignore[no-any-return]


class Unused(nn.Module):
    """An MLP that carries a head its forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)
        self.spare = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(functional.relu(self.fc1(x)))  # type: ignore[no-any-return]


@cache
def trained(name: str) -> nn.Module:
    """The module `name` of this file, trained for 40 full-batch Adam steps."""
    torch.manual_seed(0)
    model: nn.Module = globals()[name]()
    return _trained(model, with_aux=name == "AuxNet")


def pixels() -> torch.Tensor:
    """Held-out digit images as rows of 64 pixels."""
    from tests.trained_models import TRAINING, digits

    return digits()[0][TRAINING:].flatten(1)
