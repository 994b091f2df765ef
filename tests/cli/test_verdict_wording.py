"""Each verdict as people read it: its mark, its claim, what is left to check (golden
files), and ✓ only where the real network ran."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import Result

from tests.cli.conftest import assert_golden, without_measurements
from tests.exported_models import export, relu_mlp
from tests.helpers import make_rewrites_scale_wrongly, mlp_state, write_safetensors


def verdict(stdout: str) -> list[str]:
    """The verdict line: the first line after the tables that starts with a mark."""
    return [line for line in stdout.splitlines() if line[:2] in ("✓ ", "◇ ", "○ ", "≈ ", "✗ ")]


def test_exact_for_the_real_network_program(run: Callable[..., Result], workdir: Path) -> None:
    export(*relu_mlp(), workdir / "relu_mlp.pt2")
    result = run("rebalance", "relu_mlp.pt2", "-o", "out.pt2")
    assert result.exit_code == 0, result.stderr
    assert_golden("rebalance_relu_mlp_pt2.txt", result.stdout)
    assert verdict(result.stdout) == ["✓ exact for the real network (run+structural)"]


def test_exact_for_the_real_network_transformers(
    run: Callable[..., Result], workdir: Path, samples: Path
) -> None:
    pytest.importorskip("transformers")
    shutil.copytree(samples / "tiny_llama_chars", workdir / "tiny_llama_chars")
    result = run("rebalance", "tiny_llama_chars", "-o", "out", "--verify-with", "transformers")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("✓"))
    assert_golden("rebalance_tiny_llama_verdict.txt", "\n".join(lines[start:]) + "\n")


def test_exact_for_the_declared_structure(run: Callable[..., Result], workdir: Path) -> None:
    (workdir / "spec.toml").write_text(
        'version = 2\n[[chain]]\nlayers = ["net.0", "net.2", "net.4"]\n'
    )
    result = run(
        "rebalance", "mlp_digits.safetensors", "-o", "out.safetensors", "--spec", "spec.toml"
    )
    assert result.exit_code == 0, result.stderr
    assert_golden("rebalance_mlp_digits_spec.txt", result.stdout)
    assert verdict(result.stdout)[0].startswith("◇ exact for the declared structure")
    assert "check: the structure is what spec.toml declares" in result.stdout


def test_a_conv_chain_is_exact_for_the_declared_structure_without_probes(
    run: Callable[..., Result], workdir: Path
) -> None:
    """Its values are checked, not its function: with the chain's symmetries, that shows
    the guessed chain's function unchanged."""
    result = run("rebalance", "cnn_digits.pt", "-o", "out.pt", "--assume-relu")
    assert result.exit_code == 0, result.stderr
    assert_golden("rebalance_cnn_digits.txt", result.stdout)
    assert verdict(result.stdout)[0].endswith("the real network was not run (structural)")


def test_values_only(run: Callable[..., Result], workdir: Path, samples: Path) -> None:
    """A registered architecture's symmetries, values checked, the model not run (on
    request: by default transformers runs it)."""
    shutil.copytree(samples / "tiny_llama_chars", workdir / "tiny_llama_chars")
    result = run("rebalance", "tiny_llama_chars", "-o", "out", "--verify-with", "none")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("○"))
    assert_golden("rebalance_tiny_llama_values_only.txt", "\n".join(lines[start:]) + "\n")
    assert verdict(result.stdout) == ["○ values only; the function was not run (structural)"]


def test_approximate(run: Callable[..., Result], workdir: Path) -> None:
    pytest.importorskip("transformers")
    from tests.hf_models import build, save

    save(build("gpt2"), workdir / "gpt2")
    result = run("rebalance", "gpt2", "-o", "out", "--allow-approximate")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("≈"))
    assert_golden("rebalance_gpt2_approximate_verdict.txt", "\n".join(lines[start:]) + "\n")
    assert "✓" not in result.stdout


def test_float16_power_of_two_states_the_subnormal_caveat(
    run: Callable[..., Result], workdir: Path
) -> None:
    state = mlp_state(sizes=(16, 24, 24, 4), seed=5, dtype=torch.float64)
    state["net.0.weight"] *= 2.0**-10
    state["net.0.bias"] *= 2.0**-10
    state["net.2.weight"] *= 2.0**10
    write_safetensors(
        workdir / "half.safetensors", OrderedDict((n, t.half()) for n, t in state.items())
    )
    result = run("rebalance", "half.safetensors", "-o", "out.safetensors", "--assume-relu")
    assert result.exit_code == 0, result.stderr
    assert_golden("rebalance_float16_caveat.txt", result.stdout)
    assert "bit-identical" not in result.stdout


def test_verification_failed(
    run: Callable[..., Result], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_rewrites_scale_wrongly(monkeypatch, 1.01)
    result = run("rebalance", "mlp_digits.safetensors", "-o", "out.safetensors", "--assume-relu")
    assert result.exit_code == 1
    assert_golden("rebalance_failed.txt", result.stdout)
    assert not (workdir / "out.safetensors").exists()


def test_nothing_to_do_writes_nothing_unless_asked(
    run: Callable[..., Result], workdir: Path
) -> None:
    first = run(
        "rebalance", "mlp_digits_bf16.safetensors", "-o", "once.safetensors", "--assume-relu"
    )
    assert first.exit_code == 0
    again = run("rebalance", "once.safetensors", "-o", "twice.safetensors", "--assume-relu")
    assert again.exit_code == 0
    assert_golden("rebalance_nothing_to_do.txt", again.stdout)
    assert not (workdir / "twice.safetensors").exists()
    payload = json.loads(
        run(
            "rebalance", "once.safetensors", "-o", "twice.safetensors", "--assume-relu", "--json"
        ).stdout
    )
    assert payload["nothing_to_do"] is True
    assert payload["output"]["written"] is False
    forced = run(
        "rebalance",
        "once.safetensors",
        "-o",
        "twice.safetensors",
        "--assume-relu",
        "--write-unchanged",
    )
    assert forced.exit_code == 0
    assert (workdir / "twice.safetensors").read_bytes() != b""


def test_a_refusal_names_the_tensors_and_the_way_forward(
    run: Callable[..., Result], workdir: Path
) -> None:
    state = OrderedDict()
    state["trunk.0.weight"] = torch.randn(8, 6)
    state["trunk.1.weight"] = torch.randn(5, 8)
    state["trunk.2.weight"] = torch.randn(3, 5)
    state["trunk.3.weight"] = torch.randn(4, 5)
    state["gate.weight"] = torch.rand(5)
    write_safetensors(workdir / "heads.safetensors", state)
    result = run("rebalance", "heads.safetensors", "-o", "out.safetensors", "--assume-relu")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_golden("rebalance_refused.txt", result.stderr)
    assert not [p for p in workdir.iterdir() if "out.safetensors" in p.name]


def test_diff_says_what_its_scale_shift_stands_on(
    run: Callable[..., Result], workdir: Path
) -> None:
    assert (
        run("rebalance", "mlp_digits.safetensors", "-o", "b.safetensors", "--assume-relu").exit_code
        == 0
    )
    result = run("diff", "mlp_digits.safetensors", "b.safetensors")
    assert result.exit_code == 0
    assert_golden("diff_assumed_structure.txt", result.stdout)


def test_measured_errors_are_the_only_leeway() -> None:
    golden = "moved by at most 9.54e-07 (1.5e-07 of their\nlargest) · worst 0.2 of the rounding"
    other_cpu = "moved by at most 1.2e-06 (1e-07 of their largest) · worst 0.21 of the\nrounding"
    assert without_measurements(other_cpu) == without_measurements(golden)
    assert without_measurements(golden.replace("largest", "smallest")) != without_measurements(
        golden
    )


def test_an_exported_programs_size_is_masked_and_nothing_else_of_its_line() -> None:
    here = "relu_mlp.pt2\ntorch.export · 6 tensors · 119 parameters · 15.1 KiB\n"
    elsewhere = "relu_mlp.pt2\ntorch.export · 6 tensors · 119 parameters · 15.3 KiB\n"
    assert without_measurements(here) == without_measurements(elsewhere)
    assert without_measurements(here) != without_measurements(here.replace("119", "120"))
    safetensors = here.replace("torch.export", "safetensors")
    assert without_measurements(safetensors) != without_measurements(
        safetensors.replace("15.1", "15.3")
    )
