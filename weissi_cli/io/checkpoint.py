"""The format-independent view of a checkpoint: tensor descriptions and raw chunk reads."""

from __future__ import annotations

import mmap
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import InputError
from weissi_cli.io.documents import check_nesting, parse_json
from weissi_cli.io.dtypes import BITS, ITEMSIZE, is_supported_float, raw_numpy_dtype

ReadBuffer = bytearray | mmap.mmap


def read_buffer(nbytes: int) -> mmap.mmap:
    """A page-aligned buffer of `nbytes` for `read_raw`.

    The kernel's copy into user memory (`preadv`) ran 5-6x slower on this AMD machine
    when the destination sat 16 bytes off a 32-byte boundary, which is where malloc puts
    a `bytearray`: 1.2 s instead of 0.2 s for 2.2 GB. An anonymous map starts on a page.
    """
    return mmap.mmap(-1, max(nbytes, 1))


def ended_early(path: Path) -> InputError:
    """The error for a file that ends before the data its header promises."""
    return InputError(f"{path}: file ended early (truncated while reading?)")


def read_exact(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill `view` from `offset`, or fail naming the file if it ends early."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise ended_early(path)
        done += got


def check_names(path: Path, names: Iterable[str]) -> None:
    """Refuse a tensor name that is not Unicode text (a lone surrogate, which a pickle can
    hold): no output format, spec file or terminal can carry it."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{path}: tensor name {name!r} holds a lone surrogate, which is not Unicode "
                "text; rename the tensor"
            ) from None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint, described without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def itemsize(self) -> int:
        return ITEMSIZE.get(self.dtype, 0)

    @property
    def nbytes(self) -> int:
        return self.numel * BITS.get(self.dtype, 0) // 8

    @property
    def is_supported_float(self) -> bool:
        return is_supported_float(self.dtype)


class Checkpoint(ABC):
    """A checkpoint opened for reading; tensors are read lazily, chunk by chunk.

    `tensors` is in *discovery order*: state-dict order for pickles, natural-sort name
    order for safetensors (whose files order tensors by dtype and name).
    """

    path: Path
    format: str
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    file_bytes: int
    notes: tuple[str, ...] = ()  # what the reader decided that a user should know

    def __init__(self) -> None:
        self._by_name: dict[str, TensorInfo] | None = None

    def info(self, name: str) -> TensorInfo:
        if self._by_name is None:
            self._by_name = {tensor.name: tensor for tensor in self.tensors}
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        if self._by_name is None:
            self._by_name = {tensor.name: tensor for tensor in self.tensors}
        return name in self._by_name

    @property
    def parameter_count(self) -> int:
        return sum(tensor.numel for tensor in self.tensors)

    def shared_storage(self, name: str) -> tuple[str, ...]:
        """Other tensors that share memory with `name` (tied weights in pickles)."""
        return ()

    @abstractmethod
    def read_raw(
        self, name: str, start: int, count: int, buffer: ReadBuffer | None = None
    ) -> npt.NDArray[np.generic]:
        """Elements `start:start+count` of the flattened tensor as raw storage values.

        With a `buffer`, the result may be a view into it, valid until the buffer is
        reused. bfloat16 comes back as uint16 bits (see `dtypes.decode`).
        """

    def locate(self, name: str) -> tuple[int, int, Path] | None:
        """(open file descriptor, byte offset of the tensor's first element, file) when the
        tensor lies contiguously in a file in its storage layout, so that the compiled kernel
        can read it itself; None otherwise."""
        return None

    def read_all(self, name: str) -> npt.NDArray[np.generic]:
        """The whole tensor as raw storage values (for small tensors only)."""
        info = self.info(name)
        return self.read_raw(name, 0, info.numel).reshape(info.shape)

    def close(self) -> None:  # noqa: B027 - formats without resources need not override
        """Release files and maps."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders `net.2` before `net.10`."""
    # re.split with a group alternates text and digit runs: odd positions are numbers,
    # ordered by value as (length without leading zeros, digits): int() would refuse a run
    # longer than Python's int-string limit.
    parts = re.split(r"(\d+)", name)
    return tuple(_number_key(part) if index % 2 else part for index, part in enumerate(parts))


def _number_key(digits: str) -> tuple[int, str]:
    value = digits.lstrip("0")
    return len(value), value


def empty_raw(dtype: str) -> npt.NDArray[np.generic]:
    return np.empty(0, raw_numpy_dtype(dtype))


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file beside a checkpoint (an index, a config), or exit 2 naming it; nested at
    most MAX_NESTING levels deep, as weissi keeps it and may write it back."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    document = parse_json(raw, f"{path}: malformed {what}")
    check_nesting(document, f"{path}: malformed {what}")
    return document
