"""A written output waiting to be put in place: durable writes in the background, the
atomic commit through its staging folder, and the checks of an output path."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from weissi_cli.errors import OutputError, UsageError
from weissi_cli.io import ONNX_SUFFIX, TORCH_SUFFIXES, Checkpoint
from weissi_cli.io.onnx_file import OnnxCheckpoint
from weissi_cli.io.safetensors_file import SafetensorsCheckpoint
from weissi_cli.io.sharded import ShardedCheckpoint
from weissi_cli.output_files import (
    Staging,
    check_file_destination,
    check_name,
    check_parent,
    holds_a_model,
    output_error,
    refuse_link,
)
from weissi_cli.output_leftovers import clean_leftovers


class BackgroundSync:
    """fsync and close a written file on a thread of its own (the disk's part of a write:
    1-2 s for 2 GB here), so the caller can verify what is in the page cache meanwhile."""

    def __init__(self, descriptor: int) -> None:
        self.failure: OSError | None = None
        self.thread = threading.Thread(target=self._run, args=(descriptor,), daemon=True)
        self.thread.start()

    def _run(self, descriptor: int) -> None:
        try:
            os.fsync(descriptor)
        except OSError as error:
            self.failure = error
        finally:
            os.close(descriptor)

    def wait(self) -> OSError | None:
        """Block until the file is on disk; the error if it could not be made durable."""
        self.thread.join()
        return self.failure


@dataclass
class PendingOutput:
    """A written output in its staging folder, waiting to be put in place (or discarded)."""

    destination: Path
    readable_path: Path  # where the pending output can be opened as a checkpoint
    staging: Staging | None = None
    force: bool = False  # commit may replace what is at the destination
    # Weight files of the input's folder that were deliberately not copied (see
    # model_folder), relative to that folder.
    left_out: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what else was not copied, and why
    # fsyncs still running for written files: verification reads the page cache meanwhile,
    # and nothing is put in place before they have all succeeded.
    syncs: list[BackgroundSync] = field(default_factory=list)

    @property
    def moves(self) -> list[tuple[Path, Path]]:
        """(staged file, where commit puts it) for the output, or each file at the top of an
        output folder."""
        if self.staging is None:
            return []
        if not self.staging.folder:
            return [(self.staging.item, self.destination)]
        names = sorted(path.name for path in self.staging.item.iterdir() if path.is_file())
        return [(self.staging.item / name, self.destination / name) for name in names]

    def commit(self) -> None:
        try:
            self._wait_for_syncs()
        except OSError as error:
            self.discard()
            raise output_error(self.destination, error) from None
        if self.staging is not None:
            staging, self.staging = self.staging, None
            staging.commit(self.force)

    def _wait_for_syncs(self) -> None:
        syncs, self.syncs = self.syncs, []
        failures = [failure for sync in syncs if (failure := sync.wait()) is not None]
        if failures:
            raise failures[0]

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._wait_for_syncs()
        if self.staging is not None:
            staging, self.staging = self.staging, None
            staging.discard()


def check_output_path(
    checkpoint: Checkpoint,
    output: Path,
    force: bool,
    output_format: str = "same",
    folder: bool = False,
) -> list[str]:
    """Refuse outputs that would overwrite the input, clobber a file, or change format, after
    cleaning up what killed runs left beside the output; notes on that cleanup.

    `folder`: the input was named as a model folder, so the output is one too."""
    if output_format not in ("same", "safetensors"):
        raise UsageError(f"--format must be same or safetensors, not {output_format!r}")
    if output_format == "safetensors" and checkpoint.format.startswith("safetensors"):
        output_format = "same"
    inputs = input_files(checkpoint)
    check_name(output)
    check_parent(output)
    notes = clean_leftovers(output.parent)
    target = output.resolve()
    for source in inputs:
        if target == source.resolve() or (target.exists() and target.samefile(source)):
            raise OutputError(f"{output}: is the input checkpoint; write the result to a new file")
    if folder and not isinstance(
        checkpoint, (SafetensorsCheckpoint, ShardedCheckpoint, OnnxCheckpoint)
    ):
        raise UsageError(
            f"{checkpoint.path.parent}: weissi writes model folders of safetensors checkpoints "
            f"and ONNX models; name the file ({checkpoint.path.name}) to rebalance it alone"
        )
    writes_folder = folder or checkpoint.format == "safetensors-sharded"
    if folder:
        _check_output_folder(checkpoint, output, target)
    for source in inputs if writes_folder else ():
        if source.resolve().parent == target:
            raise OutputError(f"{output}: is the input's folder; write the result to a new folder")
        if source.resolve().is_relative_to(target):
            raise OutputError(f"{output}: contains the input; write the result elsewhere")
    status = os.lstat(output) if os.path.lexists(output) else None
    refuse_link(output, status)
    if writes_folder:
        kind = "a model folder" if folder else "a sharded checkpoint"
        if status is not None and not stat.S_ISDIR(status.st_mode):
            raise OutputError(f"{output}: {kind} is written to a folder, and this is a file")
        if status is not None and any(target.iterdir()):
            if not force:
                raise OutputError(
                    f"{output}: folder exists and is not empty; pass --force to replace it"
                )
            if not holds_a_model(output):
                raise OutputError(
                    f"{output}: holds no weight files, and --force replaces the whole "
                    "folder; weissi replaces only model folders: name a new folder"
                )
        return notes
    name = output.name.lower()
    expected = "safetensors" if output_format == "safetensors" else checkpoint.format
    if expected == "safetensors" and not name.endswith(".safetensors"):
        raise UsageError(
            f"{output}: the output is safetensors (the input's format, or --format "
            "safetensors); name it *.safetensors"
        )
    if expected == "torch.export" and not name.endswith(".pt2"):
        raise UsageError(
            f"{output}: the input is a torch.export program and weissi writes the input's "
            "format; name the output *.pt2, or pass --format safetensors for just the tensors"
        )
    if expected == "onnx" and not name.endswith(ONNX_SUFFIX):
        raise UsageError(
            f"{output}: the input is an ONNX model and weissi writes the input's format; name "
            f"the output *{ONNX_SUFFIX}"
        )
    if expected == "torch" and not name.endswith(TORCH_SUFFIXES):
        raise UsageError(
            f"{output}: the input is a torch pickle and weissi writes the input's format; name the "
            f"output with one of {', '.join(TORCH_SUFFIXES)}"
        )
    check_file_destination(output, force)
    return notes


def _check_output_folder(checkpoint: Checkpoint, output: Path, target: Path) -> None:
    """A model folder's output is a separate folder: not inside the input folder, whose
    files would be copied into every later output."""
    source = checkpoint.path.parent.resolve()
    if target == source or target.is_relative_to(source):
        raise OutputError(
            f"{output}: is inside the input folder {checkpoint.path.parent}; write the result "
            "to a folder outside it (its files would be copied into every later output)"
        )
    if source.is_relative_to(target):
        raise OutputError(f"{output}: contains the input folder; write the result elsewhere")


def pending_file(output: Path) -> PendingOutput:
    """A pending single-file output: an empty file in a new staging folder beside `output`,
    under the same name (so it opens as the same format, and a name the file system takes
    is never made too long)."""
    staging = Staging(output, folder=False)
    return PendingOutput(output, staging.item, staging)


def input_files(checkpoint: Checkpoint) -> list[Path]:
    if isinstance(checkpoint, ShardedCheckpoint):
        return [checkpoint.path, *(shard.path for shard in checkpoint.shards.values())]
    if isinstance(checkpoint, OnnxCheckpoint):
        return [checkpoint.path, *checkpoint.data_files]
    return [checkpoint.path]
