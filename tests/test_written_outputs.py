"""Checkpoints weissi writes: modes from the umask, long names, no replacing at the final
rename without --force, folders replaced whole, and a model folder's links never followed out
of it."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from tests.helpers import mlp_state, sha256, write_safetensors, write_sharded
from weissi_cli.cli.app import app


def weissi(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "WEISSI_DEBUG": None}).invoke(
        app, list(args)
    )


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "weissi-tmp" in p.name)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(folder: Path) -> dict[str, str]:
    """Every file below `folder` by relative path: its sha256, or where a link points."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            found[relative] = "-> " + os.readlink(path)
        elif path.is_file():
            found[relative] = sha256(path)
    return found


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A model folder: one safetensors file and the files that travel with it."""
    folder = tmp_path / "model"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", mlp_state(sizes=(8, 6, 4, 3), seed=3))
    (folder / "README.md").write_text("a small model\n")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return folder


def rebalance(source: Path, output: Path, *extra: str) -> Result:
    return weissi("rebalance", str(source), "-o", str(output), "--assume-relu", *extra)


# --- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "expected"),
    [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
    ids=["umask-022", "umask-002", "umask-077"],
)
@pytest.mark.parametrize("source", ["mlp_digits.safetensors", "mlp_digits.pt"])
def test_a_new_checkpoint_respects_the_umask(
    samples: Path, tmp_path: Path, source: str, mask: int, expected: int
) -> None:
    output = tmp_path / ("out" + Path(source).suffix)
    with umask(mask):
        assert rebalance(samples / source, output).exit_code == 0
    assert mode(output) == expected


@pytest.mark.parametrize(
    ("mask", "expected"), [(0o022, 0o644), (0o002, 0o664)], ids=["umask-022", "umask-002"]
)
def test_a_new_folder_and_its_files_respect_the_umask(
    model_folder: Path, tmp_path: Path, mask: int, expected: int
) -> None:
    """Companion files keep their own permissions less the umask, as cp does."""
    (model_folder / "README.md").chmod(0o666)
    (model_folder / "tokenizer" / "vocab.txt").chmod(0o666)
    output = tmp_path / "out"
    with umask(mask):
        assert rebalance(model_folder, output).exit_code == 0
    assert mode(output) == expected | 0o111
    assert mode(output / "tokenizer") == expected | 0o111
    assert mode(output / "model.safetensors") == expected
    assert mode(output / "README.md") == expected
    assert mode(output / "tokenizer" / "vocab.txt") == expected


def test_force_keeps_the_mode_of_the_replaced_checkpoint(samples: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.safetensors"
    output.write_bytes(b"an earlier result")
    output.chmod(0o640)
    with umask(0o022):
        assert rebalance(samples / "mlp_digits.safetensors", output, "--force").exit_code == 0
    assert mode(output) == 0o640


def test_force_keeps_the_modes_of_the_replaced_folder(model_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    assert rebalance(model_folder, output).exit_code == 0
    output.chmod(0o750)
    (output / "model.safetensors").chmod(0o640)
    with umask(0o022):
        assert rebalance(model_folder, output, "--force").exit_code == 0
    assert mode(output) == 0o750
    assert mode(output / "model.safetensors") == 0o640
    assert mode(output / "README.md") == 0o644


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["mlp_digits.safetensors", "mlp_digits.pt"])
def test_an_output_name_of_255_bytes_works(samples: Path, tmp_path: Path, source: str) -> None:
    suffix = Path(source).suffix
    output = tmp_path / ("o" * (255 - len(suffix)) + suffix)
    result = rebalance(samples / source, output)
    assert result.exit_code == 0, result.output
    assert output.is_file()
    assert leftovers(tmp_path) == []


def test_a_folder_name_of_255_bytes_works(model_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / ("o" * 255)
    result = rebalance(model_folder, output)
    assert result.exit_code == 0, result.output
    assert (output / "model.safetensors").is_file()


def test_an_output_name_over_255_bytes_is_one_line(samples: Path, tmp_path: Path) -> None:
    output = tmp_path / ("o" * 256 + ".safetensors")
    one_line_error(rebalance(samples / "mlp_digits.safetensors", output))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("force", [False, True])
def test_a_checkpoint_is_never_written_through_a_symlink(
    samples: Path, tmp_path: Path, force: bool
) -> None:
    precious = tmp_path / "precious.safetensors"
    precious.write_bytes(b"a file the link points at")
    link = tmp_path / "out.safetensors"
    link.symlink_to(precious)
    result = rebalance(samples / "mlp_digits.safetensors", link, *(("--force",) if force else ()))
    one_line_error(result)
    assert precious.read_bytes() == b"a file the link points at"
    assert link.is_symlink()


# --- the no-replace rule at the final rename ----------------------------------------------


def appearing_during_the_write(monkeypatch: pytest.MonkeyPatch, destination: Path) -> None:
    """Create `destination` once the first file of the output is written: after the checks
    at the start, before the output is put in place."""
    from weissi_cli.writers import safetensors

    real = safetensors.write_safetensors_copy

    def written(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        if not destination.exists():
            destination.parent.mkdir(exist_ok=True)
            destination.write_bytes(b"someone else's file")

    monkeypatch.setattr(safetensors, "write_safetensors_copy", written)


def test_a_file_created_at_the_destination_during_the_run_is_not_replaced(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out.safetensors"
    appearing_during_the_write(monkeypatch, output)
    line = one_line_error(rebalance(samples / "mlp_digits.safetensors", output))
    assert "--force" in line
    assert output.read_bytes() == b"someone else's file"
    assert leftovers(tmp_path) == []


def test_a_folder_filled_during_the_run_is_not_replaced(
    model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    appearing_during_the_write(monkeypatch, output / "model.safetensors")
    one_line_error(rebalance(model_folder, output))
    assert tree(output) == {"model.safetensors": sha256(output / "model.safetensors")}
    assert (output / "model.safetensors").read_bytes() == b"someone else's file"
    assert leftovers(tmp_path) == []


def test_with_force_a_file_created_during_the_run_is_replaced(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out.safetensors"
    appearing_during_the_write(monkeypatch, output)
    assert rebalance(samples / "mlp_digits.safetensors", output, "--force").exit_code == 0
    assert output.read_bytes() != b"someone else's file"


# --- folders are replaced whole ---------------------------------------------------------------


def test_force_replaces_a_folder_whole(model_folder: Path, tmp_path: Path) -> None:
    """Old shards of a different model must not survive beside the new ones."""
    output = tmp_path / "out"
    shards = {
        "model-00001-of-00002.safetensors": {"a": torch.zeros(2)},
        "model-00002-of-00002.safetensors": {"b": torch.zeros(2)},
    }
    write_sharded(output, shards)
    assert rebalance(model_folder, output).exit_code == 2  # not empty: needs --force
    result = rebalance(model_folder, output, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(tree(output)) == ["README.md", "model.safetensors", "tokenizer/vocab.txt"]
    assert leftovers(tmp_path) == []


def test_force_does_not_replace_a_folder_that_holds_no_model(
    model_folder: Path, tmp_path: Path
) -> None:
    """--force replaces the whole folder: one that is not a model folder (a home folder, a
    project) is refused rather than removed."""
    output = tmp_path / "project"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    line = one_line_error(rebalance(model_folder, output, "--force"))
    assert "project" in line
    assert (output / "notes.txt").read_text() == "mine"


# --- links and special files inside an input folder ----------------------------------------


def test_a_link_out_of_the_input_folder_is_not_followed(model_folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("a private key")
    (model_folder / "tokenizer.json").symlink_to(secret)
    output = tmp_path / "out"
    line = one_line_error(rebalance(model_folder, output))
    assert "tokenizer.json" in line
    assert not output.exists()
    assert leftovers(tmp_path) == []


def test_a_link_to_a_device_is_not_followed(model_folder: Path, tmp_path: Path) -> None:
    (model_folder / "vocab.bin.txt").symlink_to("/dev/zero")
    one_line_error(rebalance(model_folder, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_link_within_the_input_folder_is_copied(model_folder: Path, tmp_path: Path) -> None:
    (model_folder / "LICENSE").symlink_to("README.md")
    output = tmp_path / "out"
    assert rebalance(model_folder, output).exit_code == 0
    assert (output / "LICENSE").read_text() == "a small model\n"


def test_a_hugging_face_cache_snapshot_is_copied(tmp_path: Path) -> None:
    """The hub cache keeps files in blobs/ and links them from snapshots/<revision>/."""
    repository = tmp_path / "models--someone--mlp"
    blobs = repository / "blobs"
    snapshot = repository / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    write_safetensors(blobs / "f00d", mlp_state(sizes=(8, 6, 4, 3), seed=3))
    (blobs / "beef").write_text("a small model\n")
    (snapshot / "model.safetensors").symlink_to("../../blobs/f00d")
    (snapshot / "README.md").symlink_to("../../blobs/beef")
    output = tmp_path / "out"
    result = rebalance(snapshot, output)
    assert result.exit_code == 0, result.output
    assert (output / "README.md").read_text() == "a small model\n"
    assert not (output / "README.md").is_symlink()


def test_special_files_are_left_out_with_a_warning(model_folder: Path, tmp_path: Path) -> None:
    os.mkfifo(model_folder / "pipe")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(model_folder / "socket"))
        result = rebalance(model_folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(tree(tmp_path / "out")) == [
        "README.md",
        "model.safetensors",
        "tokenizer/vocab.txt",
    ]
    assert "pipe" in result.stderr
    assert "socket" in result.stderr


def test_the_input_folder_is_unchanged(model_folder: Path, tmp_path: Path) -> None:
    (model_folder / "LICENSE").symlink_to("README.md")
    before = tree(model_folder)
    assert rebalance(model_folder, tmp_path / "out").exit_code == 0
    assert rebalance(model_folder, tmp_path / "out", "--force").exit_code == 0
    assert tree(model_folder) == before


def test_an_existing_data_file_of_an_onnx_output_is_refused_leaving_nothing(
    tmp_path: Path,
) -> None:
    from tests.onnx_models import large_mlp
    from weissi_cli.api import rebalance_checkpoint
    from weissi_cli.errors import OutputError

    source = large_mlp(tmp_path / "in", hidden=32, width=16)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "balanced.onnx.data").write_bytes(b"someone else's data")
    with pytest.raises(OutputError, match="already exists"):
        rebalance_checkpoint(source, folder / "balanced.onnx")
    assert sorted(p.name for p in folder.iterdir()) == ["balanced.onnx.data"]
    assert (folder / "balanced.onnx.data").read_bytes() == b"someone else's data"
