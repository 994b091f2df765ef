"""`weissi inspect` through the CLI: output, JSON, and error paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from tests.cli.conftest import assert_golden


def test_report_matches_golden(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", "mlp_digits.safetensors")
    assert result.exit_code == 0
    assert_golden("inspect_mlp_digits.txt", result.stdout)
    assert "warning: structure inferred from tensor names and shapes" in result.stderr


def test_cnn_report_matches_golden(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", "cnn_digits.pt", "--include-bias")
    assert result.exit_code == 0
    assert_golden("inspect_cnn_digits_bias.txt", result.stdout)


def test_json_goes_to_stdout_alone(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", "mlp_digits.pt", "--json", "--lambda1", "0.5")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["schema"] == "weissi.inspect/1"
    assert payload["settings"]["lambda1"] == 0.5
    assert payload["chains"][0]["l2_slack"] > 0
    assert "warning:" not in result.stdout
    assert "warning: structure inferred" in result.stderr


def test_bars_grow_with_the_norm(run: Callable[..., Result], workdir: Path) -> None:
    lines = run("inspect", "mlp_digits_shifted.safetensors").stdout.splitlines()
    bars = {line.split()[0]: line.count("█") for line in lines if line.strip().startswith("net.")}
    assert bars["net.0"] > bars["net.4"] >= bars["net.2"] >= 0
    assert bars["net.0"] == 12


def test_missing_file(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", "absent.safetensors")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "error: absent.safetensors: no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_file(run: Callable[..., Result], workdir: Path) -> None:
    data = (workdir / "mlp_digits.safetensors").read_bytes()
    (workdir / "cut.safetensors").write_bytes(data[: len(data) - 100])
    result = run("inspect", "cut.safetensors")
    assert result.exit_code == 2
    assert "cut.safetensors: truncated safetensors file" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_header(run: Callable[..., Result], workdir: Path) -> None:
    data = bytearray((workdir / "mlp_digits.safetensors").read_bytes())
    data[8:20] = b"not json!!!!"
    (workdir / "bad.safetensors").write_bytes(bytes(data))
    result = run("inspect", "bad.safetensors")
    assert result.exit_code == 2
    assert "bad.safetensors: corrupt safetensors header (not valid JSON" in result.stderr


def test_malicious_pickle_is_refused_and_not_run(run: Callable[..., Result], workdir: Path) -> None:
    import torch

    marker = workdir / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"net.0.weight": torch.zeros(2, 2), "evil": Payload()}, workdir / "evil.pt")
    result = run("inspect", "evil.pt")
    assert result.exit_code == 2
    assert "evil.pt: refused to load" in result.stderr
    assert "nothing in it was run" in result.stderr
    assert "posix.system" in result.stderr
    assert not marker.exists()


def test_unknown_format(run: Callable[..., Result], workdir: Path) -> None:
    (workdir / "model.gguf").write_bytes(b"\x00")
    result = run("inspect", "model.gguf")
    assert result.exit_code == 2
    assert "unknown checkpoint format" in result.stderr


def test_debug_variable_shows_the_traceback_and_keeps_the_exit_code(workdir: Path) -> None:
    from typer.testing import CliRunner

    from weissi_cli.cli.app import app

    result = CliRunner(env={"WEISSI_DEBUG": "1"}).invoke(app, ["inspect", "absent.pt"])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "error: absent.pt: no such file or folder" in result.stderr


def test_an_unexpected_exception_is_reported_as_a_bug(
    run: Callable[..., Result], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weissi_cli.api.inspect as api

    def explode(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(api, "statistics_pass", explode)
    result = run("inspect", "mlp_digits.pt")
    assert result.exit_code == 70
    assert "Traceback" in result.stderr
    assert "internal error: ZeroDivisionError: boom" in result.stderr
