"""Training checkpoints (a torch pickle with the model, the optimizer and bookkeeping):
rescaled parameters stay parameters, and optimizer state is never left inconsistent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from typer.testing import Result

from weissi_cli.api import rebalance_checkpoint
from weissi_cli.errors import UsageError

DIGITS = load_digits()
IMAGES = torch.tensor(DIGITS.data / 16.0, dtype=torch.float32)
LABELS = torch.tensor(DIGITS.target)


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def trained() -> tuple[Classifier, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(IMAGES), LABELS).backward()
        optimizer.step()
    with torch.no_grad():
        model.net[4].weight.mul_(50.0)  # an imbalance worth rebalancing
        model.net[4].bias.mul_(50.0)
    return model, optimizer


def same_function(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Equal outputs up to float32 rounding of the rescaled products."""
    return torch.allclose(first, second, rtol=1e-5, atol=1e-5 * float(second.abs().max()))


def run_saved(model_state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The real network (its own class) with these weights, on the digits."""
    model = Classifier()
    model.load_state_dict(model_state)
    with torch.no_grad():
        return model(IMAGES)


@pytest.fixture
def training_checkpoint(tmp_path: Path) -> Path:
    model, optimizer = trained()
    path = tmp_path / "training.pt"
    torch.save(
        {
            "epoch": 30,
            "model": model.state_dict(keep_vars=True),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": {"last_epoch": 30},
        },
        path,
    )
    return path


def test_optimizer_state_is_refused_and_nothing_is_written(
    training_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / "balanced.pt"
    with pytest.raises(UsageError, match=r"'optimizer'.*optimizer state.*--drop-optimizer-state"):
        rebalance_checkpoint(training_checkpoint, output, assume_relu=True)
    assert not output.exists()


def test_dropping_the_optimizer_state_rebalances_the_model_and_keeps_the_rest(
    training_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / "balanced.pt"
    report = rebalance_checkpoint(
        training_checkpoint, output, assume_relu=True, drop_optimizer_state=True
    )
    # structure found
    assert [chain.layers for chain in report.chains] == [("net.0", "net.2", "net.4")]
    assert any("without the optimizer state in 'optimizer'" in w for w in report.warnings)
    before = torch.load(training_checkpoint, weights_only=True)
    after = torch.load(output, weights_only=True)
    assert list(after) == ["epoch", "model", "lr_scheduler"]
    assert after["epoch"] == 30
    assert after["lr_scheduler"] == {"last_epoch": 30}
    # the weights changed as planned, and stayed parameters
    for layer, gamma in zip(("net.0", "net.2", "net.4"), report.chains[0].gammas, strict=True):
        weight = after["model"][f"{layer}.weight"]
        assert type(weight) is torch.nn.Parameter
        assert weight.requires_grad
        assert torch.allclose(weight, before["model"][f"{layer}.weight"] * gamma, rtol=1e-6)
    assert report.chains[0].l2_after < report.chains[0].l2_before / 10
    # the real network computes the same function
    expected = run_saved(before["model"])
    assert same_function(run_saved(after["model"]), expected)


def test_a_parameter_state_dict_comes_back_as_parameters(tmp_path: Path) -> None:
    model, _ = trained()
    model.net[0].weight.requires_grad_(False)  # a frozen layer stays frozen
    source = tmp_path / "parameters.pt"
    torch.save(model.state_dict(keep_vars=True), source)
    output = tmp_path / "balanced.pt"
    report = rebalance_checkpoint(source, output, assume_relu=True)
    assert report.verification.passed
    after = torch.load(output, weights_only=True)
    before = torch.load(source, weights_only=True)
    assert all(type(value) is torch.nn.Parameter for value in after.values())
    assert [value.requires_grad for value in after.values()] == [
        value.requires_grad for value in before.values()
    ]
    assert not torch.equal(after["net.4.weight"], before["net.4.weight"])
    expected = run_saved(before)
    assert same_function(run_saved(after), expected)


def test_lightning_style_optimizer_states_are_found(tmp_path: Path) -> None:
    model, optimizer = trained()
    source = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "optimizer_states": [optimizer.state_dict()],
            "global_step": 30,
        },
        source,
    )
    with pytest.raises(UsageError, match="'optimizer_states'"):
        rebalance_checkpoint(source, tmp_path / "out.ckpt", assume_relu=True)


def test_the_weights_alone_as_safetensors_need_no_consent(
    training_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(
        training_checkpoint, output, assume_relu=True, output_format="safetensors"
    )
    assert report.verification.passed
    from safetensors.torch import load_file

    before = torch.load(training_checkpoint, weights_only=True)["model"]
    expected = run_saved(before)
    assert same_function(run_saved(load_file(str(output))), expected)


def test_the_cli_refuses_and_drops_on_the_flag(
    run: Callable[..., Result], training_checkpoint: Path, tmp_path: Path
) -> None:
    source = str(training_checkpoint)
    output = str(tmp_path / "balanced.pt")
    refused = run("rebalance", source, "-o", output, "--assume-relu")
    assert refused.exit_code == 2
    assert "--drop-optimizer-state" in refused.stderr
    dropped = run("rebalance", source, "-o", output, "--assume-relu", "--drop-optimizer-state")
    assert dropped.exit_code == 0, dropped.stderr
    assert "without the optimizer state in 'optimizer'" in dropped.stderr


@pytest.fixture
def run() -> Callable[..., Result]:
    from typer.testing import CliRunner

    from weissi_cli.cli.app import app

    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    return lambda *args: runner.invoke(app, list(args))
