"""Writing a rescaled copy of a checkpoint: streamed, same format and dtypes, atomic.

Every tensor without a scale is copied byte for byte; a scaled tensor is widened to
float64, multiplied, and rounded once to its storage dtype. Output goes to a staging
folder beside the destination (see output_files) and is put in place only by
`PendingOutput.commit`, after verification.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import mmap
import os
import shutil
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from weissi_cli import interrupts, kernel
from weissi_cli.errors import OutputError, UsageError
from weissi_cli.io import ONNX_SUFFIX, TORCH_SUFFIXES, Checkpoint, TensorInfo
from weissi_cli.io.checkpoint import read_buffer
from weissi_cli.io.dtypes import decode, encode, raw_numpy_dtype
from weissi_cli.io.exported import ExportedCheckpoint
from weissi_cli.io.onnx_file import OnnxCheckpoint
from weissi_cli.io.safetensors_file import SafetensorsCheckpoint
from weissi_cli.io.sharded import ShardedCheckpoint
from weissi_cli.io.torch_pickle import (
    TensorDictCheckpoint,
    TorchCheckpoint,
    optimizer_state_message,
)
from weissi_cli.model_folder import companion_files, copy_companions
from weissi_cli.output_files import (
    Staging,
    check_file_destination,
    check_name,
    check_parent,
    clean_leftovers,
    holds_a_model,
    output_error,
    refuse_link,
)
from weissi_cli.progress import Stage
from weissi_cli.scales import TensorScale, uniform
from weissi_cli.threads import run_round_robin

CHUNK_ELEMENTS = 1 << 18
WRITER_THREADS = 2
COPY_CHUNK_BYTES = 1 << 20


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


Scale = TensorScale | float


def write_rescaled(
    checkpoint: Checkpoint,
    scales: Mapping[str, Scale],
    output: Path,
    record: Mapping[str, Any],
    output_format: str = "same",
    folder: bool = False,
    force: bool = False,
    drop: tuple[str, ...] = (),
) -> PendingOutput:
    """Write `checkpoint` with each named tensor multiplied by its scale, pending commit
    (which replaces what is at `output` only with `force`).

    `output_format="safetensors"` writes just the tensors (of a pickle or an exported
    program) as a safetensors file instead of the input's own format. `folder`: `output`
    is a model folder: the checkpoint's files keep their names, and every other file of
    the input's folder (config, tokenizer, README) is copied unchanged. `drop`: top-level entries of
    a torch pickle to leave out (its optimizer state, which rescaling would make wrong)."""
    factors: dict[str, TensorScale] = {}
    for name, scale in scales.items():
        if name not in checkpoint:
            raise ValueError(f"no tensor {name!r} to scale in {checkpoint.path}")
        info = checkpoint.info(name)
        factors[name] = scale if isinstance(scale, TensorScale) else uniform(info.shape, scale)
        if factors[name].shape != info.shape:
            raise ValueError(
                f"scale for {name!r} has shape {factors[name].shape}, not {info.shape}"
            )
    for name in factors:
        tied = checkpoint.shared_storage(name)
        if tied and any(not _same_scale(factors.get(other), factors[name]) for other in tied):
            raise UsageError(
                f"{checkpoint.path}: {name} shares memory with {', '.join(tied)}; they cannot take "
                "different scales"
            )
    try:
        if output_format == "safetensors" and checkpoint.format != "safetensors":
            pending = _write_state_dict_as_safetensors(checkpoint, factors, output, record)
        elif isinstance(checkpoint, ExportedCheckpoint):
            pending = _write_exported(checkpoint, factors, output, record)
        elif isinstance(checkpoint, OnnxCheckpoint):
            from weissi_cli.write_onnx import write_onnx

            pending = write_onnx(checkpoint, factors, output, record, folder, force)
        elif isinstance(checkpoint, (SafetensorsCheckpoint, ShardedCheckpoint)) and (
            folder or isinstance(checkpoint, ShardedCheckpoint)
        ):
            pending = _write_folder(checkpoint, factors, output, record, folder)
        elif isinstance(checkpoint, SafetensorsCheckpoint):
            pending = _write_single(checkpoint, factors, output, record)
        elif isinstance(checkpoint, TorchCheckpoint):
            pending = _write_torch(checkpoint, factors, output, record, drop)
        else:
            raise UsageError(
                f"{checkpoint.path}: writing {checkpoint.format} checkpoints is not supported"
            )
    except OSError as error:
        raise output_error(output, error) from None
    pending.force = force
    return pending


def _same_scale(first: TensorScale | None, second: TensorScale) -> bool:
    if first is None:
        return False
    return bool(np.array_equal(np.asarray(first.whole()), np.asarray(second.whole())))


def _pending_file(output: Path) -> PendingOutput:
    """A pending single-file output: an empty file in a new staging folder beside `output`,
    under the same name (so it opens as the same format, and a name the file system takes
    is never made too long)."""
    staging = Staging(output, folder=False)
    return PendingOutput(output, staging.item, staging)


def _write_single(
    checkpoint: SafetensorsCheckpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    record: Mapping[str, Any],
) -> PendingOutput:
    pending = _pending_file(output)
    try:
        write_safetensors_copy(
            checkpoint,
            factors,
            pending.readable_path,
            {"weissi": json.dumps(record)},
            pending.syncs,
        )
    except BaseException:
        pending.discard()
        raise
    return pending


def _write_folder(
    checkpoint: SafetensorsCheckpoint | ShardedCheckpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    record: Mapping[str, Any],
    companions: bool,
) -> PendingOutput:
    """The complete output folder (companion files, shards or the one file, index), staged
    beside `output` and put in place whole on commit."""
    staging = Staging(output, folder=True)
    folder = staging.item
    pending = PendingOutput(output, folder / checkpoint.path.name, staging)
    try:
        if companions:
            found = companion_files(checkpoint.path.parent, input_files(checkpoint))
            pending.left_out = found.weights
            if found.special:
                pending.notes.append(
                    f"not copied into {output}: special files of the input folder "
                    f"({', '.join(found.special)})"
                )
            copy_companions(found.copied, folder)
        if isinstance(checkpoint, SafetensorsCheckpoint):
            shards = {checkpoint.path.name: checkpoint}
        else:
            shards = checkpoint.shards
        for shard_name, shard in shards.items():
            shard_factors = {name: f for name, f in factors.items() if name in shard}
            shard_record = {
                **record,
                "scales": {n: f for n, f in record.get("scales", {}).items() if n in shard_factors},
            }
            write_safetensors_copy(
                shard,
                shard_factors,
                folder / shard_name,
                {"weissi": json.dumps(shard_record)},
                pending.syncs,
            )
        if isinstance(checkpoint, ShardedCheckpoint):
            index = json.loads(checkpoint.path.read_text(encoding="utf-8"))
            index["metadata"] = {**(index.get("metadata") or {}), "weissi": record}
            _write_file(folder / checkpoint.path.name, _index_text(index).encode())
    except BaseException:
        pending.discard()
        raise
    return pending


def _index_text(index: Mapping[str, Any]) -> str:
    """The index as `json.dumps(indent=2)` lays it out down to the second level (one
    weight_map entry per line), with deeper values compact: indenting walks every value in
    Python, 0.2 s for the per-channel scales of a 2 GB transformer's record."""

    def entries(mapping: Mapping[str, Any], pad: str, nested: bool) -> str:
        if not mapping:
            return "{}"
        lines = [
            f"{pad}  {json.dumps(key)}: "
            + (
                entries(value, pad + "  ", False)
                if nested and isinstance(value, dict)
                else json.dumps(value)
            )
            for key, value in mapping.items()
        ]
        return "{\n" + ",\n".join(lines) + f"\n{pad}}}"

    return entries(index, "", True) + "\n"


def write_safetensors_copy(
    source: SafetensorsCheckpoint,
    factors: Mapping[str, TensorScale],
    destination: Path,
    extra_metadata: Mapping[str, str],
    syncs: list[BackgroundSync],
) -> None:
    """Same tensor order and offsets; a new header; scaled tensors streamed in chunks.
    Made durable by a BackgroundSync added to `syncs` (the caller waits for it).

    The fsyncs of files written before (earlier shards) are waited for first: an fsync
    running alongside new writes slowed a 4-shard copy from 1.8-2.0 s to 2.3-3.1 s here.
    The last file's fsync still overlaps verification."""
    for sync in syncs:
        failure = sync.wait()
        if failure is not None:
            raise failure
    entries = source.header.entries
    header: dict[str, Any] = {"__metadata__": {**source.metadata, **extra_metadata}}
    for entry in entries:
        header[entry.info.name] = {
            "dtype": entry.dtype_code,
            "shape": list(entry.info.shape),
            "data_offsets": [entry.begin, entry.end],
        }
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    new_start = 8 + len(header_bytes)
    # `destination` is always a path of this run's own (a fresh temporary).
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.write(descriptor, len(header_bytes).to_bytes(8, "little") + header_bytes)
        copies: list[list[int]] = []  # [begin, end) spans of untouched bytes
        tasks: list[_ScaleTask] = []
        for entry in sorted(entries, key=lambda e: e.begin):
            name = entry.info.name
            if name in factors:
                tasks += _scale_tasks(entry.info, factors[name], new_start + entry.begin)
            elif copies and copies[-1][1] == entry.begin:
                copies[-1][1] = entry.end
            else:
                copies.append([entry.begin, entry.end])

        stage = Stage("writing", sum(entry.end - entry.begin for entry in entries))

        def write_chunk(task: _ScaleTask, scaler: ChunkScaler) -> None:
            raw = source.read_raw(task.name, task.start, task.count, scaler.raw)
            if not _scale_in_kernel(raw, task):
                raw = scaler.scale(raw, task.dtype, task.factor, task.power_of_two)
            _write_all(descriptor, raw.data.cast("B"), task.offset)
            stage.advance(raw.nbytes)

        def copy_untouched() -> None:
            for begin, end in copies:
                _copy_range(
                    source,
                    descriptor,
                    source.header.data_start + begin,
                    new_start + begin,
                    end - begin,
                )
                stage.advance(end - begin)

        with stage:
            capacity = max((task.count for task in tasks), default=1)
            run_round_robin(
                tasks,
                lambda: ChunkScaler(capacity),
                write_chunk,
                WRITER_THREADS,
                alongside=copy_untouched,
            )
    except BaseException:
        os.close(descriptor)
        with contextlib.suppress(FileNotFoundError):
            destination.unlink()
        raise
    syncs.append(BackgroundSync(descriptor))


def _copy_range(
    source: SafetensorsCheckpoint, descriptor: int, src_offset: int, dst_offset: int, length: int
) -> None:
    """Untouched bytes, through a page-aligned buffer a piece at a time, each piece's
    write-back started at once. (copy_file_range took 1.1-2.0 s for a 0.55 GB shard on
    this VM's ext4, where this loop takes 0.56 s.)"""
    buffer = read_buffer(COPY_CHUNK_BYTES)
    view = memoryview(buffer)
    done = 0
    while done < length:
        size = min(COPY_CHUNK_BYTES, length - done)
        got = os.preadv(source.fd, [view[:size]], src_offset + done)
        if got <= 0:
            raise OutputError(f"{source.path}: file ended early while copying")
        _write_all(descriptor, view[:got], dst_offset + done)
        done += got


@dataclass(frozen=True)
class _ScaleTask:
    name: str
    dtype: str
    scale: TensorScale
    power_of_two: bool
    start: int  # first element
    count: int
    offset: int  # byte offset of the chunk in the output

    @property
    def factor(self) -> float | npt.NDArray[np.float64]:
        """The chunk's factors, made when needed: one per element when not uniform (made
        up front for every chunk, they would take twice the tensor's size in float64)."""
        if not self.scale.vectors:
            return self.scale.scalar
        width = max(self.scale.row_width, 1)
        return self.scale.rows(self.start // width, self.count // width)


def _scale_in_kernel(raw: npt.NDArray[np.generic], task: _ScaleTask) -> bool:
    """Scale a float32 or bfloat16 chunk in place by the C kernel (FMA round-to-odd, then
    one rounding: bit-identical to ChunkScaler, at about six times its speed); False, doing
    nothing, for other dtypes or without the kernel."""
    compiled = kernel.compiled
    if compiled is None or task.dtype not in kernel.DTYPE_CODES:
        return False
    arguments = task.scale.chunk_arguments(task.start, task.count)
    compiled.scale_chunk(raw, kernel.DTYPE_CODES[task.dtype], task.count, *arguments)
    return True


def _chunks(numel: int, row_width: int | None) -> list[tuple[int, int]]:
    """(first element, count): whole rows of `row_width`, or any CHUNK_ELEMENTS when None."""
    step = CHUNK_ELEMENTS
    if row_width is not None:
        step = max(1, CHUNK_ELEMENTS // max(row_width, 1)) * max(row_width, 1)
    return [(start, min(step, numel - start)) for start in range(0, numel, step)]


def _scale_tasks(info: TensorInfo, scale: TensorScale, offset: int) -> list[_ScaleTask]:
    """The chunks of one tensor: whole rows when the factor varies along the axes."""
    itemsize = raw_numpy_dtype(info.dtype).itemsize
    power_of_two = scale.is_power_of_two
    chunks = _chunks(info.numel, scale.row_width if scale.vectors else None)
    return [
        _ScaleTask(
            info.name,
            info.dtype,
            scale,
            power_of_two,
            start,
            count,
            offset + start * itemsize,
        )
        for start, count in chunks
    ]


class ChunkScaler:
    """Multiplies raw chunks by a factor, rounding once to the storage dtype."""

    def __init__(self, capacity: int) -> None:
        self.raw = read_buffer(capacity * 8)
        self.widened = np.empty(capacity, np.float32)
        self.product = np.empty(capacity, np.float64)
        self.bits = np.empty(capacity, np.uint16)

    def scale(
        self,
        raw: npt.NDArray[np.generic],
        dtype: str,
        factor: float | npt.NDArray[np.float64],
        power_of_two: bool | None = None,
    ) -> npt.NDArray[np.generic]:
        """The scaled chunk as raw storage values (may reuse `raw` and this scaler's buffers).

        `factor` is a scalar or one value per element; `power_of_two` says whether every
        factor is a power of two (worked out when not given).
        """
        count = raw.size
        if power_of_two is None:
            power_of_two = bool(np.all(np.frexp(np.asarray(factor))[0] == 0.5))
        # NaN stays NaN and overflow becomes ±inf, as in the input's own arithmetic;
        # verification reports any non-finite output, so numpy need not warn here.
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            if power_of_two:
                fast = self._scale_by_power_of_two(raw, dtype, factor)
                if fast is not None:
                    return fast
            values = decode(raw, dtype, self.widened)
            product = np.multiply(values, factor, out=self.product[:count], dtype=np.float64)
            if dtype != "float64":
                _round_product_to_odd(product, values, factor, dtype)
            return encode(product, dtype)

    def _scale_by_power_of_two(
        self, raw: npt.NDArray[np.generic], dtype: str, factor: float | npt.NDArray[np.float64]
    ) -> npt.NDArray[np.generic] | None:
        """A power of two is exact in every dtype: IEEE multiplication then rounds the exact
        product once, as the float64 route would. None where a faster route is not exact."""
        if dtype in ("float32", "float64"):
            return np.multiply(raw, factor, out=raw, casting="same_kind")  # type: ignore[no-any-return]
        values = decode(raw, dtype, self.widened)
        np.multiply(values, factor, out=values, casting="same_kind")
        if dtype == "float16":
            return values.astype(np.float16)  # the float32 product is exact here
        bits = values.view(np.uint32)
        if np.any(bits & np.uint32(0xFFFF)):
            return None  # float32 subnormals lost bits: take the exact route
        out = self.bits[: raw.size]
        np.right_shift(bits, 16, out=out, casting="unsafe")
        return out


def _write_all(descriptor: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(descriptor, data[done:], offset + done)
    start_writeback(descriptor, offset, len(data))


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), or None."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


SYNC_FILE_RANGE_WRITE = 2


def start_writeback(descriptor: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing these bytes to disk now, without waiting: the disk
    works while later chunks are computed, and the final fsync has little left to do (it
    was half of a 2 GB rewrite here). Advisory: where it is missing, fsync does it all.

    Only the pages these bytes fill whole: a page shared with the next write would be under
    write-back when that write arrives, and the write would wait for the disk (tensor data
    starts 8 + header bytes into the file, so chunks rarely end on a page; copying 2.2 GB
    took 4-6 s instead of 2)."""
    function = _sync_file_range()
    if function is None:
        return
    first = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:
        function(descriptor, first, end - first, SYNC_FILE_RANGE_WRITE)


def _write_torch(
    checkpoint: TorchCheckpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    record: Mapping[str, Any],
    drop: tuple[str, ...],
) -> PendingOutput:
    """The pickle again with the scaled tensors (parameters staying parameters), every other
    entry as it was, and the top-level entries in `drop` left out. Optimizer state must be
    among them: moments of the old weights do not fit the rescaled ones."""
    import torch

    kept_optimizer = [key for key in checkpoint.optimizer_entries if key not in drop]
    if kept_optimizer:
        raise UsageError(optimizer_state_message(checkpoint.path, tuple(kept_optimizer)))
    # An OrderedDict, like torch's own state dicts, so the record can ride in `_metadata`
    # (which load_state_dict reads per module prefix) instead of adding a key.
    state: Any = OrderedDict()
    for name, value in checkpoint.state_dict.items():
        if name in drop and checkpoint.wrapper_key is None:
            continue
        if name not in factors:
            state[name] = checkpoint.real(value)
            continue
        scaled = _scaled_torch_tensor(checkpoint, name, factors[name])
        if isinstance(value, torch.nn.Parameter):
            scaled = torch.nn.Parameter(scaled, requires_grad=value.requires_grad)
        elif value.requires_grad:
            scaled.requires_grad_()
        state[name] = scaled
    metadata = getattr(checkpoint.state_dict, "_metadata", None)
    state._metadata = OrderedDict(metadata) if metadata is not None else OrderedDict()
    state._metadata["weissi"] = dict(record)
    if checkpoint.wrapper_key is None:
        root: Any = state
    else:
        root = copy.copy(checkpoint.root)  # its own type (e.g. OrderedDict), keys in order
        for key in list(root):
            if key in drop:
                del root[key]
            else:
                root[key] = state if key == checkpoint.wrapper_key else checkpoint.real(root[key])
    return _write_with_torch(
        output,
        lambda handle: torch.save(root, handle, _use_new_zipfile_serialization=checkpoint.is_zip),
    )


def _write_with_torch(output: Path, save: Callable[[Any], None]) -> PendingOutput:
    """`save(handle)` into a fresh staged file for `output`, fsynced, pending commit."""
    pending = _pending_file(output)
    try:
        with open(pending.readable_path, "wb") as handle:
            try:
                save(handle)
            except RuntimeError as error:  # torch's writers report I/O failures this way,
                # and an interrupt raised while they call back into Python as well
                interrupts.reraise_if_interrupted()
                raise OutputError(_torch_write_failure(output, error)) from None
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        pending.discard()
        raise
    return pending


# Bits of a float64 mantissa below the rounding midpoint of each narrower dtype. Rounding
# the float64 product again can differ from rounding the exact product only where the
# float64 product is itself a midpoint (or exact), and those have all these bits clear.
_BELOW_MIDPOINT = {
    "float32": np.uint64((1 << 28) - 1),
    "float16": np.uint64((1 << 41) - 1),
    "bfloat16": np.uint64((1 << 44) - 1),
}


def _round_product_to_odd(
    product: npt.NDArray[np.float64],
    values: npt.NDArray[np.floating],
    factor: float | npt.NDArray[np.float64],
    dtype: str,
) -> None:
    """Make the float64 product `values * factor` round to a narrower `dtype` exactly as the
    exact product would (scaling rounds once), in place.

    Rounding twice differs from rounding once only where the float64 product lands on a
    midpoint of the narrower grid; those few values are replaced by the exact product
    rounded *to odd* (53 >= 24 + 2 bits, so the final rounding to nearest is then correct).
    The rounding error comes exactly from a split of the factor, f = f_hi + f_lo with f_hi
    its float32 part: x·f_hi (24 + 24 bits) and x·f_lo (24 + 29 bits) are exact in
    float64, and Fast2Sum gives the error of their sum.
    """
    bits = product.view(np.uint64)
    candidates = np.flatnonzero((bits & _BELOW_MIDPOINT[dtype]) == 0)
    if candidates.size == 0:
        return
    factors = np.broadcast_to(np.asarray(factor, dtype=np.float64), product.shape)[candidates]
    high = factors.astype(np.float32).astype(np.float64)
    low = factors - high  # zero where x·f has at most 48 bits and the product is exact
    wide = values[candidates].astype(np.float64)
    chosen = product[candidates]
    error = wide * low - (chosen - wide * high)
    inexact = (error != 0) & np.isfinite(chosen)
    # Where rounding went away from zero, step back toward zero; then make the last bit odd.
    away = inexact & (np.signbit(error) != np.signbit(chosen))
    chosen_bits = chosen.view(np.uint64)
    chosen_bits -= away.astype(np.uint64)
    chosen_bits |= inexact.astype(np.uint64)
    product[candidates] = chosen


def _write_exported(
    checkpoint: ExportedCheckpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    record: Mapping[str, Any],
) -> PendingOutput:
    """The same program with rescaled parameters: a fresh copy read the way the input was
    (nothing from the archive unpickled or run), its tensors overwritten in place, saved with
    the record as an extra file."""
    import torch

    program = checkpoint.program_to_save()
    with torch.no_grad():
        for name, scale in factors.items():
            target = (
                program.state_dict[name] if name in program.state_dict else program.constants[name]
            )
            target.copy_(_scaled_torch_tensor(checkpoint, name, scale))
    extra = {"weissi.json": json.dumps(record)}
    return _write_with_torch(
        output, lambda handle: torch.export.save(program, handle, extra_files=extra)
    )


def _write_state_dict_as_safetensors(
    checkpoint: Checkpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    record: Mapping[str, Any],
) -> PendingOutput:
    """Every float tensor (rescaled where planned) as one safetensors file."""
    from safetensors.torch import save_file

    if not isinstance(checkpoint, TensorDictCheckpoint):
        raise UsageError(f"{checkpoint.path}: --format safetensors needs a pickle or a .pt2 input")
    tensors = {
        name: (
            _scaled_torch_tensor(checkpoint, name, factors[name])
            if name in factors
            else checkpoint.tensor(name).contiguous()
        )
        for name in (info.name for info in checkpoint.tensors)
    }
    pending = _pending_file(output)
    try:
        save_file(tensors, str(pending.readable_path), metadata={"weissi": json.dumps(record)})
        with open(pending.readable_path, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        pending.discard()
        raise
    return pending


def _torch_write_failure(output: Path, error: RuntimeError) -> str:
    free = shutil.disk_usage(output.parent).free
    if free < 1 << 20:
        return f"{output}: no space left on the device ({free} bytes free); nothing was written"
    detail = str(error).strip().splitlines()[0] if str(error).strip() else "RuntimeError"
    return f"{output}: torch could not write the file ({detail}); nothing was written"


def _scaled_torch_tensor(checkpoint: TensorDictCheckpoint, name: str, scale: TensorScale) -> Any:
    import torch

    info = checkpoint.info(name)
    result = torch.empty(info.shape, dtype=getattr(torch, info.dtype))
    flat = result.reshape(-1)
    target = (
        flat.view(torch.int16).numpy().view(np.uint16)
        if result.dtype == torch.bfloat16
        else flat.numpy()
    )
    tasks = _scale_tasks(info, scale, 0)
    scaler = ChunkScaler(max((task.count for task in tasks), default=1))
    own_buffer = np.frombuffer(scaler.raw, np.uint8).ctypes.data
    for task in tasks:
        # A reader from a file fills the scaler's buffer; one holding the tensor in memory
        # gives a view of it, which is copied: the input is never scaled in place.
        raw = checkpoint.read_raw(name, task.start, task.count, scaler.raw)
        if raw.ctypes.data != own_buffer:
            raw = raw.copy()
        target[task.start : task.start + task.count] = scaler.scale(
            raw, info.dtype, task.factor, task.power_of_two
        )
    return result


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def input_files(checkpoint: Checkpoint) -> list[Path]:
    if isinstance(checkpoint, ShardedCheckpoint):
        return [checkpoint.path, *(shard.path for shard in checkpoint.shards.values())]
    if isinstance(checkpoint, OnnxCheckpoint):
        return [checkpoint.path, *checkpoint.data_files]
    return [checkpoint.path]
