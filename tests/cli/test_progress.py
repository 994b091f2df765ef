"""Progress: every long step reports itself (reading, tracing, solving, comparing, writing,
verifying), nested as it runs; the CLI draws it on a terminal's stderr, with --json too,
and -q silences it with the warnings."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from weissi_cli import api, progress

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_checkpoints"


class Recorder:
    """Each step as the nested labels above it, and the bytes reported per step."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.steps: list[tuple[str, ...]] = []
        self.bytes: dict[tuple[str, ...], int] = {}

    def start(self, label: str, total_bytes: int) -> None:
        self.stack.append(label)
        self.steps.append(tuple(self.stack))
        self.bytes[tuple(self.stack)] = 0

    def advance(self, nbytes: int) -> None:
        self.bytes[tuple(self.stack)] += nbytes

    def stop(self) -> None:
        self.stack.pop()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    found = Recorder()
    progress.listen(found)
    try:
        yield found
    finally:
        progress.listen(None)
    assert found.stack == []  # every step that started stopped


def test_check_reports_each_checkpoint(recorder: Recorder) -> None:
    api.check_checkpoints([SAMPLES / "mlp_digits.safetensors", SAMPLES / "cnn_digits.safetensors"])
    assert ("checking mlp_digits.safetensors",) in recorder.steps
    assert ("checking cnn_digits.safetensors",) in recorder.steps


def test_trend_reports_each_checkpoint_and_its_reading_pass(recorder: Recorder) -> None:
    api.trend_checkpoints(
        [SAMPLES / "mlp_digits.safetensors", SAMPLES / "mlp_digits_shifted.safetensors"],
        order="given",
    )
    reading = ("reading mlp_digits.safetensors", "reading")
    assert reading in recorder.steps
    assert recorder.bytes[reading] > 0


def test_channel_sweeps_and_comparing_and_writing(recorder: Recorder, tmp_path: Path) -> None:
    mlp = SAMPLES / "mlp_digits.safetensors"
    api.inspect_checkpoint(mlp, granularity="channel")
    assert ("solving for the optimal scales",) in recorder.steps
    api.diff_checkpoints(mlp, SAMPLES / "mlp_digits_shifted.safetensors")
    assert recorder.bytes[("comparing",)] == 2 * sum(
        info.nbytes for info in _tensors(mlp) if info.is_supported_float
    )
    api.rebalance_checkpoint(mlp, tmp_path / "out.safetensors", assume_relu=True)
    assert ("writing",) in recorder.steps


def _tensors(path: Path) -> list[object]:
    from weissi_cli.io import open_checkpoint

    with open_checkpoint(path) as checkpoint:
        return list(checkpoint.tensors)


@pytest.mark.slow
def test_tracing_and_verifying_with_transformers(recorder: Recorder, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = traced_folder(tmp_path)
    api.inspect_checkpoint(folder)
    assert ("tracing the architecture with transformers",) in recorder.steps
    shutil.copytree(SAMPLES / "tiny_llama_chars", tmp_path / "llama")
    api.rebalance_checkpoint(tmp_path / "llama", tmp_path / "out", verify_with="transformers")
    assert ("verifying: running both models with transformers",) in recorder.steps


def traced_folder(tmp_path: Path) -> Path:
    """A Phi-3 folder: an architecture weissi traces with transformers (none registered)."""
    import warnings

    from tests.hf_families import build

    folder = tmp_path / "phi3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build("phi3", dtype="float32").save_pretrained(folder)
    return folder


def run_on_a_terminal(*args: str) -> tuple[str, str, int]:
    """`weissi ARGS` with stderr on a pseudo-terminal (as a person's shell gives it) and
    stdout on a pipe (as `| jq` does): (stdout, what the terminal showed, exit code)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "TERM": "xterm"}
    # progress appears from the first moment (a step that took a second on this machine
    # may take less elsewhere)
    start = (
        "import sys; import weissi_cli.cli.console as console; console.BAR_DELAY_SECONDS = 0; "
        "from weissi_cli.cli.app import main; sys.argv[0] = 'weissi'; main()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", start, *args],
        stdout=subprocess.PIPE, stderr=follower, env=env, cwd=ROOT,
    )  # fmt: skip
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert process.stdout is not None
    with process.stdout:
        stdout = process.stdout.read().decode()
    code = process.wait(timeout=60)
    os.close(leader)
    return stdout, shown.decode(errors="replace"), code


@pytest.mark.slow
def test_a_terminal_shows_progress_while_stdout_carries_json(tmp_path: Path) -> None:
    """Tracing a transformer takes more than a second: the terminal shows the step, and
    stdout stays one JSON document; -q shows nothing."""
    pytest.importorskip("transformers")
    import json

    folder = traced_folder(tmp_path)
    stdout, shown, code = run_on_a_terminal("inspect", str(folder), "--json")
    assert code == 0
    assert json.loads(stdout)["schema"] == "weissi.inspect/1"
    assert "tracing the architecture with transformers" in shown
    quiet_stdout, quiet_shown, _ = run_on_a_terminal("inspect", str(folder), "--json", "-q")
    assert json.loads(quiet_stdout)["schema"] == "weissi.inspect/1"
    assert quiet_shown == ""


def test_quiet_silences_warnings_but_not_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from weissi_cli.cli.app import app

    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    mlp = str(SAMPLES / "mlp_digits.safetensors")
    loud = runner.invoke(app, ["inspect", mlp])
    assert "warning: structure inferred" in loud.stderr
    for command in (["inspect", mlp], ["graph", mlp], ["check", mlp], ["trend", mlp]):
        quiet = runner.invoke(app, [*command, "-q"])
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stderr == ""
        assert quiet.stdout
    missing = runner.invoke(app, ["inspect", str(tmp_path / "absent.safetensors"), "-q"])
    assert missing.exit_code == 2
    assert "error:" in missing.stderr
