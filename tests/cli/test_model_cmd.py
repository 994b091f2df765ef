"""`--model` and `--example-shape` on the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file
from typer.testing import Result

from tests import trained_models as trained

TRAINED = Path(trained.__file__)


def test_rebalance_with_model_code(run: Callable[..., Result], tmp_path: Path) -> None:
    model = trained.two_head_prelu()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    output = tmp_path / "out.safetensors"
    args = ("--model", f"{TRAINED}:TwoHeadPReLU", "--example-shape", "1x1x8x8")
    result = run("rebalance", str(path), "-o", str(output), *args, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["verification"]["level"] == "real_network"
    assert output.exists()
    graph = run("graph", str(path), *args, "--json")
    assert graph.exit_code == 0, graph.output


def test_example_shape_without_model_is_a_usage_error(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    result = run("graph", "x.safetensors", "--example-shape", "1x2")
    assert result.exit_code == 2
    assert "--model" in result.output


def test_a_malformed_shape_is_a_usage_error(run: Callable[..., Result]) -> None:
    result = run("graph", "x.safetensors", "--model", "a.py:B", "--example-shape", "1x?")
    assert result.exit_code == 2
    assert "like 1x3x48x48" in result.output


def test_a_tensor_the_traced_forward_does_not_read_is_refused_with_exit_2(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    import torch

    from tests import mode_models

    path = tmp_path / "aux.pt"
    torch.save(mode_models.trained("AuxNet").state_dict(), path)
    output = tmp_path / "out.pt"
    args = ("--model", f"{mode_models.__file__}:AuxNet", "--example-shape", "4x64")
    refused = run("rebalance", str(path), "-o", str(output), *args)
    assert refused.exit_code == 2, refused.output
    assert "does not read aux.weight, aux.bias" in refused.output
    assert "--allow-unread" in refused.output
    failed = run("rebalance", str(path), "-o", str(output), *args, "--allow-unread")
    assert failed.exit_code == 1, failed.output
    assert "train mode" in failed.output
    assert not output.exists()
    graph = run("graph", str(path), *args)
    assert (
        "aux.weight: not read by the traced graph (eval mode, input 4x64 float32)" in graph.output
    )
