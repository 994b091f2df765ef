"""Torch pickles (`.pt/.pth/.bin`), loaded only with `weights_only=True`."""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import InputError, UnsafePickleError
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, TensorInfo

if TYPE_CHECKING:
    import torch

# Keys under which training scripts commonly wrap the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model")


class TensorDictCheckpoint(Checkpoint):
    """A checkpoint whose tensors are torch tensors already in memory (or mapped)."""

    def _set_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors
        self.tensors = tuple(
            TensorInfo(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            for name, tensor in tensors.items()
        )
        self._shared = _shared_storage_groups(tensors)
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
            flat = self._tensors[name].detach().reshape(-1)  # copies only if non-contiguous
            if flat.dtype == torch.bfloat16:
                flat = flat.view(torch.int16)
            self._flat[name] = flat
        chunk = flat[start : start + count].numpy()
        is_bfloat16 = chunk.dtype == np.int16 and self.info(name).dtype == "bfloat16"
        return chunk.view(np.uint16) if is_bfloat16 else chunk


class TorchCheckpoint(TensorDictCheckpoint):
    """A state dict loaded from a torch pickle (memory-mapped where the format allows)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import torch

        self.path = path
        self.format = "torch"
        self.is_zip = is_zip(path)
        self.root = load_weights_only(path, mmap=self.is_zip)
        self.wrapper_key, self.state_dict = find_state_dict(path, self.root)
        self.file_bytes = path.stat().st_size
        self.metadata = {}
        self._set_tensors(
            {
                name: value
                for name, value in self.state_dict.items()
                if isinstance(value, torch.Tensor)
            }
        )
        self.non_tensor_keys = tuple(name for name in self.state_dict if name not in self._tensors)
        if self.wrapper_key is not None:
            stray = [repr(k) for k, v in self.root.items() if isinstance(v, torch.Tensor)]
            if stray:
                self.notes = (
                    f"{path.name}: the model is the state dict under {self.wrapper_key!r}; the "
                    f"top-level tensor(s) {', '.join(stray)} are not part of it (kept as they are)",
                )


def is_zip(path: Path) -> bool:
    """zipfile.is_zipfile, except that a malformed end record (e.g. a ZIP64 locator claiming
    several disks) is "not a zip" rather than an exception."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError, struct.error):
        return False


def load_weights_only(path: Path, mmap: bool) -> Any:
    """`torch.load` that never runs code from the file; refusals become typed errors."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        offending = _offending_global(str(error))
        if offending is not None:
            raise UnsafePickleError(
                f"{path}: refused to load: the pickle references {offending}, not just tensors "
                "and plain containers, and loading it could run code; nothing in it was run. If "
                "you trust where it came from, re-save only the weights (torch.save(model."
                "state_dict(), 'weights.pt')) or convert them to safetensors."
            ) from None
        raise _unreadable(path, error) from None
    except Exception as error:  # torch's unpicklers raise many types on garbage input
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: BaseException) -> InputError:
    detail = _first_line(str(error).removeprefix("Weights only load failed."))
    if len(detail) < 12:
        detail = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return InputError(
        f"{path}: not a readable torch checkpoint; it may be truncated, corrupt, or not a torch "
        f"file (torch says: {detail})"
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


def _shared_storage_groups(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, ...]]:
    by_storage: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.numel() == 0:
            continue
        by_storage.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
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


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
