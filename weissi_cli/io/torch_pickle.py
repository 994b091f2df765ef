"""Torch pickles (`.pt/.pth/.bin`), loaded only with `weights_only=True`.

A zip archive (torch.save's format since 1.6) is unpickled onto the meta device: shapes,
strides and where each storage lies in the file, no data. Tensors are then read with
`pread`, so a file that shrinks while it is read gives an error (a memory map of it would
take the process down with SIGBUS), and reading costs no memory. Legacy files, and archives
that zipfile cannot lay out, are loaded into memory whole.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import InputError, UnsafePickleError
from weissi_cli.io.checkpoint import (
    Checkpoint,
    ReadBuffer,
    TensorInfo,
    check_names,
    read_buffer,
    read_exact,
)
from weissi_cli.io.documents import MAX_NESTING
from weissi_cli.io.dtypes import raw_numpy_dtype
from weissi_cli.io.torch_archive import (
    native_byte_order,
    read_archive,
    refuse_other_archives,
    refuse_other_pickles,
    torchscript_message,
)

if TYPE_CHECKING:
    import torch

# Keys under which training scripts commonly wrap the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model")


class TensorDictCheckpoint(Checkpoint):
    """A checkpoint whose tensors are torch tensors already in memory (or mapped)."""

    def _set_tensors(
        self,
        tensors: dict[str, torch.Tensor],
        storage_key: Callable[[torch.Tensor], int] | None = None,
    ) -> None:
        self._tensors = tensors
        self.tensors = tuple(
            TensorInfo(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            for name, tensor in tensors.items()
        )
        self._shared = _shared_storage_groups(tensors, storage_key or _data_pointer)
        self._flat: dict[str, torch.Tensor] = {}

    def tensor(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def shared_storage(self, name: str) -> tuple[str, ...]:
        return self._shared.get(name, ())

    def read_raw(
        self, name: str, start: int, count: int, buffer: ReadBuffer | None = None
    ) -> npt.NDArray[np.generic]:
        import torch

        flat = self._flat.get(name)
        if flat is None:
            flat = self.tensor(name).detach().reshape(-1)  # copies only if non-contiguous
            if flat.dtype == torch.bfloat16:
                flat = flat.view(torch.int16)
            self._flat[name] = flat
        chunk = flat[start : start + count].numpy()
        is_bfloat16 = chunk.dtype == np.int16 and self.info(name).dtype == "bfloat16"
        return chunk.view(np.uint16) if is_bfloat16 else chunk


class TorchCheckpoint(TensorDictCheckpoint):
    """A state dict from a torch pickle: read from the file on demand (zip archives) or held
    in memory (legacy files)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.format = "torch"
        self._fd = -1
        self._storages: dict[int, Any] = {}  # materialised storages, by offset in the file
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as error:
            raise InputError(f"{path}: cannot open ({error.strerror})") from None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        import torch

        path = self.path
        self.is_zip = is_zip(path)
        self.file_bytes = os.fstat(self._fd).st_size
        root = None
        if self.is_zip:
            root = _load_lazily(path, self._fd)
        else:
            refuse_other_pickles(path, os.pread(self._fd, 64, 0))
        self.lazy = root is not None
        if root is None:
            root = load_weights_only(path)
            os.close(self._fd)  # everything is in memory
            self._fd = -1
        if _nesting(root) > MAX_NESTING:
            raise InputError(
                f"{path}: the pickle nests containers more than {MAX_NESTING} levels deep; "
                "save the state dict alone"
            )
        self.root = root
        self.wrapper_key, self.state_dict = find_state_dict(path, root)
        self.metadata = {}
        tensors = {
            name: value
            for name, value in self.state_dict.items()
            if isinstance(value, torch.Tensor)
        }
        check_names(path, tensors)
        for name, value in tensors.items():
            _check_tensor(path, name, value, self.lazy)
        self._set_tensors(tensors, _file_offset if self.lazy else None)
        self.non_tensor_keys = tuple(name for name in self.state_dict if name not in self._tensors)
        self.optimizer_entries = find_optimizer_state(root, self.wrapper_key)
        if self.wrapper_key is not None:
            stray = [repr(k) for k, v in self.root.items() if isinstance(v, torch.Tensor)]
            if stray:
                self.notes = (
                    f"{path.name}: the model is the state dict under {self.wrapper_key!r}; the "
                    f"top-level tensor(s) {', '.join(stray)} are not part of it (kept as they are)",
                )

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor with its values, in memory (read from the file on first use)."""
        return self.real(self._tensors[name])  # type: ignore[no-any-return]

    def real(self, value: Any) -> Any:
        """`value` (a tensor, or containers holding some) with every tensor's values read:
        storages shared in the file stay shared, parameters stay parameters."""
        import torch

        if not self.lazy:
            return value
        if isinstance(value, torch.Tensor):
            return self._real_tensor(value)
        if isinstance(value, dict | list):
            copied = copy.copy(value)  # keeps the type and attributes (a state dict's _metadata)
            for key in range(len(value)) if isinstance(value, list) else value:
                copied[key] = self.real(value[key])
            return copied
        if isinstance(value, tuple):
            return type(value)(self.real(item) for item in value)
        return value

    def _real_tensor(self, meta: torch.Tensor) -> torch.Tensor:
        import torch

        offset = _file_offset(meta)
        storage = self._storages.get(offset)
        if storage is None:
            nbytes = meta.untyped_storage().nbytes()
            values = torch.empty(nbytes, dtype=torch.uint8)
            if nbytes:
                bytes_view: Any = values.numpy()  # a buffer numpy's stubs do not declare
                read_exact(self._fd, memoryview(bytes_view), offset, self.path)
            storage = values.untyped_storage()
            self._storages[offset] = storage
        real = torch.empty(0, dtype=meta.dtype).set_(
            storage, meta.storage_offset(), meta.shape, meta.stride()
        )
        if isinstance(meta, torch.nn.Parameter):
            return torch.nn.Parameter(real, requires_grad=meta.requires_grad)
        return real.requires_grad_() if meta.requires_grad else real

    def read_raw(
        self, name: str, start: int, count: int, buffer: ReadBuffer | None = None
    ) -> npt.NDArray[np.generic]:
        place = self.locate(name)
        if place is None:
            return super().read_raw(name, start, count, buffer)
        info = self.info(name)
        if start < 0 or count < 0 or start + count > info.numel:
            raise ValueError(f"elements {start}:{start + count} are outside tensor {name!r}")
        dtype = raw_numpy_dtype(info.dtype)
        nbytes = count * dtype.itemsize
        target = read_buffer(nbytes) if buffer is None else buffer
        if len(target) < nbytes:
            raise ValueError("buffer too small for the requested chunk")
        read_exact(
            self._fd, memoryview(target)[:nbytes], place[1] + start * dtype.itemsize, self.path
        )
        return np.frombuffer(target, dtype=dtype, count=count)

    def locate(self, name: str) -> tuple[int, int, Path] | None:
        if not self.lazy:
            return None
        meta = self._tensors[name]
        if not meta.is_contiguous():
            return None
        start = _file_offset(meta) + int(meta.storage_offset()) * meta.element_size()
        return self._fd, start, self.path

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def is_zip(path: Path) -> bool:
    """zipfile.is_zipfile, except that a malformed end record (e.g. a ZIP64 locator claiming
    several disks) is "not a zip" rather than an exception."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError, struct.error):
        return False


def _load_lazily(path: Path, fd: int) -> Any:
    """The pickle's objects with every tensor on the meta device, where each storage is a
    stored record of the archive; None where that does not hold (torch then loads the file)."""
    import torch

    with os.fdopen(os.dup(fd), "rb") as handle:
        archive = read_archive(handle)
        if archive is None:
            return None
        refuse_other_archives(path, archive.names)
        if not native_byte_order(archive):
            return None  # torch swaps the bytes as it loads
        handle.seek(0)
        try:
            root = _torch_load(handle, "meta")
        except pickle.UnpicklingError as error:
            _refuse_unsafe(path, error)
            return None
        except Exception:  # noqa: BLE001 - e.g. quantized tensors have no meta form
            return None
    for tensor in _tensors_in(root):
        if tensor.layout != torch.strided or tensor.is_nested:
            return None  # no single storage to read
        storage = tensor.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        if not isinstance(offset, int) or archive.records.get(offset) != storage.nbytes():
            return None  # saved from the meta device, or a storage the archive does not hold
    return root


def load_weights_only(path: Path) -> Any:
    """`torch.load` into memory that never runs code from the file; refusals become typed
    errors."""
    try:
        return _torch_load(path, "cpu")
    except pickle.UnpicklingError as error:
        _refuse_unsafe(path, error)
        raise _unreadable(path, error) from None
    except Exception as error:  # torch's unpicklers raise many types on garbage input
        raise _unreadable(path, error) from None


def _torch_load(source: Any, location: str) -> Any:
    import torch

    # torch warns (protocol 4, TorchScript) on stderr, which is weissi's own.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location=location, weights_only=True)


def _refuse_unsafe(path: Path, error: pickle.UnpicklingError) -> None:
    offending = _offending_global(str(error))
    if offending is not None:
        raise UnsafePickleError(
            f"{path}: refused to load: the pickle references {offending}, not just tensors "
            "and plain containers, and loading it could run code; nothing in it was run. If "
            "you trust where it came from, re-save only the weights (torch.save(model."
            "state_dict(), 'weights.pt')) or convert them to safetensors."
        ) from None


# torch's advice to turn its safety off, and the links around it: never passed on.
_ADVICE = re.compile(
    r"Weights only load failed\.|In PyTorch 2\.6.*?trusted source\.|"
    r"This file can still be loaded.*?checkpoint\S*\.|Please file an issue.*?use case:|"
    r"Check the documentation of torch\.load.*|\(\d\)|Alternatively, to load.*?message\.",
    re.DOTALL,
)


def _unreadable(path: Path, error: BaseException) -> InputError:
    text = str(error)
    if "TorchScript" in text:
        return InputError(torchscript_message(path))
    if "WeightsUnpickler error:" in text:
        text = text.rsplit("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in _ADVICE.sub("", text).splitlines()]
    detail = next((line for line in lines if line and "weights_only" not in line), "")
    if len(detail) < 12:
        detail = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return InputError(
        f"{path}: not a readable torch checkpoint; it may be truncated, corrupt, or not a torch "
        f"file (torch says: {detail})"
    )


def _check_tensor(path: Path, name: str, tensor: torch.Tensor, lazy: bool) -> None:
    """Refuse tensors that hold no dense values on the CPU (weissi reads and writes those)."""
    import torch

    if tensor.layout != torch.strided:
        kind = str(tensor.layout).removeprefix("torch.")
        raise InputError(
            f"{path}: tensor {name!r} is a {kind} (sparse) tensor; weissi reads dense tensors: "
            "save it with .to_dense()"
        )
    if tensor.is_nested:
        raise InputError(
            f"{path}: tensor {name!r} is a nested tensor; weissi reads dense tensors: save its "
            "components as separate tensors"
        )
    if not lazy and tensor.is_meta:
        raise InputError(
            f"{path}: tensor {name!r} is a meta tensor: it has a shape but no values (saved "
            "before the model was materialised?)"
        )


def find_state_dict(path: Path, root: Any) -> tuple[str | None, Mapping[str, Any]]:
    """The state dict itself, or the one a training checkpoint wraps (and under which key)."""
    import torch

    def holds_tensors(value: Any) -> bool:
        return isinstance(value, Mapping) and any(
            isinstance(item, torch.Tensor) for item in value.values()
        )

    # A training checkpoint may also hold stray tensors (a metric, a step counter) at the top
    # level: the wrapped state dict is the model, so look for it first.
    if isinstance(root, Mapping):
        for key in WRAPPER_KEYS:
            if holds_tensors(root.get(key)):
                return key, root[key]
    if holds_tensors(root):
        if not all(isinstance(key, str) for key in root):
            raise InputError(f"{path}: the state dict has non-string keys")
        return None, root
    if isinstance(root, Mapping):
        keys = ", ".join(repr(key) for key in list(root)[:10])
        raise InputError(
            f"{path}: no state dict found: top-level keys are {keys or 'none'}; expected tensors, "
            f"or a dict of tensors under one of {', '.join(WRAPPER_KEYS)}"
        )
    raise InputError(
        f"{path}: holds a {type(root).__name__}, not a state dict; save model.state_dict() instead"
    )


def find_optimizer_state(root: Any, wrapper_key: str | None) -> tuple[str, ...]:
    """The top-level entries of a training checkpoint that hold optimizer state (a
    `torch.optim` state dict: "state" and "param_groups"), at any depth inside them."""
    if not isinstance(root, Mapping):
        return ()
    return tuple(
        key
        for key, value in root.items()
        if key != wrapper_key and any(_is_optimizer_state(item) for item in _containers_in(value))
    )


def optimizer_state_message(path: Path, entries: tuple[str, ...]) -> str:
    keys = ", ".join(repr(key) for key in entries)
    return (
        f"{path}: a training checkpoint whose {keys} hold(s) optimizer state (e.g. Adam "
        "moments), which does not fit rescaled weights; pass --drop-optimizer-state to write "
        "the rebalanced weights without it, or --format safetensors for the weights alone"
    )


def _is_optimizer_state(value: Any) -> bool:
    return isinstance(value, Mapping) and "state" in value and "param_groups" in value


def _containers_in(value: Any) -> Iterator[Any]:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, Mapping):
            yield item
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            yield item
            pending.extend(item)


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    import torch

    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)


def _nesting(value: Any) -> int:
    """How many containers deep a pickle's objects go, stopping past MAX_NESTING."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_NESTING:
            break
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _file_offset(tensor: torch.Tensor) -> int:
    """Where a lazily loaded tensor's storage starts in its file."""
    return int(tensor.untyped_storage()._checkpoint_offset)  # type: ignore[arg-type]


def _data_pointer(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage().data_ptr())


def _shared_storage_groups(
    tensors: Mapping[str, torch.Tensor], storage_key: Callable[[torch.Tensor], int]
) -> dict[str, tuple[str, ...]]:
    by_storage: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.numel() == 0:
            continue
        by_storage.setdefault(storage_key(tensor), []).append(name)
    shared: dict[str, tuple[str, ...]] = {}
    for names in by_storage.values():
        if len(names) > 1:
            for name in names:
                shared[name] = tuple(other for other in names if other != name)
    return shared


def _offending_global(text: str) -> str | None:
    """The global a weights-only load refused (`module.name`), if that was the refusal."""
    match = re.search(r"GLOBAL ([\w.]+)", text)
    return match.group(1).rstrip(".") if match else None
