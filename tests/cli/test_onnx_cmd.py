"""The commands on ONNX models through the CLI: inspect, graph (--emit-spec), check, diff,
rebalance, trend; a hostile model refused with exit 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import Result

from tests.onnx_models import export, randomize


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx_cli")
    return export(randomize(Mlp(), spread=True), (torch.randn(2, 6),), folder / "mlp.onnx")


def test_inspect_and_graph(run: Callable[..., Result], model: Path) -> None:
    result = run("inspect", str(model), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["source"]["format"] == "onnx"
    assert {t["name"] for t in payload["tensors"]} == {
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    }
    graph = run("graph", str(model), "--json")
    assert graph.exit_code == 0
    assert json.loads(graph.stdout)["origin"] == "graph"
    spec = run("graph", str(model), "--emit-spec")
    assert spec.exit_code == 0
    assert "net.0.weight" in spec.stdout


def test_check_and_diff(run: Callable[..., Result], model: Path, tmp_path: Path) -> None:
    assert run("check", str(model)).exit_code == 0
    failed = run("check", str(model), "--max-abs", "0.01")
    assert failed.exit_code == 1
    assert "net.0.weight" in failed.stdout
    balanced = tmp_path / "balanced.onnx"
    result = run("rebalance", str(model), "-o", str(balanced))
    assert result.exit_code == 0, result.output
    assert "exact for the real network" in result.stdout
    assert "onnxruntime" in result.stdout
    diff = run("diff", str(model), str(balanced), "--json")
    assert diff.exit_code == 0, diff.output
    assert json.loads(diff.stdout)["verdict"] == "equal up to scale shift"
    trend = run("trend", str(model), str(balanced), "--order", "given", "--json")
    assert trend.exit_code == 0, trend.output


def test_rebalance_names_the_output_onnx(
    run: Callable[..., Result], model: Path, tmp_path: Path
) -> None:
    result = run("rebalance", str(model), "-o", str(tmp_path / "out.safetensors"))
    assert result.exit_code == 2
    assert "*.onnx" in result.stderr


def test_a_hostile_model_is_refused_in_one_line(run: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(b"\x08\x07\x3a\xff\xff\xff\xff\x0f")
    result = run("inspect", str(path))
    assert result.exit_code == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {path}: not a valid ONNX model")
