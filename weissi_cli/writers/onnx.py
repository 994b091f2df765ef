"""Writing a rescaled ONNX model: the input's bytes, with only the rescaled initializers'
data rewritten (same dtype, same length) and the applied scales added to `metadata_props`.

Everything else (the graph, node order, names, opset, every untouched initializer) is
copied byte for byte. A model written as a file beside its input gets its external data in
files of its own (`<output>.data`, `<output>.data.1`, ... with the input's layout: the same
offsets), and only the `location` entries that name them are re-encoded, together with the
lengths of the messages that hold them. A model folder is written as a folder whose files
keep their names. Nothing is in place before `PendingOutput.commit`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weissi_cli.errors import UsageError
from weissi_cli.io import Checkpoint
from weissi_cli.io.onnx_file import OnnxCheckpoint
from weissi_cli.io.onnx_proto import Message, encode_entry, encode_varint
from weissi_cli.model_folder import companion_files, copy_companions
from weissi_cli.output_files import (
    Staging,
    check_file_destination,
    fsync_directory,
    output_error,
    rename_noreplace,
)
from weissi_cli.progress import Stage
from weissi_cli.scales import TensorScale
from weissi_cli.writers import disk, scaling
from weissi_cli.writers.options import WriteOptions
from weissi_cli.writers.pending import BackgroundSync, PendingOutput
from weissi_cli.writers.scaling import ScaleTask

RECORD_KEY = "weissi"
METADATA_FIELD = 14  # ModelProto.metadata_props


@dataclass(frozen=True)
class Copy:
    source: int  # offset in the source file
    length: int


@dataclass(frozen=True)
class Literal:
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Scaled:
    name: str
    source: int
    length: int


Segment = Copy | Literal | Scaled


@dataclass
class OnnxPendingOutput(PendingOutput):
    """A pending model file with data files staged beside it: on commit the data files go
    in place first, so the model never names data that is not there."""

    sidecars: list[tuple[Path, Path]] = field(default_factory=list)  # (staged, destination)

    def commit(self) -> None:
        try:
            self._wait_for_syncs()
            for staged, destination in self.sidecars:
                if self.force:
                    os.replace(staged, destination)
                else:
                    rename_noreplace(staged, destination)
            if self.sidecars:
                fsync_directory(self.destination.parent)
        except OSError as error:
            self.discard()
            raise output_error(self.destination, error) from None
        super().commit()


def data_names(output: Path, count: int) -> list[str]:
    """The data file names of a model written as `output`."""
    return [f"{output.name}.data" + (f".{index}" if index else "") for index in range(count)]


def write(
    checkpoint: Checkpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    options: WriteOptions,
) -> PendingOutput:
    """Write the rescaled model to `output` (a file, or a folder when `options.folder`)."""
    if not isinstance(checkpoint, OnnxCheckpoint):
        raise TypeError(f"{checkpoint.path}: not an ONNX model")
    record, folder, force = options.record, options.folder, options.force
    for name in factors:
        if checkpoint.initializer(name).storage == "decoded":
            raise UsageError(
                f"{checkpoint.path}: initializer {name!r} stores its values as varints, whose "
                "length changes when they are rescaled; save the model with raw_data "
                "(onnx.save does) and rebalance that"
            )
    inputs = [checkpoint.path, *checkpoint.data_files]
    if folder:
        staging = Staging(output, folder=True)
        pending: PendingOutput = PendingOutput(output, staging.item / checkpoint.path.name, staging)
        locations: dict[Path, str] = {}
    else:
        names = data_names(output, len(checkpoint.data_files))
        for name in names:  # before anything is staged: a refusal leaves nothing behind
            check_file_destination(output.parent / name, force, protect=inputs)
        staging = Staging(output, folder=False)
        locations = dict(zip(checkpoint.data_files, names, strict=True))
        sidecars = [(staging.item.parent / n, output.parent / n) for n in names]
        pending = OnnxPendingOutput(output, staging.item, staging, sidecars=sidecars)
    try:
        if folder:
            found = companion_files(checkpoint.path.parent, inputs)
            pending.left_out = found.weights
            if found.special:
                pending.notes.append(
                    f"not copied into {output}: special files of the input folder "
                    f"({', '.join(found.special)})"
                )
            copy_companions(found.copied, staging.item)
        inline = _write_model(
            checkpoint, factors, pending.readable_path, record, locations, pending
        )
        placed: dict[str, tuple[Path, int]] = {}
        for file in checkpoint.data_files:
            if folder:
                target = staging.item / file.relative_to(checkpoint.path.parent.resolve())
                target.parent.mkdir(parents=True, exist_ok=True)
            else:
                target = staging.item.parent / locations[file]
            segments = _scaled_spans(checkpoint, factors, file, [Copy(0, os.path.getsize(file))])
            for name, offset in _write_segments(
                checkpoint, factors, file, segments, target, pending
            ).items():
                placed[name] = (target, offset)
        placed.update({name: (pending.readable_path, offset) for name, offset in inline.items()})
        _check_places(pending.readable_path, placed)
    except OSError as error:
        pending.discard()
        raise output_error(output, error) from None
    except BaseException:
        pending.discard()
        raise
    return pending


def _write_model(
    checkpoint: OnnxCheckpoint,
    factors: Mapping[str, TensorScale],
    destination: Path,
    record: Mapping[str, Any],
    locations: Mapping[Path, str],
    pending: PendingOutput,
) -> dict[str, int]:
    """Write the model file; where each rescaled tensor it holds went."""
    model = checkpoint.model
    replaced: dict[int, bytes | None] = {}
    for entry in model.root.all("metadata_props"):
        if entry.one("key") == RECORD_KEY:
            replaced[id(entry)] = None  # the record of an earlier rebalance gives way
    if locations:
        for tensor in _external_tensors(model.root):
            for entry in tensor.all("external_data"):
                if entry.one("key") != "location":
                    continue
                file = model.data_files[str(entry.one("value"))]
                replaced[id(entry)] = _entry_payload("location", locations[file])
    segments = _emit(model.root, replaced)
    segments.append(Literal(encode_entry(METADATA_FIELD, RECORD_KEY, json.dumps(record))))
    segments = _scaled_spans(checkpoint, factors, checkpoint.path, segments)
    return _write_segments(checkpoint, factors, checkpoint.path, segments, destination, pending)


def _check_places(model: Path, placed: Mapping[str, tuple[Path, int]]) -> None:
    """The written model, read as any reader reads it, finds each rescaled tensor where it
    was written (so the values checked as written are the ones it reads)."""
    from weissi_cli.io.onnx_file import OnnxCheckpoint

    with OnnxCheckpoint(model) as written:
        for name, (file, offset) in placed.items():
            found = written.initializer(name)  # type: ignore[attr-defined]
            if (found.file.resolve(), found.offset) != (file.resolve(), offset):
                raise RuntimeError(
                    f"{model}: {name} was written at {file.name}:{offset}, but the model "
                    f"places it at {found.file.name}:{found.offset}"
                )


def _entry_payload(key: str, value: str) -> bytes:
    entry = encode_entry(1, key, value)
    # encode_entry wraps the payload in a field; the payload alone follows its length
    _, after_tag = _varint(entry, 0)
    _, start = _varint(entry, after_tag)
    return entry[start:]


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, offset


def _external_tensors(root: Message) -> list[Message]:
    found = []
    stack = [root]
    while stack:
        current = stack.pop()
        for child in current.children():
            if child.kind == "Tensor":
                if child.all("external_data"):
                    found.append(child)
            else:
                stack.append(child)
    return found


def _emit(message: Message, replaced: Mapping[int, bytes | None]) -> list[Segment]:
    """The message's payload as segments: copies of the source, except the messages in
    `replaced` (new payloads; None drops them) and the lengths of those that hold them."""
    dirty: set[int] = set()

    def mark(current: Message) -> bool:
        found = id(current) in replaced
        for child in current.children():
            found = mark(child) or found
        if found:
            dirty.add(id(current))
        return found

    mark(message)
    return _payload(message, replaced, dirty)


def _payload(
    message: Message, replaced: Mapping[int, bytes | None], dirty: set[int]
) -> list[Segment]:
    segments: list[Segment] = []
    position = message.start
    changed = sorted(
        (child for child in message.children() if id(child) in dirty), key=lambda c: c.tag
    )
    for child in changed:
        segments.append(Copy(position, child.tag - position))
        if id(child) in replaced:
            payload = replaced[id(child)]
            if payload is not None:
                segments.append(Literal(_header(child.number, len(payload)) + payload))
        else:
            inner = _payload(child, replaced, dirty)
            length = sum(segment.length for segment in inner)
            segments.append(Literal(_header(child.number, length)))
            segments += inner
        position = child.end
    segments.append(Copy(position, message.end - position))
    return [s for s in segments if s.length]


def _header(number: int, length: int) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(length)


def _scaled_spans(
    checkpoint: OnnxCheckpoint,
    factors: Mapping[str, TensorScale],
    file: Path,
    segments: list[Segment],
) -> list[Segment]:
    """`segments` with the data of each rescaled tensor stored in `file` cut out of the
    copies and marked for scaling."""
    spans = sorted(
        (i.offset, i.length, name)
        for name in factors
        if (i := checkpoint.initializer(name)).file == file
    )
    result: list[Segment] = []
    for segment in segments:
        if not isinstance(segment, Copy):
            result.append(segment)
            continue
        position, end = segment.source, segment.source + segment.length
        for offset, length, name in spans:
            if offset >= end or offset + length <= position:
                continue
            if offset < position or offset + length > end:
                raise RuntimeError(f"{name}: its data straddles a re-encoded field")
            if offset > position:
                result.append(Copy(position, offset - position))
            result.append(Scaled(name, offset, length))
            position = offset + length
        if end > position:
            result.append(Copy(position, end - position))
    return result


def _write_segments(
    checkpoint: OnnxCheckpoint,
    factors: Mapping[str, TensorScale],
    source: Path,
    segments: list[Segment],
    destination: Path,
    pending: PendingOutput,
) -> dict[str, int]:
    """Write `segments` into a new file: copies and literals on this thread, scaled
    tensors chunk by chunk on the writer threads. Where each scaled tensor went."""
    size = sum(segment.length for segment in segments)
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        tasks: list[ScaleTask] = []
        plain: list[tuple[int, Segment]] = []
        places: dict[str, int] = {}
        offset = 0
        for segment in segments:
            if isinstance(segment, Scaled):
                info = checkpoint.info(segment.name)
                tasks += scaling.scale_tasks(info, factors[segment.name], offset)
                places[segment.name] = offset
            else:
                plain.append((offset, segment))
            offset += segment.length
        source_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        stage = Stage("writing", size)

        def write_plain() -> None:
            for at, segment in plain:
                if isinstance(segment, Literal):
                    disk.write_all(descriptor, memoryview(segment.data), at)
                else:
                    assert isinstance(segment, Copy)
                    disk.copy_range(
                        source_fd, source, descriptor, segment.source, at, segment.length
                    )
                stage.advance(segment.length)

        try:
            with stage:
                scaling.write_scaled(checkpoint, tasks, descriptor, stage, write_plain)
        finally:
            os.close(source_fd)
    except BaseException:
        os.close(descriptor)
        raise
    pending.syncs.append(BackgroundSync(descriptor))
    return places
