"""`torch.export` programs (`.pt2`): their parameters and buffers, and the program itself.

`torch.export.load` unpickles parts of the archive (example inputs, some weights) and falls
back to `weights_only=False` when a safe load fails, which runs code from the file. So the
archive is checked first: every pickled member must load with `weights_only=True`, or the
file is refused before torch sees it.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError, UnsafePickleError
from weissi_cli.io.torch_pickle import TensorDictCheckpoint, is_zip


def check_archive(path: Path) -> None:
    """Refuse a .pt2 whose pickled parts are not plain tensors and containers.

    What torch unpickles is decided by each member's role, not by its first bytes: example
    inputs (`data/sample_inputs/`) and every config entry marked `use_pickle` are pickles and
    must pass a `weights_only` load; entries not marked are raw tensor bytes, never
    unpickled; any other member under `data/` has no known role and must pass too.
    """
    if not is_zip(path):
        raise InputError(f"{path}: not a torch.export archive (not a zip file); truncated?")
    import torch

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            raw: set[str] = set()
            pickled: set[str] = set()
            for config_name in (name for name in names if name.endswith("_config.json")):
                config = json.loads(archive.read(config_name)).get("config", {})
                folder = config_name.rpartition("/")[0]
                for fqn, entry in config.items():
                    if not isinstance(entry, dict):
                        raise UnsafePickleError(
                            f"{path}: refused to load: constant {fqn!r} is not a tensor entry"
                        )
                    member = f"{folder}/{entry.get('path_name')}"
                    (pickled if entry.get("use_pickle") else raw).add(member)
            for name in names:
                parts = name.split("/")
                in_data = "data" in parts[:-1]
                is_config = name.endswith("_config.json")
                if name in pickled or (in_data and not is_config and name not in raw):
                    _load_safely(path, name, archive.read(name), torch)
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, OSError, AttributeError) as error:
        raise InputError(f"{path}: corrupt torch.export archive ({error})") from None


def _load_safely(path: Path, member: str, data: bytes, torch: Any) -> None:
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise UnsafePickleError(
            f"{path}: refused to load: {member} inside the archive is a pickle that "
            f"weights_only loading refuses ({str(error).strip().splitlines()[0][:120]}); "
            "torch.export.load would run code from it. Nothing in it was run. Re-export the "
            "model yourself if you trust its source."
        ) from None


class ExportedCheckpoint(TensorDictCheckpoint):
    """An exported program: parameters, buffers and lifted constants by their state-dict
    names, plus the program (its graph gives the structure, and it can be run)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        check_archive(path)
        import torch

        self.path = path
        self.format = "torch.export"
        try:
            self.program = torch.export.load(path)
        except Exception as error:  # torch raises many types on a damaged archive
            detail = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise InputError(f"{path}: not a readable torch.export program ({detail})") from None
        signature = self.program.graph_signature
        tensors: dict[str, torch.Tensor] = {}
        self.buffers: set[str] = set()
        for spec in signature.input_specs:
            target = getattr(spec, "target", None)
            if target is None:
                continue
            kind = spec.kind.name
            source = (
                self.program.state_dict
                if target in self.program.state_dict
                else self.program.constants
            )
            if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") and target in source:
                value = source[target]
                if isinstance(value, torch.Tensor):
                    tensors[target] = value.detach()
                    if kind != "PARAMETER":
                        self.buffers.add(target)
        self._set_tensors(tensors)
        self.file_bytes = path.stat().st_size
        self.metadata = {}

    def example_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        inputs = self.program.example_inputs
        if inputs is None:
            return None
        args, kwargs = inputs
        return tuple(args), dict(kwargs)
