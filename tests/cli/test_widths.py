"""Every command's tables at 80 and 120 columns: golden files, and no line wider than the
terminal (long notes wrap under their own indent, never back to the first column)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from tests.cli.conftest import assert_golden
from tests.helpers import mlp_state, write_safetensors
from weissi_cli.cli.app import app

WIDTHS = (80, 120)


def runner_at(width: int) -> Callable[..., Result]:
    runner = CliRunner(
        env={"COLUMNS": str(width), "NO_COLOR": "1", "TERM": "dumb", "WEISSI_DEBUG": None}
    )
    return lambda *args: runner.invoke(app, list(args))


@pytest.fixture
def folder(workdir: Path, samples: Path, llama_folders: dict[int, Path]) -> Path:
    shutil.copytree(samples / "tiny_llama_chars", workdir / "tiny_llama_chars")
    shutil.copytree(llama_folders[32], workdir / "llama32")
    state = mlp_state(sizes=(6, 8, 8, 3), dtype=torch.float32, seed=3)
    state["net.0.weight"][0, 0] = float("nan")
    state["net.2.weight"][3, :] = 0.0
    write_safetensors(workdir / "broken.safetensors", state)
    state = mlp_state(sizes=(6, 8, 8, 3), dtype=torch.float32, seed=4)
    state["net.4.weight"] = state["net.4.weight"] * 1e4
    write_safetensors(workdir / "tilted.safetensors", state)
    return workdir


CASES = {
    "inspect_mlp": ("inspect", "mlp_digits.safetensors"),
    "inspect_cnn_bias_channel": (
        "inspect", "cnn_digits.safetensors", "--include-bias", "--granularity", "channel",
    ),
    "inspect_tiny_llama": ("inspect", "tiny_llama_chars"),
    "inspect_llama32": ("inspect", "llama32"),
    "rebalance_bf16": (
        "rebalance", "mlp_digits_bf16.safetensors", "-o", "out.safetensors", "--assume-relu",
    ),
    "rebalance_tiny_llama": ("rebalance", "tiny_llama_chars", "-o", "out", "--verify-with", "none"),
    "graph_cnn": ("graph", "cnn_digits.safetensors"),
    "graph_tiny_llama": ("graph", "tiny_llama_chars"),
    "check_two": (
        "check", "broken.safetensors", "tilted.safetensors", "--max-imbalance", "100",
        "--max-norm", "1000",
    ),
    "check_one": ("check", "tilted.safetensors", "--max-imbalance", "100", "--fp16-headroom"),
    "diff_shifted": ("diff", "mlp_digits.safetensors", "mlp_digits_shifted.safetensors"),
}  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_tables_fit_the_terminal(folder: Path, case: str, width: int) -> None:
    result = runner_at(width)(*CASES[case])
    assert result.exit_code in (0, 1), result.output
    lines = result.stdout.splitlines()
    too_wide = [line for line in lines if len(line.rstrip()) > width]
    assert too_wide == []
    assert_golden(f"{case}_{width}.txt", result.stdout)


def test_a_long_note_wraps_under_its_indent(folder: Path) -> None:
    run = runner_at(80)
    lines = run("rebalance", "tiny_llama_chars", "-o", "out", "--verify-with", "none").stdout
    lines = lines.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  check: "))
    assert lines[start + 1].startswith("  ")
    assert not lines[start + 1].startswith("   ")
    assert all(line == line.rstrip() for line in lines[start : start + 3])


def test_a_transformer_of_32_blocks_is_a_screen_not_a_page(folder: Path) -> None:
    lines = runner_at(80)("inspect", "llama32").stdout.splitlines()
    assert len(lines) <= 40
    assert any(line.startswith("Blocks where rebalancing lowers L2 most (of 33)") for line in lines)
