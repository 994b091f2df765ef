"""The commands on an exported program (.pt2): graph, inspect and rebalance through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import Result

from tests.exported_models import export, gelu_mlp, resnet


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("programs")
    return {
        "resnet": export(*resnet(), folder / "resnet.pt2"),
        "gelu": export(*gelu_mlp(), folder / "gelu.pt2"),
    }


def test_graph_lists_symmetries_and_stops(
    run: Callable[..., Result], programs: dict[str, Path]
) -> None:
    result = run("graph", str(programs["gelu"]), "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["origin"] == "graph"
    assert payload["symmetries"] == []
    assert any("gelu" in stop["reason"] for stop in payload["stops"])
    tree = run("graph", str(programs["gelu"]))
    assert "stopped" in tree.stdout
    assert "gelu" in tree.stdout


def test_inspect_shows_the_symmetry_table(
    run: Callable[..., Result], programs: dict[str, Path]
) -> None:
    result = run("inspect", str(programs["resnet"]), "--granularity", "channel")
    assert result.exit_code == 0
    assert "Scale symmetries" in result.stdout
    assert "channel-wise optimum" in result.stdout
    assert "unbounded" in result.stdout
    assert "pass --include-bias" in result.stderr


def test_rebalance_writes_a_program_that_runs_the_same(
    run: Callable[..., Result], programs: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "balanced.pt2"
    result = run(
        "rebalance", str(programs["resnet"]), "-o", str(output), "--include-bias", "--json"
    )
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["output"]["format"] == "torch.export"
    assert payload["verification"]["passed"] is True
    assert "run" in payload["verification"]["method"]
    assert payload["symmetries"]["l2_after"] < payload["symmetries"]["l2_penalty"]
    original, balanced = torch.export.load(programs["resnet"]), torch.export.load(output)
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))  # static batch
    with torch.no_grad():
        expected = original.module()(inputs)
        actual = balanced.module()(inputs)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_rebalance_to_safetensors(
    run: Callable[..., Result], programs: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "balanced.safetensors"
    result = run("rebalance", str(programs["resnet"]), "-o", str(output), "--format", "safetensors")
    assert result.exit_code == 0  # without biases in the penalty nothing can move
    assert "nothing to do: every scale is 1" in result.stdout
    assert not output.exists()
    result = run(
        "rebalance",
        str(programs["resnet"]),
        "-o",
        str(output),
        "--format",
        "safetensors",
        "--write-unchanged",
    )
    assert result.exit_code == 0
    from safetensors.torch import load_file

    assert "fc.weight" in load_file(str(output))


def test_program_output_needs_the_pt2_suffix(
    run: Callable[..., Result], programs: dict[str, Path], tmp_path: Path
) -> None:
    result = run("rebalance", str(programs["resnet"]), "-o", str(tmp_path / "out.pt"))
    assert result.exit_code == 2
    assert "name the output *.pt2" in result.stderr
