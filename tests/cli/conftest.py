"""CLI test fixtures: a runner with a fixed width, and golden-file comparison."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from weissi_cli.cli.app import app

GOLDEN = Path(__file__).resolve().parent / "golden"
WIDTH = "100"


@pytest.fixture
def run() -> Callable[..., Result]:
    runner = CliRunner(
        env={"COLUMNS": WIDTH, "NO_COLOR": "1", "TERM": "dumb", "WEISSI_DEBUG": None}
    )

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args))

    return invoke


@pytest.fixture
def workdir(tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding copies of the samples, made the current directory."""
    for path in samples.iterdir():
        if path.suffix in (".safetensors", ".pt"):
            shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def without_measurements(text: str) -> str:
    """A report with its measured rounding errors masked and its lines joined: the errors
    depend on the CPU's floating-point paths, and their width moves where lines wrap. The
    size of an exported program is masked too: its nodes record the source paths of the
    model's code, which differ between checkouts."""
    text = " ".join(text.split())
    text = re.sub(r"(torch\.export · .*? parameters · )[0-9.]+ [KMG]?i?B", r"\1N", text)
    text = re.sub(r"worst [0-9.e+-]+ of", "worst N of", text)
    return re.sub(r"at most [0-9.e+-]+ \([0-9.e+-]+ of", "at most N (N of", text)


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/cli/golden/<name>; WEISSI_UPDATE_GOLDEN=1 rewrites the file.

    Byte for byte, except where only measured rounding errors differ (another CPU)."""
    path = GOLDEN / name
    if os.environ.get("WEISSI_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    golden = path.read_text()
    if text != golden:
        assert without_measurements(text) == without_measurements(golden), text
