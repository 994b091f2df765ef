"""Faults: SIGKILL mid-write, a full disk, and inputs that must never change."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
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


@pytest.mark.slow
def test_sigterm_at_any_moment_leaves_nothing_behind_or_the_complete_file(
    large: Path, tmp_path: Path
) -> None:
    """SIGTERM is handled like Ctrl-C: the unfinished output is removed (exit 143). A signal
    that arrives before the CLI has installed its handlers ends the process as SIGTERM does
    by default, before anything was written."""
    outcomes = {"absent": 0, "complete": 0}
    reference = tmp_path / "reference.safetensors"
    started = time.perf_counter()
    subprocess.run(
        weissi("rebalance", str(large), "-o", str(reference), "--assume-relu"),
        check=True,
        capture_output=True,
    )
    duration = time.perf_counter() - started
    expected = contents(reference)
    rng = random.Random(1)
    output = tmp_path / "out.safetensors"
    codes: dict[int, int] = {}
    for _ in range(KILLS):
        output.unlink(missing_ok=True)
        process = subprocess.Popen(
            weissi("rebalance", str(large), "-o", str(output), "--assume-relu"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, duration))
        process.send_signal(signal.SIGTERM)
        code = process.wait()
        codes[code] = codes.get(code, 0) + 1
        assert code in (0, 143, -signal.SIGTERM)
        assert leftovers(tmp_path) == []
        # A signal after the commit (while the report is printed) finds the output complete.
        if output.exists():
            assert contents(output) == expected
            outcomes["complete"] += 1
        else:
            assert code != 0
            outcomes["absent"] += 1
    print(f"\n{KILLS} SIGTERMs, exit codes: {codes}, outputs: {outcomes}")


def test_a_full_disk_is_a_clean_error_and_the_destination_is_untouched(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weissi_cli.writers import disk

    destination = tmp_path / "out.safetensors"
    destination.write_bytes(b"previous result")

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk.os, "pwrite", full)
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
    from weissi_cli.writers import pending

    destination = tmp_path / ("out.safetensors" if sample.endswith(".safetensors") else "out")
    real_fsync = os.fsync
    file_syncs: list[int] = []

    def fsync_fails_for_files(descriptor: int) -> None:
        name = os.readlink(f"/proc/self/fd/{descriptor}")
        if stat.S_ISREG(os.fstat(descriptor).st_mode) and name.endswith(".safetensors"):
            file_syncs.append(descriptor)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(pending.os, "fsync", fsync_fails_for_files)
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


def staging_of(destination: Path, **marker: object) -> Path:
    """A staging folder for `destination` as a run would leave it, its marker changed by
    `marker` (another process id, another host)."""
    import json

    from weissi_cli import output_files

    staging = output_files.Staging(destination, folder=False)
    staging.item.write_bytes(b"half a checkpoint")
    path = staging.root / output_files.MARKER
    path.write_text(json.dumps({**json.loads(path.read_text()), **marker}))
    return staging.root


def test_leftovers_of_dead_processes_are_removed_and_others_reported(
    tmp_path: Path, samples: Path
) -> None:
    destination = tmp_path / "out.safetensors"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = staging_of(destination, pid=int(dead.stdout))
    live = staging_of(destination, pid=os.getppid(), started=None)
    elsewhere = staging_of(destination, pid=int(dead.stdout), host="another-host")
    unmarked = tmp_path / ".weissi-tmp-1-unmarked"
    unmarked.mkdir()
    (unmarked / "something").write_text("not ours to remove")
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
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert f"removed {stale}" in result.stderr
    assert live.exists()
    assert str(live) not in result.stderr
    for kept in (elsewhere, unmarked):
        assert kept.exists()
        assert f"rm -rf {kept}" in result.stderr


# --- faults in a process of its own (tests/fault_driver.py) ----------------------------------

REPOSITORY = Path(__file__).resolve().parent.parent


def driven(faults: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`weissi ARGS` in a new process with `faults` injected (see tests/fault_driver.py)."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    environment.pop("WEISSI_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "tests.fault_driver", *faults, "--", *args],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tree(folder: Path) -> dict[str, str]:
    """Every file below `folder` by relative path, with its sha256."""
    return {
        str(path.relative_to(folder)): sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def sharded_model(folder: Path, seed: int, extra: str) -> Path:
    """A model folder of three shards, an index and companion files."""
    from tests.helpers import write_sharded

    state = mlp_state(sizes=(24, 20, 16, 12), seed=seed, dtype=torch.float32)
    layers = sorted({name.rsplit(".", 1)[0] for name in state})
    shards = {
        f"model-{index + 1:05d}-of-{len(layers):05d}.safetensors": {
            name: tensor for name, tensor in state.items() if name.startswith(layer + ".")
        }
        for index, layer in enumerate(layers)
    }
    write_sharded(folder, shards)
    (folder / "README.md").write_text(f"model {seed}\n")
    (folder / "extra").mkdir()
    (folder / "extra" / f"{extra}.txt").write_text(extra)
    return folder


@pytest.fixture(scope="module")
def swap(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An input folder; the folder a first run wrote (the old output) and the one a run on
    the input writes (the new output), each kept as a pristine copy."""
    base = tmp_path_factory.mktemp("swap")
    source = sharded_model(base / "source", seed=1, extra="new")
    earlier = sharded_model(base / "earlier", seed=2, extra="old")
    old = base / "old"
    new = base / "new"
    for input_folder, output in ((earlier, old), (source, new)):
        result = CliRunner().invoke(
            app, ["rebalance", str(input_folder), "-o", str(output), "--assume-relu"]
        )
        assert result.exit_code == 0, result.output
    assert tree(old) != tree(new)
    return {"source": source, "old": old, "new": new}


def replacing_run(
    swap: dict[str, Path], destination: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """Replace a copy of the old folder by the new one in this process (with RENAME_EXCHANGE
    made unavailable when not `exchange`)."""
    shutil.copytree(swap["old"], destination)
    if not exchange:
        from weissi_cli import output_files

        real = output_files.renameat2

        def no_exchange(source: object, target: object, flags: int) -> None:
            if flags & output_files.RENAME_EXCHANGE:
                raise OSError(errno.EINVAL, "unavailable")
            real(source, target, flags)  # type: ignore[arg-type]

        monkeypatch.setattr(output_files, "renameat2", no_exchange)
    result = CliRunner().invoke(
        app, ["rebalance", str(swap["source"]), "-o", str(destination), "--assume-relu", "--force"]
    )
    assert result.exit_code == 0, result.output
    assert tree(destination) == tree(swap["new"])
    shutil.rmtree(destination)
    monkeypatch.undo()


def swap_steps(
    swap: dict[str, Path], destination: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> list[str]:
    """The commit steps a replacing run goes through, recorded in this process."""
    from weissi_cli import output_files

    steps: list[str] = []
    monkeypatch.setattr(output_files, "step_hook", lambda step, path: steps.append(step))
    replacing_run(swap, destination, monkeypatch, exchange)
    return steps


def killed_and_rerun(
    swap: dict[str, Path], destination: Path, faults: list[str]
) -> tuple[str, str]:
    """Kill a replacing run as `faults` say; what the destination was then ("old", "new" or
    "absent"), and after a run that does not replace it (recovery, then a refusal)."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(swap["old"], destination)
    killed = driven(
        faults, "rebalance", str(swap["source"]), "-o", str(destination), "--assume-relu", "--force"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after_kill = state(swap, destination)
    rerun = driven([], "rebalance", str(swap["source"]), "-o", str(destination), "--assume-relu")
    assert rerun.returncode == 2, rerun.stderr
    assert "Traceback" not in rerun.stderr
    after_rerun = state(swap, destination)
    assert leftovers(destination.parent) == []
    return after_kill, after_rerun


def state(swap: dict[str, Path], destination: Path) -> str:
    if not destination.exists():
        return "absent"
    found = tree(destination)
    for name in ("old", "new"):
        if found == tree(swap[name]):
            return name
    raise AssertionError(f"{destination} is neither the old nor the new folder: {found}")


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_a_kill_at_every_step_of_a_folder_swap_leaves_the_old_or_the_new_folder(
    swap: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    destination = tmp_path / "out"
    steps = swap_steps(swap, destination, monkeypatch, exchange)
    assert steps[0] == "staged"
    assert ("aside" in steps) != exchange
    outcomes = {}
    for step in steps:
        faults = [f"step:{step}:KILL", *([] if exchange else ["no-exchange"])]
        outcomes[step] = killed_and_rerun(swap, destination, faults)
    print(f"\nkills at each step ({'exchange' if exchange else 'rename-aside'}): {outcomes}")
    for step, (after_kill, after_rerun) in outcomes.items():
        # A kill between the two renames of the rename-aside protocol leaves no folder; the
        # next run completes the swap before anything else.
        assert after_kill in (("old", "new", "absent") if step == "aside" else ("old", "new"))
        assert after_rerun == ("old" if after_kill == "old" else "new")
    assert outcomes[steps[0]][0] == "old"
    assert outcomes[steps[-1]][0] == "new"


def test_a_kill_before_any_rename_of_a_folder_swap_leaves_the_old_or_the_new_folder(
    swap: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every os.rename and os.replace of a replacing run, counted in this process, then each
    one preceded by a SIGKILL in a process of its own: the steps as the system sees them
    (where RENAME_EXCHANGE swaps the folders, the swap is a single renameat2, which no
    os.rename precedes)."""
    destination = tmp_path / "out"
    calls: list[str] = []
    for function in ("rename", "replace"):
        real = getattr(os, function)

        def counted(*args: object, _real: object = real, _name: str = function) -> object:
            calls.append(_name)
            return _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(os, function, counted)
    replacing_run(swap, destination, monkeypatch, exchange=False)
    renames = len(calls)
    assert renames >= 2
    outcomes = [
        killed_and_rerun(swap, destination, [f"rename:{k}", "no-exchange"])
        for k in range(1, renames + 1)
    ]
    print(f"\nkills before each of {renames} renames: {outcomes}")
    for after_kill, after_rerun in outcomes:
        assert after_kill in ("old", "new", "absent")
        assert after_rerun == ("old" if after_kill == "old" else "new")


def test_a_killed_folder_run_does_not_block_the_next(samples: Path, tmp_path: Path) -> None:
    destination = tmp_path / "out"
    source = samples / "tiny_llama_chars"
    killed = driven(["written:KILL"], "rebalance", str(source), "-o", str(destination))
    assert killed.returncode == -signal.SIGKILL
    assert not destination.exists()
    rerun = driven([], "rebalance", str(source), "-o", str(destination))
    assert rerun.returncode == 0, rerun.stderr
    assert (destination / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []
    assert [p.name for p in destination.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("signal_name", "code"), [("TERM", 143), ("INT", 130)])
@pytest.mark.parametrize("output", ["out.safetensors", "out"])
def test_sigterm_and_sigint_clean_up_and_exit_143_and_130(
    samples: Path, tmp_path: Path, signal_name: str, code: int, output: str
) -> None:
    source = samples / ("mlp_digits.safetensors" if "." in output else "tiny_llama_chars")
    destination = tmp_path / output
    arguments = ["rebalance", str(source), "-o", str(destination), "--assume-relu"]
    result = driven([f"written:{signal_name}"], *arguments)
    assert result.returncode == code, result.stderr
    assert "interrupted" in result.stderr
    assert "Traceback" not in result.stderr
    assert not destination.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("output", ["out.safetensors", "out"])
def test_an_interrupt_between_the_writers_statements_leaves_nothing(
    samples: Path, tmp_path: Path, output: str
) -> None:
    """A signal that lands where no writer is in a try block (here: the moment rebalance has
    the written output in hand) still removes the staging folder."""
    source = samples / ("mlp_digits.safetensors" if "." in output else "tiny_llama_chars")
    destination = tmp_path / output
    arguments = ["rebalance", str(source), "-o", str(destination), "--assume-relu"]
    result = driven(["rescaled:TERM"], *arguments)
    assert result.returncode == 143, result.stderr
    assert not destination.exists()
    assert leftovers(tmp_path) == []


def test_ctrl_c_while_a_torch_pickle_is_written_is_an_interrupt(
    samples: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "out.pt"
    result = driven(
        ["torch-write:INT"],
        "rebalance",
        str(samples / "mlp_digits.pt"),
        "-o",
        str(destination),
        "--assume-relu",
    )
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr
    assert "could not write" not in result.stderr
    assert not destination.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("step", ["staged", "aside"])
def test_sigterm_during_a_folder_swap_lets_it_finish_then_exits_143(
    swap: dict[str, Path], tmp_path: Path, step: str
) -> None:
    """The commit is not cut half way by a signal: it completes, then the run ends as
    interrupted."""
    destination = tmp_path / "out"
    shutil.copytree(swap["old"], destination)
    result = driven(
        [f"step:{step}:TERM", "no-exchange"],
        "rebalance",
        str(swap["source"]),
        "-o",
        str(destination),
        "--assume-relu",
        "--force",
    )
    assert result.returncode == 143, result.stderr
    assert "interrupted by SIGTERM" in result.stderr
    assert state(swap, destination) == "new"
    assert leftovers(tmp_path) == []
