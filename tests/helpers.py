"""Builders for small checkpoints in every format, and a reference forward pass."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weissi_cli.io.dtypes import decode, encode


def mlp_state(
    sizes: tuple[int, ...] = (6, 5, 4, 3),
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    bias: bool = True,
    prefix: str = "net",
    step: int = 2,
) -> OrderedDict[str, torch.Tensor]:
    """A random ReLU MLP state dict with names `<prefix>.0`, `<prefix>.2`, ..."""
    generator = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        name = f"{prefix}.{index * step}"
        state[f"{name}.weight"] = torch.randn(
            fan_out, fan_in, generator=generator, dtype=torch.float64
        ).to(dtype)
        if bias:
            state[f"{name}.bias"] = torch.randn(
                fan_out, generator=generator, dtype=torch.float64
            ).to(dtype)
    return state


def mlp_forward(
    state: dict[str, torch.Tensor], inputs: torch.Tensor, prefix: str = "net"
) -> torch.Tensor:
    """ReLU between consecutive layers, in the state dict's order, no activation at the end."""
    layers = sorted(
        {name.rsplit(".", 1)[0] for name in state if name.startswith(prefix + ".")},
        key=lambda p: int(p.rsplit(".", 1)[1]),
    )
    hidden = inputs
    for index, layer in enumerate(layers):
        hidden = hidden @ state[f"{layer}.weight"].T
        if f"{layer}.bias" in state:
            hidden = hidden + state[f"{layer}.bias"]
        if index < len(layers) - 1:
            hidden = torch.relu(hidden)
    return hidden


def write_safetensors(
    path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def write_torch(path: Path, state: object, legacy: bool = False) -> Path:
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def as_numpy64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy()


def write_raw_safetensors(
    path: Path, header: object, data: bytes = b"", header_length: int | None = None
) -> Path:
    """A safetensors file written byte by byte: 8-byte length, JSON header, data (no checks).

    `header` is JSON-encoded unless it is already `bytes`; `header_length` overrides the
    declared length (to build corrupt files).
    """
    import json

    raw_header = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    declared = len(raw_header) if header_length is None else header_length
    path.write_bytes(declared.to_bytes(8, "little") + raw_header + data)
    return path


def write_sharded(
    folder: Path,
    shards: dict[str, dict[str, torch.Tensor]],
    index_name: str = "model.safetensors.index.json",
    weight_map: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Shards named by the keys of `shards`, and an index mapping each tensor to its shard."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for shard_name, state in shards.items():
        write_safetensors(folder / shard_name, state, metadata=metadata)
    if weight_map is None:
        weight_map = {name: shard for shard, state in shards.items() for name in state}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    index_path = folder / index_name
    index_path.write_text(json.dumps(index, indent=2), encoding="utf-8")
    return index_path


def make_rewrites_scale_wrongly(monkeypatch: pytest.MonkeyPatch, error: float) -> None:
    """Every scaled value comes out `error` times too large (every writer scales through
    `scaling.scale_chunk`): a rewrite bug that verification must catch."""
    from weissi_cli.writers import scaling

    real_scale = scaling.scale_chunk

    def scale_wrongly(raw: np.ndarray, task: Any) -> None:
        real_scale(raw, task)
        values = decode(raw, task.dtype) * error
        raw[...] = encode(values.astype(np.float64), task.dtype)

    monkeypatch.setattr(scaling, "scale_chunk", scale_wrongly)


def checks_after_the_write(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy: the tensors verification checks in the kernel by reading both files after the
    write."""
    from weissi_cli import verify_values

    names: list[str] = []
    real = verify_values.check_tensor_in_files

    def spy(original: Any, rewritten: Any, name: str, *rest: Any) -> bool:
        names.append(name)
        return real(original, rewritten, name, *rest)

    monkeypatch.setattr(verify_values, "check_tensor_in_files", spy)
    return names


def raised_within(seconds: float, work: Callable[[], object]) -> list[BaseException]:
    """Run `work` on a thread of its own; what it raised. Fails the test if it has not
    finished after `seconds` (a hang), instead of hanging the test run."""
    import threading

    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            raised.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return raised
