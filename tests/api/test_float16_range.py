"""float16's range: growth a power-of-two rewrite causes is measured; --hold-headroom stops it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional

from tests.trained_models import digits, training_digits
from weissi_cli.api import rebalance_checkpoint
from weissi_cli.errors import UsageError


class ResidualCNN(nn.Module):
    """Conv, batch norm, a residual block of two convs, pooling, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.b2 = nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.b1(self.c1(x)))
        hidden = functional.relu(self.b2(self.c2(x)))
        hidden = hidden + functional.relu(self.c4(functional.relu(self.c3(hidden))))
        hidden = functional.max_pool2d(hidden, 2).flatten(1)
        return self.fc2(functional.relu(self.fc1(hidden)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def trained_cnn() -> ResidualCNN:
    """40 full-batch Adam steps on digits: enough for the L2 optimum to grow activations
    (the residual stream's, by hundreds)."""
    torch.manual_seed(0)
    images, labels = training_digits()
    model = ResidualCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimiser.zero_grad()
        functional.cross_entropy(model(images), labels).backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    # Weights on a grid of 2^-10, so that float16 exactness leaves power-of-two scales
    # room down to 2^-14 whatever the training gave (the growth is what these tests are for).
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.round(parameter * 1024) / 1024)
    return model.eval()


def exported(model: nn.Module, dtype: torch.dtype, path: Path) -> Path:
    half = ResidualCNN()
    half.load_state_dict(model.state_dict())
    half = half.to(dtype).eval()
    torch.export.save(torch.export.export(half, (training_digits()[0][:4].to(dtype),)), path)
    return path


def program(path: Path) -> nn.Module:
    return torch.export.load(path).module()  # type: ignore[no-any-return]


def first_overflow(module: nn.Module, images: torch.Tensor) -> float | None:
    """The smallest power of two that makes `module`'s outputs on `images` not finite."""
    with torch.no_grad():
        for k in range(1, 17):
            if not torch.isfinite(module((images.float() * 2.0**k).half())).all():
                return 2.0**k
    return None


def test_growth_is_measured_and_stated(trained_cnn: ResidualCNN, tmp_path: Path) -> None:
    path = exported(trained_cnn, torch.float16, tmp_path / "cnn.pt2")
    output = tmp_path / "out.pt2"
    report = rebalance_checkpoint(path, output)
    assert report.written
    assert report.verification.level == "real_network"
    run = next(check for check in report.verification.chains if check.method == "run")
    example = training_digits()[0][:4]
    before, after = program(path), program(output)
    grown, original = first_overflow(after, example), first_overflow(before, example)
    assert grown is not None
    assert original is not None
    assert grown < original  # the rewrite overflows at smaller inputs
    assert f"non-finite outputs from ×{grown:g} rewritten, ×{original:g} original" in run.detail
    (overflow,) = [c for c in report.verification.caveats if "overflows above 65504" in c]
    assert "overflows float16 at inputs about" in overflow
    assert "--hold-headroom" in overflow
    # held-out digits (in batches of the exported 4), scaled as far: finite before, not after
    with torch.no_grad():
        batches = (digits()[0][-64:] * grown).half().split(4)
        assert all(torch.isfinite(before(batch)).all() for batch in batches)
        assert not all(torch.isfinite(after(batch)).all() for batch in batches)


def test_hold_headroom_grows_no_activation(trained_cnn: ResidualCNN, tmp_path: Path) -> None:
    path = exported(trained_cnn, torch.float16, tmp_path / "cnn.pt2")
    output = tmp_path / "out.pt2"
    report = rebalance_checkpoint(path, output, hold_headroom=True, write_unchanged=True)
    assert report.written
    assert report.group is not None
    assert all(
        float(scale.max()) <= 1.0
        for scale in (report.group.channel or report.group.layer).scales.values()
    )
    assert not [c for c in report.verification.caveats if "overflows above" in c]
    before, after = program(path), program(output)
    for images in digits()[0][-64:].split(4):  # never earlier; later where scales shrank
        rewritten, original = first_overflow(after, images), first_overflow(before, images)
        assert rewritten is None or (original is not None and rewritten >= original)


def test_bfloat16_has_float32_range(trained_cnn: ResidualCNN, tmp_path: Path) -> None:
    path = exported(trained_cnn, torch.bfloat16, tmp_path / "cnn.pt2")
    report = rebalance_checkpoint(path, tmp_path / "out.pt2")
    assert report.written
    assert not [c for c in report.verification.caveats if "overflow" in c]


def test_hold_headroom_needs_power_of_two_scales(tmp_path: Path) -> None:
    model = ResidualCNN().eval()
    path = tmp_path / "cnn32.pt2"
    torch.export.save(torch.export.export(model, (training_digits()[0][:4],)), path)
    with pytest.raises(UsageError, match="--hold-headroom applies to power-of-two scales"):
        rebalance_checkpoint(path, tmp_path / "out.pt2", hold_headroom=True)
