"""`weissi diff` in a pipeline: export, rebalance, compare; then perturb and compare again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import Result


def verdict(result: Result) -> dict[str, object]:
    return json.loads(result.stdout)


def test_export_then_rebalance_is_equal_up_to_scale_shift(
    run: Callable[..., Result], workdir: Path
) -> None:
    # "export": the pickle's tensors written as safetensors are the same network
    exported = run("diff", "mlp_digits.pt", "mlp_digits.safetensors", "--json")
    assert exported.exit_code == 0
    assert verdict(exported)["verdict"] == "identical"
    assert (
        run(
            "rebalance", "mlp_digits.safetensors", "-o", "balanced.safetensors", "--assume-relu"
        ).exit_code
        == 0
    )
    result = run("diff", "mlp_digits.pt", "balanced.safetensors", "--json")
    assert result.exit_code == 0
    payload = verdict(result)
    assert payload["verdict"] == "equal up to scale shift"
    (shift,) = payload["shifts"]
    factors = shift["factors"]
    assert factors["net.0.weight"] * factors["net.2.weight"] * factors[
        "net.4.weight"
    ] == pytest.approx(1.0, rel=1e-6)
    assert factors["net.2.bias"] == pytest.approx(
        factors["net.0.weight"] * factors["net.2.weight"], rel=1e-6
    )


def test_a_perturbed_weight_is_different_and_named(
    run: Callable[..., Result], workdir: Path
) -> None:
    run("rebalance", "mlp_digits.safetensors", "-o", "balanced.safetensors", "--assume-relu")
    state = load_file(str(workdir / "balanced.safetensors"))
    state["net.2.weight"][7, 3] += 0.25
    save_file(state, str(workdir / "perturbed.safetensors"))
    result = run("diff", "mlp_digits.safetensors", "perturbed.safetensors", "--json")
    assert result.exit_code == 1
    payload = verdict(result)
    assert payload["verdict"] == "different"
    assert payload["most_different"][0] == "net.2.weight"
    text = run("diff", "mlp_digits.safetensors", "perturbed.safetensors")
    assert "verdict: different" in text.stdout
    assert "net.2.weight" in text.stdout


def test_the_known_shifted_copy_shows_its_shifts(run: Callable[..., Result], workdir: Path) -> None:
    result = run("diff", "mlp_digits.safetensors", "mlp_digits_shifted.safetensors", "--json")
    factors = verdict(result)["shifts"][0]["factors"]
    assert factors == pytest.approx(
        {
            "net.0.weight": 8.0,
            "net.0.bias": 8.0,
            "net.2.weight": 0.25,
            "net.2.bias": 2.0,
            "net.4.weight": 0.5,
            "net.4.bias": 1.0,
        },
        rel=1e-6,
    )


def test_channel_granularity_sees_a_per_channel_shift(
    run: Callable[..., Result], workdir: Path
) -> None:
    assert (
        run(
            "rebalance",
            "mlp_digits.pt",
            "-o",
            "channel.pt",
            "--assume-relu",
            "--granularity",
            "channel",
        ).exit_code
        == 0
    )
    layer = verdict(run("diff", "mlp_digits.pt", "channel.pt", "--json"))
    channel = verdict(
        run("diff", "mlp_digits.pt", "channel.pt", "--granularity", "channel", "--json")
    )
    assert layer["verdict"] == "different"  # a per-channel shift is not a layer-wise one
    assert channel["verdict"] == "equal up to scale shift"


def test_different_layouts_are_different(run: Callable[..., Result], workdir: Path) -> None:
    state = {
        k: v
        for k, v in torch.load(workdir / "mlp_digits.pt", weights_only=True).items()
        if k != "net.4.bias"
    }
    torch.save(state, workdir / "smaller.pt")
    result = run("diff", "mlp_digits.pt", "smaller.pt", "--json")
    assert result.exit_code == 1
    assert verdict(result)["reasons"] == ["only in A: net.4.bias"]


def test_bfloat16_copy_is_equal_up_to_rounding(run: Callable[..., Result], workdir: Path) -> None:
    result = run("diff", "mlp_digits.safetensors", "mlp_digits_bf16.safetensors", "--json")
    assert result.exit_code == 0
    assert verdict(result)["verdict"] == "equal up to rounding"


def test_missing_file_is_bad_input(run: Callable[..., Result], workdir: Path) -> None:
    result = run("diff", "mlp_digits.pt", "absent.pt")
    assert result.exit_code == 2
    assert "absent.pt: no such file or folder" in result.stderr
