"""Faults: SIGKILL mid-write, a full disk, and inputs that must never change."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import mlp_state, sha256, write_safetensors
from weissi_cli.cli.app import app
from weissi_cli.io import open_checkpoint

KILLS = int(os.environ.get("WEISSI_KILLS", "6"))  # the long mode runs 50 or more


def weissi(*args: str) -> list[str]:
    return [sys.executable, "-m", "weissi_cli", *args]


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~100 MB: long enough to write that kills land inside the write."""
    folder = tmp_path_factory.mktemp("large")
    state = mlp_state(sizes=(2048,) * 7, dtype=torch.float32, seed=0)
    for index, name in enumerate(n for n in state if n.endswith("weight")):
        state[name] = state[name] * 2.0 ** (index % 4)
    return write_safetensors(folder / "large.safetensors", state)


def contents(path: Path) -> str:
    """A digest of every tensor's bytes (the header may differ in its metadata)."""
    digest = hashlib.sha256()
    with open_checkpoint(path) as checkpoint:
        for info in checkpoint.tensors:
            digest.update(info.name.encode())
            digest.update(np.ascontiguousarray(checkpoint.read_all(info.name)).tobytes())
    return digest.hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "weissi-tmp" in p.name)


@pytest.mark.slow
def test_sigkill_never_leaves_a_partial_destination(large: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.safetensors"
    started = time.perf_counter()
    subprocess.run(
        weissi("rebalance", str(large), "-o", str(reference), "--assume-relu"),
        check=True,
        capture_output=True,
    )
    duration = time.perf_counter() - started
    expected = contents(reference)
    rng = random.Random(0)
    output = tmp_path / "out.safetensors"
    outcomes = {"absent": 0, "complete": 0}
    for _ in range(KILLS):
        output.unlink(missing_ok=True)
        process = subprocess.Popen(
            weissi("rebalance", str(large), "-o", str(output), "--assume-relu"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, duration))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if output.exists():
            assert contents(output) == expected  # complete and valid
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
    assert sum(outcomes.values()) == KILLS
    print(f"\n{KILLS} SIGKILLs: {outcomes}")  # shown with -s; the closing note quotes it
    # A later successful run leaves no temporary behind, its own or the killed runs'.
    subprocess.run(
        weissi("rebalance", str(large), "-o", str(output), "--assume-relu", "--force"),
        check=True,
        capture_output=True,
    )
    assert contents(output) == expected
    assert leftovers(tmp_path) == []


def test_a_full_disk_is_a_clean_error_and_the_destination_is_untouched(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weissi_cli.rewrite as rewrite

    destination = tmp_path / "out.safetensors"
    destination.write_bytes(b"previous result")

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rewrite.os, "pwrite", full)
    result = CliRunner().invoke(
        app,
        [
            "rebalance",
            str(samples / "mlp_digits.safetensors"),
            "-o",
            str(destination),
            "--assume-relu",
            "--force",
        ],
    )
    assert result.exit_code == 2
    assert "no space left on the device" in result.stderr
    assert "Traceback" not in result.stderr
    assert destination.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sample", ["mlp_digits.safetensors", "tiny_llama_chars"])
def test_a_failed_fsync_is_a_clean_error_and_nothing_is_renamed(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch, sample: str
) -> None:
    """The fsync runs in the background while verification reads the page cache: when it
    fails (a disk that fills up at write-back), nothing is renamed into place."""
    import weissi_cli.rewrite as rewrite

    destination = tmp_path / ("out.safetensors" if sample.endswith(".safetensors") else "out")
    real_fsync = os.fsync
    file_syncs: list[int] = []

    def fsync_fails_for_files(descriptor: int) -> None:
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            file_syncs.append(descriptor)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(rewrite.os, "fsync", fsync_fails_for_files)
    result = CliRunner().invoke(
        app, ["rebalance", str(samples / sample), "-o", str(destination), "--assume-relu"]
    )
    assert file_syncs
    assert result.exit_code == 2
    assert "no space left on the device" in result.stderr
    assert "Traceback" not in result.stderr
    assert not destination.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "{input}", "--granularity", "channel"],
        ["graph", "{input}", "--emit-spec"],
        ["check", "{input}", "--max-imbalance", "1"],
        ["diff", "{input}", "{input}"],
        ["rebalance", "{input}", "-o", "{folder}/out.safetensors", "--assume-relu"],
        [
            "rebalance",
            "{input}",
            "-o",
            "{folder}/out2.safetensors",
            "--assume-relu",
            "--granularity",
            "channel",
        ],
    ],
)
def test_the_input_is_byte_identical_after_every_command(
    command: list[str], tmp_path: Path, samples: Path
) -> None:
    source = tmp_path / "input.safetensors"
    source.write_bytes((samples / "mlp_digits.safetensors").read_bytes())
    source.chmod(0o444)  # opened read-only: a write attempt would fail loudly
    before = sha256(source)
    arguments = [part.format(input=source, folder=tmp_path) for part in command]
    CliRunner().invoke(app, arguments)
    assert sha256(source) == before


def test_output_through_a_link_to_the_input_is_refused(tmp_path: Path, samples: Path) -> None:
    source = tmp_path / "input.safetensors"
    source.write_bytes((samples / "mlp_digits.safetensors").read_bytes())
    link = tmp_path / "link.safetensors"
    link.symlink_to(source)
    before = sha256(source)
    result = CliRunner().invoke(
        app, ["rebalance", str(source), "-o", str(link), "--assume-relu", "--force"]
    )
    assert result.exit_code == 2
    assert "is the input checkpoint" in result.stderr
    assert sha256(source) == before


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path, samples: Path) -> None:
    import weissi_cli.rewrite as rewrite

    destination = tmp_path / "out.safetensors"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = (
        tmp_path / f".out.safetensors.{int(dead.stdout)}.abc{rewrite.TEMPORARY_MARK}.safetensors"
    )
    stale.write_bytes(b"left by a killed run")
    live = tmp_path / f".out.safetensors.{os.getppid()}.xyz{rewrite.TEMPORARY_MARK}.safetensors"
    live.write_bytes(b"another run, still going")
    result = CliRunner().invoke(
        app,
        [
            "rebalance",
            str(samples / "mlp_digits.safetensors"),
            "-o",
            str(destination),
            "--assume-relu",
        ],
    )
    assert result.exit_code == 0
    assert not stale.exists()
    assert live.exists()
