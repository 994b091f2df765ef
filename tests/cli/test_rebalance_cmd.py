"""`weissi rebalance` through the CLI: consent, outputs, JSON, and every refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from tests.cli.conftest import assert_golden
from tests.helpers import make_rewrites_scale_wrongly


def test_pow2_report_matches_golden(run: Callable[..., Result], workdir: Path) -> None:
    result = run(
        "rebalance", "mlp_digits_bf16.safetensors", "-o", "out.safetensors", "--assume-relu"
    )
    assert result.exit_code == 0
    assert_golden("rebalance_mlp_digits_bf16.txt", result.stdout)
    assert (workdir / "out.safetensors").is_file()


def test_json_payload(run: Callable[..., Result], workdir: Path) -> None:
    result = run(
        "rebalance", "mlp_digits.safetensors", "-o", "out.safetensors", "--assume-relu", "--json"
    )
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["schema"] == "weissi.rebalance/1"
    assert payload["output"] == {
        "path": "out.safetensors",
        "format": "safetensors",
        "written": True,
    }
    assert payload["settings"] == {"scales": "auto", "granularity": "layer", "include_bias": False}
    chain = payload["chains"][0]
    assert set(chain) >= {
        "id",
        "gammas",
        "l2_before",
        "l2_after",
        "min_l2_penalty",
        "weissi_before",
        "weissi_after",
    }
    assert chain["l2_after"] == pytest.approx(chain["min_l2_penalty"], rel=1e-5)
    assert set(payload["verification"]) >= {
        "method",
        "passed",
        "max_abs_diff",
        "max_rel_diff",
        "probes",
    }
    assert payload["verification"]["passed"] is True


def test_heuristic_structure_needs_consent(run: Callable[..., Result], workdir: Path) -> None:
    result = run("rebalance", "mlp_digits.safetensors", "-o", "out.safetensors")
    assert result.exit_code == 2
    assert (
        "weissi rebalance mlp_digits.safetensors -o out.safetensors --assume-relu" in result.stderr
    )
    assert not (workdir / "out.safetensors").exists()


def test_spec_gives_consent(run: Callable[..., Result], workdir: Path) -> None:
    (workdir / "spec.toml").write_text(run("graph", "mlp_digits.pt", "--emit-spec").stdout)
    result = run("rebalance", "mlp_digits.pt", "-o", "out.pt", "--spec", "spec.toml")
    assert result.exit_code == 0
    assert (workdir / "out.pt").is_file()


def test_existing_output_is_not_overwritten(run: Callable[..., Result], workdir: Path) -> None:
    (workdir / "out.safetensors").write_bytes(b"keep me")
    result = run("rebalance", "mlp_digits.safetensors", "-o", "out.safetensors", "--assume-relu")
    assert result.exit_code == 2
    assert "out.safetensors: already exists; pass --force" in result.stderr
    assert (workdir / "out.safetensors").read_bytes() == b"keep me"
    forced = run(
        "rebalance", "mlp_digits.safetensors", "-o", "out.safetensors", "--assume-relu", "--force"
    )
    assert forced.exit_code == 0


def test_output_equal_to_input_is_refused(run: Callable[..., Result], workdir: Path) -> None:
    before = (workdir / "mlp_digits.safetensors").read_bytes()
    result = run(
        "rebalance",
        "mlp_digits.safetensors",
        "-o",
        "./mlp_digits.safetensors",
        "--assume-relu",
        "--force",
    )
    assert result.exit_code == 2
    assert "is the input checkpoint" in result.stderr
    assert (workdir / "mlp_digits.safetensors").read_bytes() == before


def test_output_format_must_match(run: Callable[..., Result], workdir: Path) -> None:
    result = run("rebalance", "mlp_digits.safetensors", "-o", "out.pt", "--assume-relu")
    assert result.exit_code == 2
    assert "name it *.safetensors" in result.stderr
    assert not (workdir / "out.pt").exists()


def test_unknown_scales_mode(run: Callable[..., Result], workdir: Path) -> None:
    result = run("rebalance", "mlp_digits.pt", "-o", "out.pt", "--assume-relu", "--scales", "fast")
    assert result.exit_code == 2
    assert "'fast' is not one of 'auto', 'real', 'pow2'" in result.stderr


def test_truncated_input_leaves_no_output(run: Callable[..., Result], workdir: Path) -> None:
    data = (workdir / "mlp_digits.pt").read_bytes()
    (workdir / "cut.pt").write_bytes(data[: len(data) // 2])
    result = run("rebalance", "cut.pt", "-o", "out.pt", "--assume-relu")
    assert result.exit_code == 2
    assert "cut.pt: not a readable torch checkpoint" in result.stderr
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(("out", ".out"))) == []


def test_unknown_spec_layer_leaves_no_output(run: Callable[..., Result], workdir: Path) -> None:
    (workdir / "spec.toml").write_text('version = 1\n[[chain]]\nlayers = ["net.0", "net.22"]\n')
    result = run("rebalance", "mlp_digits.pt", "-o", "out.pt", "--spec", "spec.toml")
    assert result.exit_code == 2
    assert "unknown layer 'net.22'" in result.stderr
    assert not (workdir / "out.pt").exists()


def test_failed_verification_exits_1(
    run: Callable[..., Result], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_rewrites_scale_wrongly(monkeypatch, 1.01)
    result = run(
        "rebalance", "mlp_digits.safetensors", "-o", "out.safetensors", "--assume-relu", "--json"
    )
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["verification"]["passed"] is False
    assert payload["output"]["written"] is False
    assert "verification failed: out.safetensors was not written" in result.stderr
    assert not (workdir / "out.safetensors").exists()
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []


def test_python_dash_m_entry_point(workdir: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "weissi_cli", "graph", "mlp_digits.pt", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["schema"] == "weissi.graph/1"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no such file or folder"),
        (
            lambda d: (d / "in.safetensors").write_bytes(
                b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "
            ),
            "corrupt safetensors header",
        ),
        (
            lambda d: (d / "in.safetensors").write_bytes(
                (d / "mlp_digits.safetensors").read_bytes()[:-9]
            ),
            "truncated safetensors file",
        ),
    ],
)
def test_bad_input_leaves_no_output_and_no_traceback(
    run: Callable[..., Result], workdir: Path, make: Callable[[Path], object], message: str
) -> None:
    make(workdir)
    result = run("rebalance", "in.safetensors", "-o", "out.safetensors", "--assume-relu")
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not [p for p in workdir.iterdir() if "out.safetensors" in p.name]


def test_malicious_pickle_is_refused_by_rebalance(
    run: Callable[..., Result], workdir: Path
) -> None:
    import torch

    marker = workdir / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"net.0.weight": torch.zeros(2, 2), "x": Payload()}, workdir / "evil.pt")
    result = run("rebalance", "evil.pt", "-o", "out.pt", "--assume-relu")
    assert result.exit_code == 2
    assert "refused to load" in result.stderr
    assert not marker.exists()
    assert not (workdir / "out.pt").exists()


def test_rebalancing_a_rebalanced_file_changes_nothing_more(
    run: Callable[..., Result], workdir: Path
) -> None:
    first = run("rebalance", "mlp_digits.pt", "-o", "once.pt", "--assume-relu", "--json")
    second = run("rebalance", "once.pt", "-o", "twice.pt", "--assume-relu", "--json")
    assert first.exit_code == second.exit_code == 0
    gammas = json.loads(second.stdout)["chains"][0]["gammas"]
    assert gammas == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)


def test_consent_command_keeps_the_json_flag(run: Callable[..., Result], workdir: Path) -> None:
    result = run("rebalance", "mlp_digits.pt", "-o", "out.pt", "--json", "--scales", "pow2")
    assert result.exit_code == 2
    assert (
        "weissi rebalance mlp_digits.pt -o out.pt --assume-relu --scales pow2 --json"
        in result.stderr
    )
    assert result.stdout == ""


def test_channel_granularity_reports_its_solution(
    run: Callable[..., Result], workdir: Path
) -> None:
    result = run(
        "rebalance",
        "mlp_digits.pt",
        "-o",
        "out.pt",
        "--assume-relu",
        "--granularity",
        "channel",
        "--json",
    )
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["settings"]["granularity"] == "channel"
    chain = payload["chains"][0]
    assert chain["channel"]["converged"] is True
    assert chain["l2_after"] <= chain["min_l2_penalty"] <= chain["l2_before"]
    assert chain["channel"]["path_norm_after"] == pytest.approx(
        chain["channel"]["path_norm_before"], rel=1e-6
    )


def test_unknown_granularity_is_refused(run: Callable[..., Result], workdir: Path) -> None:
    result = run(
        "rebalance", "mlp_digits.pt", "-o", "out.pt", "--assume-relu", "--granularity", "neuron"
    )
    assert result.exit_code == 2
    assert "'neuron' is not one of 'layer', 'channel'" in result.stderr
    assert not (workdir / "out.pt").exists()


def test_all_chains_degenerate_is_an_error_and_writes_nothing(
    run: Callable[..., Result], workdir: Path
) -> None:
    import torch

    state = torch.load(workdir / "mlp_digits.pt", weights_only=True)
    state["net.2.weight"][0, 0] = float("nan")
    torch.save(state, workdir / "nan.pt")
    result = run("rebalance", "nan.pt", "-o", "out.pt", "--assume-relu")
    assert result.exit_code == 2
    assert "nothing can be rebalanced" in result.stderr
    assert "net.2.weight holds 1 non-finite value(s)" in result.stderr
    assert not (workdir / "out.pt").exists()


def test_a_fifo_is_refused_without_blocking(run: Callable[..., Result], workdir: Path) -> None:
    import os

    os.mkfifo(workdir / "pipe.safetensors")
    result = run("inspect", "pipe.safetensors")
    assert result.exit_code == 2
    assert "not a regular file" in result.stderr


def test_hold_activations_needs_power_of_two_scales_on_chains(
    run: Callable[..., Result], workdir: Path
) -> None:
    real = run(
        "rebalance",
        "mlp_digits.safetensors",
        "-o",
        "out.safetensors",
        "--assume-relu",
        "--hold-activations",
    )
    assert real.exit_code == 2
    assert "--hold-activations applies to power-of-two scales" in real.stderr
    held = run(
        "rebalance",
        "mlp_digits.safetensors",
        "-o",
        "out.safetensors",
        "--assume-relu",
        "--hold-activations",
        "--scales",
        "pow2",
        "--json",
    )
    assert held.exit_code == 0
    factors = json.loads(held.stdout)["chains"][0]["bias_scales"]
    assert all(factor >= 1.0 for factor in factors[:-1])  # hidden outputs never scaled down


def test_hold_activations_is_refused_for_symmetries_that_are_not_chains(
    run: Callable[..., Result], workdir: Path, samples: Path
) -> None:
    import shutil

    shutil.copytree(samples / "tiny_llama_chars", workdir / "llama")
    result = run("rebalance", "llama", "-o", "out", "--hold-activations", "--scales", "pow2")
    assert result.exit_code == 2
    assert "symmetries are not chains" in result.stderr
    assert not (workdir / "out").exists()
