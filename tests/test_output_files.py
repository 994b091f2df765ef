"""output_files: staging, commits that never replace without force, folder swaps and the
recovery of a swap a kill interrupted, leftovers, report files."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from weissi_cli import output_files
from weissi_cli.errors import OutputError
from weissi_cli.output_files import MARKER, Staging, rename_noreplace
from weissi_cli.output_leftovers import clean_leftovers
from weissi_cli.report_files import write_report_file


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".weissi-tmp-"))


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def set_marker(root: Path, **changes: object) -> None:
    path = root / MARKER
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def folder_with(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def contents(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def without_flag(monkeypatch: pytest.MonkeyPatch, flag: int) -> None:
    real = output_files.renameat2

    def renameat2(source: Path, target: Path, flags: int) -> None:
        if flags & flag:
            raise OSError(errno.EINVAL, "not supported here")
        real(source, target, flags)

    monkeypatch.setattr(output_files, "renameat2", renameat2)


# --- no-replace renames ----------------------------------------------------------------------


@pytest.mark.parametrize("way", ["renameat2", "link", "check then rename"])
def test_rename_noreplace_never_replaces_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    if way != "renameat2":
        without_flag(monkeypatch, output_files.RENAME_NOREPLACE)
    if way == "check then rename":

        def no_links(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EPERM, "no hard links on this file system")

        monkeypatch.setattr(os, "link", no_links)
    source, target = tmp_path / "new", tmp_path / "there"
    source.write_text("new")
    target.write_text("someone else's")
    with pytest.raises(FileExistsError):
        rename_noreplace(source, target)
    assert target.read_text() == "someone else's"
    target.unlink()
    rename_noreplace(source, target)
    assert target.read_text() == "new"
    assert not source.exists()


def test_rename_noreplace_never_replaces_a_link(tmp_path: Path) -> None:
    source, target = tmp_path / "new", tmp_path / "link"
    source.write_text("new")
    target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        rename_noreplace(source, target)
    assert target.is_symlink()


# --- staging -----------------------------------------------------------------------------------


def test_a_staging_folder_is_private_and_marked(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "out.json", folder=False)
    assert stat.S_IMODE(staging.root.stat().st_mode) == 0o700
    marker = json.loads((staging.root / MARKER).read_text())
    assert marker["pid"] == os.getpid()
    assert marker["destination"] == "out.json"
    assert marker["host"] == socket.gethostname()
    assert staging.item.name == "out.json"
    staging.discard()
    assert leftovers(tmp_path) == []


def test_a_file_created_before_the_commit_is_kept(tmp_path: Path) -> None:
    destination = tmp_path / "out.json"
    staging = Staging(destination, folder=False)
    staging.item.write_text("new")
    destination.write_text("someone else's")
    with pytest.raises(OutputError, match="created while weissi was writing"):
        staging.commit(force=False)
    assert destination.read_text() == "someone else's"
    assert leftovers(tmp_path) == []


def test_force_replaces_a_link_itself_not_its_target(tmp_path: Path) -> None:
    """A link that appears at the destination while a forced run writes: the rename replaces
    the link, and the file it points to stays as it is."""
    target = tmp_path / "target"
    target.write_text("precious")
    destination = tmp_path / "out.json"
    staging = Staging(destination, folder=False)
    staging.item.write_text("new")
    destination.symlink_to(target)
    staging.commit(force=True)
    assert not destination.is_symlink()
    assert destination.read_text() == "new"
    assert target.read_text() == "precious"


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_a_folder_swap_puts_the_new_folder_in_place_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        without_flag(monkeypatch, output_files.RENAME_EXCHANGE)
    destination = folder_with(tmp_path / "out", {"a": "old", "old-only": "old"})
    staging = Staging(destination, folder=True)
    (staging.item / "a").write_text("new")
    (staging.item / "sub").mkdir()
    (staging.item / "sub" / "b").write_text("new")
    staging.commit(force=True)
    assert contents(destination) == {"a": "new", "sub/b": "new"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_failure_between_the_renames_of_a_swap_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: type[BaseException]
) -> None:
    without_flag(monkeypatch, output_files.RENAME_EXCHANGE)
    destination = folder_with(tmp_path / "out", {"a": "old"})
    staging = Staging(destination, folder=True)
    (staging.item / "a").write_text("new")

    def fail(step: str, path: Path) -> None:
        if step == "aside":
            raise failure()

    monkeypatch.setattr(output_files, "step_hook", fail)
    with pytest.raises((KeyboardInterrupt, OutputError)):
        staging.commit(force=True)
    assert contents(destination) == {"a": "old"}
    assert leftovers(tmp_path) == []


def test_an_empty_folder_is_replaced_without_force_but_a_filled_one_is_not(
    tmp_path: Path,
) -> None:
    destination = tmp_path / "out"
    destination.mkdir()
    staging = Staging(destination, folder=True)
    (staging.item / "a").write_text("new")
    (destination / "b").write_text("someone else's")
    with pytest.raises(OutputError, match="filled while weissi was writing"):
        staging.commit(force=False)
    assert contents(destination) == {"b": "someone else's"}
    (destination / "b").unlink()
    staging = Staging(destination, folder=True)
    (staging.item / "a").write_text("new")
    staging.commit(force=False)
    assert contents(destination) == {"a": "new"}


# --- leftovers -------------------------------------------------------------------------------


def killed_aside(tmp_path: Path, keep_new: bool) -> tuple[Path, Path]:
    """The state a kill leaves between the two renames of a rename-aside swap: the old
    folder in the staging folder, the destination missing."""
    destination = folder_with(tmp_path / "out", {"a": "old"})
    staging = Staging(destination, folder=True)
    (staging.item / "a").write_text("new")
    (staging.root / "old").mkdir()
    os.rename(destination, staging.root / "old" / "out")
    if not keep_new:
        (staging.item / "a").unlink()
        staging.item.rmdir()
    set_marker(staging.root, pid=dead_pid())
    return destination, staging.root


def test_a_swap_killed_between_its_renames_is_completed(tmp_path: Path) -> None:
    destination, root = killed_aside(tmp_path, keep_new=True)
    notes = clean_leftovers(tmp_path)
    assert contents(destination) == {"a": "new"}
    assert not root.exists()
    assert any("finished replacing" in note for note in notes)


def test_a_swap_killed_without_its_new_folder_is_rolled_back(tmp_path: Path) -> None:
    destination, root = killed_aside(tmp_path, keep_new=False)
    notes = clean_leftovers(tmp_path)
    assert contents(destination) == {"a": "old"}
    assert not root.exists()
    assert any("put back" in note for note in notes)


def test_a_reused_process_id_does_not_keep_a_leftover(tmp_path: Path) -> None:
    """The marker's process id now belongs to another process (this one, started at another
    time): the run that wrote it is over."""
    staging = Staging(tmp_path / "out", folder=False)
    set_marker(staging.root, pid=os.getppid(), started=1)
    clean_leftovers(tmp_path)
    assert leftovers(tmp_path) == []


def test_a_live_run_keeps_its_staging_folder(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "out", folder=False)
    assert clean_leftovers(tmp_path) == []
    assert staging.root.exists()
    staging.discard()


def test_an_empty_unmarked_staging_folder_is_removed(tmp_path: Path) -> None:
    """A kill between making the folder and writing its marker."""
    (tmp_path / f".weissi-tmp-{dead_pid()}-0000").mkdir()
    assert clean_leftovers(tmp_path) == []
    assert leftovers(tmp_path) == []


def test_a_marker_naming_a_path_elsewhere_is_not_trusted(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "out", folder=False)
    set_marker(staging.root, pid=dead_pid(), destination="../elsewhere")
    notes = clean_leftovers(tmp_path)
    assert staging.root.exists()
    assert any("no marker" in note and "rm -rf" in note for note in notes)


# --- report files ----------------------------------------------------------------------------


def test_a_report_file_is_written_whole(tmp_path: Path) -> None:
    destination = tmp_path / "report.json"
    assert write_report_file(destination, b"{}\n", force=False) == []
    assert destination.read_bytes() == b"{}\n"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_a_report_is_never_written_over_a_special_file(tmp_path: Path, kind: str) -> None:
    destination = tmp_path / "report"
    if kind == "fifo":
        os.mkfifo(destination)
    elif kind == "socket":
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(destination))
        listening.close()
    else:
        destination = Path("/dev/null")
    for force in (False, True):
        with pytest.raises(OutputError, match="not a file"):
            write_report_file(destination, b"{}", force=force)
    assert not stat.S_ISREG(destination.lstat().st_mode)


def test_a_report_is_never_written_over_a_shard_of_the_input(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{}")
    shard = tmp_path / "model-00001-of-00002.safetensors"
    shard.write_bytes(b"weights")
    with pytest.raises(OutputError, match="checkpoint being read"):
        write_report_file(shard, b"{}", force=True, protect=[index])
    with pytest.raises(OutputError, match="checkpoint being read"):
        write_report_file(shard, b"{}", force=True, protect=[tmp_path])
    assert shard.read_bytes() == b"weights"


def test_a_report_cleans_up_after_killed_runs(tmp_path: Path) -> None:
    stale = Staging(tmp_path / "other.json", folder=False)
    set_marker(stale.root, pid=dead_pid())
    notes = write_report_file(tmp_path / "report.json", b"{}", force=False)
    assert notes == [f"removed {stale.root}, left by a killed weissi run"]
    assert leftovers(tmp_path) == []
