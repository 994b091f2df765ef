"""ONNX models (`.onnx`, or a folder holding one with its external data): initializers as
the checkpoint's tensors, read chunk by chunk from where they lie in the files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import InputError
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, TensorInfo, read_buffer, read_exact
from weissi_cli.io.dtypes import ITEMSIZE, raw_numpy_dtype
from weissi_cli.io.onnx_model import (
    MAX_TYPED_ELEMENTS,
    Initializer,
    OnnxModel,
    parse_model,
    typed_values,
)
from weissi_cli.io.onnx_proto import ProtoError


class OnnxCheckpoint(Checkpoint):
    """A model's initializers, in the order the graph lists them; `model` is the parsed
    graph (the structure front-end and the writer read it)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.format = "onnx"
        self._fds: dict[Path, int] = {}
        try:
            self._fds[path] = _open(path)
            self.model: OnnxModel = parse_model(path, self._fds[path])
            for file in self.model.data_files.values():
                if file not in self._fds:
                    self._fds[file] = _open(file)
            self._check_files()
        except BaseException:
            self.close()
            raise
        self._initializers = {i.name: i for i in self.model.initializers}
        self._decoded: dict[str, npt.NDArray[np.generic]] = {}
        self.tensors = tuple(TensorInfo(i.name, i.dims, i.dtype) for i in self.model.initializers)
        self.metadata = dict(self.model.metadata)
        self.file_bytes = self.model.size + sum(
            os.fstat(fd).st_size for file, fd in self._fds.items() if file != path
        )
        self.notes = tuple(self.model.notes)

    def _check_files(self) -> None:
        """Each external file opened is the one that was checked (not swapped since), and
        holds the bytes its tensors need."""
        for initializer in self.model.initializers:
            if initializer.storage != "external":
                continue
            size = os.fstat(self._fds[initializer.file]).st_size
            if initializer.offset + initializer.length > size:
                raise InputError(
                    f"{self.path}: tensor {initializer.name!r} needs bytes up to "
                    f"{initializer.offset + initializer.length} of {initializer.file.name}, "
                    f"which holds {size} (truncated?)"
                )

    def initializer(self, name: str) -> Initializer:
        return self._initializers[name]

    @property
    def data_files(self) -> list[Path]:
        """The external data files the model reads, in the order they were first named."""
        return list(dict.fromkeys(self.model.data_files.values()))

    def locate(self, name: str) -> tuple[int, int, Path] | None:
        initializer = self._initializers[name]
        if initializer.storage == "decoded" or initializer.dtype not in ITEMSIZE:
            return None
        return self._fds[initializer.file], initializer.offset, initializer.file

    def read_raw(
        self, name: str, start: int, count: int, buffer: ReadBuffer | None = None
    ) -> npt.NDArray[np.generic]:
        initializer = self._initializers[name]
        if start < 0 or count < 0 or start + count > initializer.numel:
            raise ValueError(f"elements {start}:{start + count} are outside tensor {name!r}")
        dtype = raw_numpy_dtype(initializer.dtype)
        if initializer.storage == "decoded":
            values = self._decoded_values(initializer)
            return values[start : start + count]
        nbytes = count * dtype.itemsize
        target = read_buffer(nbytes) if buffer is None else buffer
        if len(target) < nbytes:
            raise ValueError("buffer too small for the requested chunk")
        read_exact(
            self._fds[initializer.file],
            memoryview(target)[:nbytes],
            initializer.offset + start * dtype.itemsize,
            initializer.file,
        )
        return np.frombuffer(target, dtype=dtype, count=count)

    def _decoded_values(self, initializer: Initializer) -> npt.NDArray[np.generic]:
        found = self._decoded.get(initializer.name)
        if found is None:
            try:
                values = typed_values(
                    self.model.data, initializer.message, initializer.dtype, MAX_TYPED_ELEMENTS
                )
            except (ProtoError, OverflowError, ValueError) as error:
                raise InputError(
                    f"{self.path}: tensor {initializer.name!r} cannot be decoded ({error})"
                ) from None
            if values.size != initializer.numel:
                raise InputError(
                    f"{self.path}: tensor {initializer.name!r} holds {values.size} values for "
                    f"shape {initializer.dims}"
                )
            found = values.view(raw_numpy_dtype(initializer.dtype)).reshape(-1)
            self._decoded[initializer.name] = found
        return found

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise InputError(f"{path}: cannot open ({error.strerror})") from None
    if not _is_regular(fd):
        os.close(fd)
        raise InputError(f"{path}: not a regular file")
    return fd


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)
