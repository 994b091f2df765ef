"""Single `.safetensors` files: a strict header parser and chunked `preadv` reads."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import InputError
from weissi_cli.io.checkpoint import (
    Checkpoint,
    ReadBuffer,
    TensorInfo,
    natural_key,
    read_buffer,
    read_exact,
)
from weissi_cli.io.documents import parse_json
from weissi_cli.io.dtypes import SAFETENSORS_BITS, SAFETENSORS_NAMES, raw_numpy_dtype

# The reference implementation refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000
STORAGE_NAMES = {name: code for code, name in SAFETENSORS_NAMES.items()}


@dataclass(frozen=True)
class SafetensorsEntry:
    """A tensor's header entry: description plus its byte range in the data section."""

    info: TensorInfo
    dtype_code: str
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed and validated safetensors header."""

    entries: tuple[SafetensorsEntry, ...]  # in the file's header order
    metadata: dict[str, str]
    data_start: int  # 8 + header length
    file_size: int


def parse_header(path: Path, fd: int) -> SafetensorsHeader:
    """Read and validate the header of an open safetensors file."""
    file_size = os.fstat(fd).st_size
    if file_size < 8:
        raise InputError(
            f"{path}: not a safetensors file ({file_size} bytes, too short for a header)"
        )
    (header_length,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if header_length > MAX_HEADER_BYTES or header_length > file_size - 8:
        raise InputError(
            f"{path}: corrupt safetensors header (declares {header_length} header bytes in a "
            f"{file_size}-byte file); the file is truncated or not safetensors"
        )
    raw_header = os.pread(fd, header_length, 8)
    try:
        header = parse_json(raw_header, f"{path}: corrupt safetensors header", _refuse_duplicates)
    except _DuplicateKeyError as error:
        raise InputError(f"{path}: corrupt safetensors header (not valid JSON: {error})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (JSON is not an object)")
    data_start = 8 + header_length
    metadata = _parse_metadata(path, header.pop("__metadata__", None))
    entries = [_parse_entry(path, name, value) for name, value in header.items()]
    _check_layout(path, entries, file_size - data_start)
    return SafetensorsHeader(tuple(entries), metadata, data_start, file_size)


class _DuplicateKeyError(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"name {key!r} appears twice")
        result[key] = value
    return result


def _parse_metadata(path: Path, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise InputError(
            f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)"
        )
    return dict(value)


def _parse_entry(path: Path, name: str, value: Any) -> SafetensorsEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(value, dict):
        raise InputError(f"{where}: header entry is not an object")
    code = value.get("dtype")
    shape = value.get("shape")
    offsets = value.get("data_offsets")
    if not isinstance(code, str):
        raise InputError(f"{where}: header entry has no dtype")
    if code not in SAFETENSORS_NAMES:
        raise InputError(
            f"{where}: dtype {code!r} is not a safetensors dtype (the format defines "
            f"{', '.join(SAFETENSORS_NAMES)})"
        )
    if not isinstance(shape, list) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape
    ):
        raise InputError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InputError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end")
    info = TensorInfo(name, tuple(shape), SAFETENSORS_NAMES[code])
    bits = info.numel * SAFETENSORS_BITS[code]
    if bits % 8:
        raise InputError(
            f"{where}: shape {tuple(shape)} of {code} ends inside a byte ({bits} bits); the "
            "format stores whole bytes"
        )
    length = offsets[1] - offsets[0]
    if length != bits // 8:
        raise InputError(
            f"{where}: shape {tuple(shape)} of {code} needs {bits // 8} bytes but data_offsets "
            f"span {length}"
        )
    return SafetensorsEntry(info, code, offsets[0], offsets[1])


def _check_layout(path: Path, entries: list[SafetensorsEntry], data_bytes: int) -> None:
    """Tensors must tile the data section exactly: no overlap, no gap, nothing past the end."""
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin < position:
            raise InputError(f"{path}: tensor {entry.info.name!r} overlaps the tensor before it")
        if entry.begin > position:
            raise InputError(
                f"{path}: corrupt safetensors file (unused bytes {position}..{entry.begin} "
                f"before tensor {entry.info.name!r})"
            )
        position = entry.end
    if position > data_bytes:
        raise InputError(
            f"{path}: truncated safetensors file (tensors need {position} data bytes, the file "
            f"has {data_bytes})"
        )
    if position < data_bytes:
        raise InputError(
            f"{path}: corrupt safetensors file "
            f"({data_bytes - position} bytes after the last tensor)"
        )


class SafetensorsCheckpoint(Checkpoint):
    """A single safetensors file, read tensor by tensor and chunk by chunk."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.format = "safetensors"
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as error:
            raise InputError(f"{path}: cannot open ({error.strerror})") from None
        try:
            self.header = parse_header(path, self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self.metadata = self.header.metadata
        self.file_bytes = self.header.file_size
        self._entries = {entry.info.name: entry for entry in self.header.entries}
        self.tensors = tuple(
            sorted((entry.info for entry in self.header.entries), key=lambda t: natural_key(t.name))
        )

    @property
    def fd(self) -> int:
        return self._fd

    def entry(self, name: str) -> SafetensorsEntry:
        return self._entries[name]

    def locate(self, name: str) -> tuple[int, int, Path] | None:
        return self._fd, self.header.data_start + self._entries[name].begin, self.path

    def read_raw(
        self, name: str, start: int, count: int, buffer: ReadBuffer | None = None
    ) -> npt.NDArray[np.generic]:
        entry = self._entries[name]
        if start < 0 or count < 0 or start + count > entry.info.numel:
            raise ValueError(f"elements {start}:{start + count} are outside tensor {name!r}")
        dtype = raw_numpy_dtype(entry.info.dtype)
        nbytes = count * dtype.itemsize
        target = read_buffer(nbytes) if buffer is None else buffer
        if len(target) < nbytes:
            raise ValueError("buffer too small for the requested chunk")
        view = memoryview(target)[:nbytes]
        read_exact(
            self._fd, view, self.header.data_start + entry.begin + start * dtype.itemsize, self.path
        )
        return np.frombuffer(target, dtype=dtype, count=count)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
