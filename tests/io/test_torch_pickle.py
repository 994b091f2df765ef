"""Torch pickles: both serialisations, wrapped state dicts, exact reads, and refusing unsafe files.

A pickle is only ever loaded with `weights_only=True`: a file that would run code is refused
with `UnsafePickleError` before anything in it runs.
"""

from __future__ import annotations

import os
import pickletools
import shlex
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import mlp_state, write_torch
from weissi_cli.errors import InputError, UnsafePickleError
from weissi_cli.io import detect_format, open_checkpoint
from weissi_cli.io.dtypes import decode
from weissi_cli.io.torch_pickle import WRAPPER_KEYS, TorchCheckpoint

LAYOUTS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


class RunsShellCommand:
    """Pickles as a call to `os.system(command)`: loading it unsafely runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class Opaque:
    """An arbitrary Python object: weights-only loading does not know how to rebuild it."""


def open_torch(path: Path) -> TorchCheckpoint:
    checkpoint = open_checkpoint(path)
    assert isinstance(checkpoint, TorchCheckpoint)
    return checkpoint


def values_of(checkpoint: TorchCheckpoint, name: str) -> np.ndarray:
    info = checkpoint.info(name)
    raw = checkpoint.read_raw(name, 0, info.numel)
    return decode(raw, info.dtype).astype(np.float64).reshape(info.shape)


def refused(path: Path) -> InputError:
    with pytest.raises(InputError) as caught:
        open_checkpoint(path)
    assert str(path) in str(caught.value)
    return caught.value


def malicious_file(tmp_path: Path, legacy: bool) -> tuple[Path, Path]:
    """A checkpoint whose pickle would create `marker` if loaded without weights_only."""
    marker = tmp_path / "marker"
    state = {"w": torch.ones(2), "payload": RunsShellCommand(f"touch {shlex.quote(str(marker))}")}
    path = write_torch(tmp_path / "evil.pt", state, legacy=legacy)
    return path, marker


# --- reading ----------------------------------------------------------------------------


@LAYOUTS
def test_a_state_dict_reads_back_in_its_order_with_its_values(tmp_path: Path, legacy: bool) -> None:
    state = mlp_state(dtype=torch.float32)
    path = write_torch(tmp_path / "m.pt", state, legacy=legacy)
    with open_torch(path) as checkpoint:
        assert [info.name for info in checkpoint.tensors] == list(state)
        for name, tensor in state.items():
            assert np.array_equal(values_of(checkpoint, name), tensor.double().numpy())


@LAYOUTS
def test_the_serialisation_is_recognised(tmp_path: Path, legacy: bool) -> None:
    path = write_torch(tmp_path / "m.pt", mlp_state(), legacy=legacy)
    with open_torch(path) as checkpoint:
        assert checkpoint.is_zip is not legacy
        assert checkpoint.format == "torch"


def test_tensor_infos_describe_shape_and_dtype(tmp_path: Path) -> None:
    state = {
        "a": torch.zeros(2, 3, dtype=torch.float64),
        "b": torch.zeros(4, dtype=torch.bfloat16),
        "c": torch.zeros(1, 1, 2, dtype=torch.float16),
        "d": torch.zeros((), dtype=torch.int64),
    }
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        described = [(info.name, info.shape, info.dtype) for info in checkpoint.tensors]
    assert described == [
        ("a", (2, 3), "float64"),
        ("b", (4,), "bfloat16"),
        ("c", (1, 1, 2), "float16"),
        ("d", (), "int64"),
    ]


def test_file_bytes_and_metadata(tmp_path: Path) -> None:
    path = write_torch(tmp_path / "m.pt", mlp_state())
    with open_torch(path) as checkpoint:
        assert checkpoint.file_bytes == path.stat().st_size
        assert checkpoint.metadata == {}


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".PT"])
def test_torch_suffixes_are_recognised(tmp_path: Path, suffix: str) -> None:
    path = write_torch(tmp_path / f"m{suffix}", mlp_state())
    assert detect_format(path) == ("torch", path)


def test_an_unknown_suffix_is_refused(tmp_path: Path) -> None:
    path = write_torch(tmp_path / "m.weights", mlp_state())
    assert "unknown checkpoint format" in str(refused(path))


@LAYOUTS
@pytest.mark.parametrize("key", WRAPPER_KEYS)
def test_a_state_dict_under_a_wrapper_key_is_found(tmp_path: Path, key: str, legacy: bool) -> None:
    state = mlp_state()
    root = {"epoch": 7, key: state, "optimizer": {"lr": 0.1}}
    with open_torch(write_torch(tmp_path / "m.pt", root, legacy=legacy)) as checkpoint:
        assert checkpoint.wrapper_key == key
        assert [info.name for info in checkpoint.tensors] == list(state)


def test_the_wrapper_keys_are_tried_in_order(tmp_path: Path) -> None:
    root = {"model": {"m": torch.ones(1)}, "state_dict": {"s": torch.ones(1)}}
    with open_torch(write_torch(tmp_path / "m.pt", root)) as checkpoint:
        assert checkpoint.wrapper_key == "state_dict"
        assert [info.name for info in checkpoint.tensors] == ["s"]


def test_a_wrapper_key_without_tensors_is_skipped(tmp_path: Path) -> None:
    root = {"state_dict": {"step": 3}, "model": {"w": torch.ones(1)}}
    with open_torch(write_torch(tmp_path / "m.pt", root)) as checkpoint:
        assert checkpoint.wrapper_key == "model"


def test_a_bare_state_dict_has_no_wrapper_key(tmp_path: Path) -> None:
    with open_torch(write_torch(tmp_path / "m.pt", mlp_state())) as checkpoint:
        assert checkpoint.wrapper_key is None


@pytest.mark.parametrize("container", [dict, OrderedDict])
def test_plain_dicts_and_ordered_dicts_keep_their_order(tmp_path: Path, container: type) -> None:
    names = ["z.weight", "a.weight", "net.10.bias", "net.2.bias"]
    state = container((name, torch.full((2,), float(i))) for i, name in enumerate(names))
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        assert [info.name for info in checkpoint.tensors] == names
        assert checkpoint.read_all("net.2.bias").tolist() == [3.0, 3.0]


def test_a_module_state_dict_with_its_metadata_attribute_opens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    state = model.state_dict()
    assert hasattr(state, "_metadata")
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        assert [info.name for info in checkpoint.tensors] == list(state)


def test_non_tensor_entries_are_kept_apart(tmp_path: Path) -> None:
    state = {"w": torch.ones(2), "note": "hello", "count": 3}
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        assert [info.name for info in checkpoint.tensors] == ["w"]
        assert checkpoint.non_tensor_keys == ("note", "count")


@LAYOUTS
def test_bfloat16_reads_back_exactly(tmp_path: Path, legacy: bool) -> None:
    generator = torch.Generator().manual_seed(2)
    tensor = (torch.randn(7, 5, generator=generator) * 1e3).to(torch.bfloat16)
    tensor[0, :3] = torch.tensor([float("inf"), -0.0, 1e-40])
    path = write_torch(tmp_path / "m.pt", {"w": tensor}, legacy=legacy)
    with open_torch(path) as checkpoint:
        raw = checkpoint.read_raw("w", 0, 35)
        assert raw.dtype == np.uint16
        assert raw.tobytes() == tensor.view(torch.int16).numpy().tobytes()
        assert np.array_equal(decode(raw, "bfloat16").reshape(7, 5), tensor.float().numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_other_float_dtypes_read_back_bit_for_bit(tmp_path: Path, dtype: torch.dtype) -> None:
    tensor = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=dtype)
    with open_torch(write_torch(tmp_path / "m.pt", {"w": tensor})) as checkpoint:
        assert checkpoint.read_raw("w", 0, 12).tobytes() == tensor.numpy().tobytes()


def test_chunked_reads_equal_slices(tmp_path: Path) -> None:
    tensor = torch.arange(50, dtype=torch.float32)
    with open_torch(write_torch(tmp_path / "m.pt", {"w": tensor})) as checkpoint:
        assert checkpoint.read_raw("w", 10, 5).tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
        assert checkpoint.read_raw("w", 45, 5).tolist() == [45.0, 46.0, 47.0, 48.0, 49.0]


@LAYOUTS
def test_a_transposed_tensor_reads_in_its_own_row_major_order(tmp_path: Path, legacy: bool) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    transposed = base.T
    assert not transposed.is_contiguous()
    with open_torch(write_torch(tmp_path / "m.pt", {"w": transposed}, legacy=legacy)) as checkpoint:
        assert checkpoint.info("w").shape == (4, 3)
        assert checkpoint.read_all("w").tolist() == transposed.tolist()
        assert checkpoint.read_raw("w", 3, 3).tolist() == [1.0, 5.0, 9.0]


def test_a_strided_view_with_a_storage_offset_reads_correctly(tmp_path: Path) -> None:
    base = torch.arange(30, dtype=torch.float64).reshape(5, 6)
    view = base[1:4, ::2]
    with open_torch(write_torch(tmp_path / "m.pt", {"v": view})) as checkpoint:
        assert checkpoint.read_all("v").tolist() == view.tolist()


def test_a_transposed_bfloat16_tensor_reads_exactly(tmp_path: Path) -> None:
    base = torch.randn(3, 5, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    with open_torch(write_torch(tmp_path / "m.pt", {"w": base.T})) as checkpoint:
        assert np.array_equal(values_of(checkpoint, "w"), base.T.double().numpy())


@LAYOUTS
def test_tied_tensors_are_reported_as_sharing_storage(tmp_path: Path, legacy: bool) -> None:
    shared = torch.randn(4, 3)
    state = {"embed.weight": shared, "other": torch.ones(2), "head.weight": shared}
    with open_torch(write_torch(tmp_path / "m.pt", state, legacy=legacy)) as checkpoint:
        assert checkpoint.shared_storage("embed.weight") == ("head.weight",)
        assert checkpoint.shared_storage("head.weight") == ("embed.weight",)
        assert checkpoint.shared_storage("other") == ()


def test_three_views_of_one_storage_name_each_other(tmp_path: Path) -> None:
    base = torch.randn(4, 3)
    state = {"a": base, "b": base.T, "c": base[1]}
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        assert sorted(checkpoint.shared_storage("a")) == ["b", "c"]
        assert sorted(checkpoint.shared_storage("c")) == ["a", "b"]


def test_equal_but_separate_tensors_do_not_share_storage(tmp_path: Path) -> None:
    state = {"a": torch.ones(3), "b": torch.ones(3)}
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        assert checkpoint.shared_storage("a") == ()


def test_safetensors_checkpoints_report_no_shared_storage(tmp_path: Path) -> None:
    from tests.helpers import write_safetensors

    path = write_safetensors(tmp_path / "m.safetensors", {"a": torch.ones(2)})
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.shared_storage("a") == ()


# --- reading from the file ---------------------------------------------------------------

TRUNCATE_WHILE_READING = """
import os, sys
from pathlib import Path
from weissi_cli.errors import InputError
from weissi_cli.io import open_checkpoint
from weissi_cli.stats import compute_stats

path = Path(sys.argv[1])
with open_checkpoint(path) as checkpoint:
    os.truncate(path, os.path.getsize(path) // 2)
    try:
        compute_stats(checkpoint)
    except InputError as error:
        print("refused:", error)
"""


def test_a_file_truncated_while_it_is_read_gives_an_error_not_sigbus(tmp_path: Path) -> None:
    """A memory map of the file would fault (SIGBUS kills the process) on the pages the
    truncation removed; reads from the file report the short read."""
    import subprocess
    import sys

    state = {"net.0.weight": torch.randn(512, 512), "net.2.weight": torch.randn(10, 512)}
    path = write_torch(tmp_path / "m.pt", state)
    result = subprocess.run(
        [sys.executable, "-c", TRUNCATE_WHILE_READING, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=120,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "refused:" in result.stdout
    assert "ended early" in result.stdout


def test_a_zip_pickle_is_read_from_the_file_not_loaded(tmp_path: Path) -> None:
    state = mlp_state(dtype=torch.float32)
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        assert checkpoint.lazy
        place = checkpoint.locate("net.0.weight")
        assert place is not None
        descriptor, offset, _ = place
        raw = os.pread(descriptor, state["net.0.weight"].numel() * 4, offset)
        assert raw == state["net.0.weight"].numpy().tobytes()


def test_a_legacy_pickle_is_loaded_into_memory(tmp_path: Path) -> None:
    with open_torch(write_torch(tmp_path / "m.pt", mlp_state(), legacy=True)) as checkpoint:
        assert not checkpoint.lazy
        assert checkpoint.locate("net.0.weight") is None


def test_tensors_come_back_with_values_as_parameters_where_saved_as_parameters(
    tmp_path: Path,
) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    state = model.state_dict(keep_vars=True)
    with open_torch(write_torch(tmp_path / "m.pt", state)) as checkpoint:
        for name, value in state.items():
            loaded = checkpoint.tensor(name)
            assert type(loaded) is torch.nn.Parameter
            assert loaded.requires_grad == value.requires_grad
            assert torch.equal(loaded.detach(), value.detach())


def test_a_storage_that_the_archive_does_not_hold_whole_is_refused(tmp_path: Path) -> None:
    """A data record cut short inside the archive (its size no longer matches the storage):
    torch's reader is left to judge the file, and refuses it."""
    path = write_torch(tmp_path / "m.pt", {"w": torch.arange(64, dtype=torch.float32)})
    with zipfile.ZipFile(path) as original:
        entries = [(entry.filename, original.read(entry)) for entry in original.infolist()]
    with zipfile.ZipFile(path, "w") as patched:
        for name, data in entries:
            if name.endswith("/data/0"):
                data = data[:100]
            patched.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    refused(path)


# --- refusing unsafe and broken files -----------------------------------------------------


@LAYOUTS
def test_the_malicious_payload_is_live_when_loaded_unsafely(tmp_path: Path, legacy: bool) -> None:
    # Control: proves the file below really runs code, so refusing it means something.
    path, marker = malicious_file(tmp_path, legacy)
    torch.load(path, weights_only=False)
    assert marker.exists()


@LAYOUTS
def test_a_pickle_that_would_run_code_is_refused_without_running_it(
    tmp_path: Path, legacy: bool
) -> None:
    path, marker = malicious_file(tmp_path, legacy)
    with pytest.raises(UnsafePickleError) as caught:
        open_checkpoint(path)
    assert not marker.exists()
    assert caught.value.exit_code == 2
    assert str(path) in str(caught.value)


def test_the_refusal_names_an_offending_class(tmp_path: Path) -> None:
    path = write_torch(tmp_path / "m.pt", {"w": torch.ones(2), "extra": Opaque()})
    with pytest.raises(UnsafePickleError, match=f"{__name__}.Opaque"):
        open_checkpoint(path)


def test_the_refusal_names_an_offending_function_from_a_blocked_module(tmp_path: Path) -> None:
    path, _ = malicious_file(tmp_path, legacy=False)
    with pytest.raises(UnsafePickleError, match="system"):
        open_checkpoint(path)


def test_an_unsafe_pickle_is_an_input_error(tmp_path: Path) -> None:
    path, _ = malicious_file(tmp_path, legacy=False)
    assert isinstance(refused(path), UnsafePickleError)


@LAYOUTS
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_a_truncated_file_is_an_input_error(tmp_path: Path, legacy: bool, keep: float) -> None:
    path = write_torch(tmp_path / "m.pt", mlp_state(), legacy=legacy)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    error = refused(path)
    assert not isinstance(error, UnsafePickleError)


def test_an_empty_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(b"")
    refused(path)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_bytes_are_an_input_error(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(1000))
    refused(path)


@pytest.mark.parametrize("content", [b"e", b"a", b"t"])
def test_a_pickle_opcode_on_an_empty_stack_is_an_input_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    refused(path)


def test_random_bytes_are_not_reported_as_an_unsafe_pickle(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    assert not isinstance(refused(path), UnsafePickleError)


def test_a_pickle_without_tensors_names_its_top_level_keys(tmp_path: Path) -> None:
    path = write_torch(tmp_path / "m.pt", {"epoch": 3, "optimizer": {"lr": 0.1}})
    message = str(refused(path))
    assert "'epoch'" in message
    assert "'optimizer'" in message


def test_an_empty_dict_is_refused(tmp_path: Path) -> None:
    path = write_torch(tmp_path / "m.pt", {})
    assert "no state dict" in str(refused(path))


@pytest.mark.parametrize("root", [[torch.ones(2)], torch.ones(2), 3])
def test_a_pickle_that_is_not_a_dict_is_refused(tmp_path: Path, root: object) -> None:
    path = write_torch(tmp_path / "m.pt", root)
    assert "not a state dict" in str(refused(path))


def test_a_state_dict_with_non_string_keys_is_refused(tmp_path: Path) -> None:
    path = write_torch(tmp_path / "m.pt", {0: torch.ones(2), "b": torch.ones(2)})
    assert "non-string keys" in str(refused(path))


# --- a file saved from CUDA tensors -------------------------------------------------------


def retag_storage_locations(pickle_bytes: bytes, old: str, new: str) -> tuple[bytes, int]:
    """Replace every BINUNICODE string `old` (the storage location tags) by `new`."""
    patched = bytearray()
    copied_up_to = 0
    replaced = 0
    for opcode, argument, position in pickletools.genops(pickle_bytes):
        if opcode.name == "BINUNICODE" and argument == old:
            end = position + 1 + 4 + len(old.encode())  # opcode, 4-byte length, UTF-8
            encoded = new.encode()
            patched += pickle_bytes[copied_up_to:position]
            patched += b"X" + len(encoded).to_bytes(4, "little") + encoded
            copied_up_to = end
            replaced += 1
    patched += pickle_bytes[copied_up_to:]
    return bytes(patched), replaced


def as_if_saved_from_cuda(source: Path, destination: Path) -> Path:
    """Rewrite a CPU zip checkpoint so its storages claim to live on cuda:0."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w") as patched:
        replaced = 0
        for entry in original.infolist():
            data = original.read(entry)
            if entry.filename.endswith("/data.pkl"):
                data, replaced = retag_storage_locations(data, "cpu", "cuda:0")
            patched.writestr(entry.filename, data, compress_type=zipfile.ZIP_STORED)
    assert replaced == 1  # the tag is memoised: later storages refer back to it
    return destination


@pytest.fixture
def cuda_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = mlp_state(dtype=torch.float32)
    state["net.0.weight"] = state["net.0.weight"].to(torch.bfloat16)
    source = write_torch(tmp_path / "cpu.pt", state)
    return as_if_saved_from_cuda(source, tmp_path / "cuda.pt"), state


@pytest.mark.skipif(torch.cuda.is_available(), reason="the control needs a machine without CUDA")
def test_the_patched_file_really_asks_for_cuda(
    cuda_checkpoint: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    # Control: without mapping to the CPU, torch refuses the patched file.
    path, _ = cuda_checkpoint
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)


def test_a_checkpoint_saved_from_cuda_reads_on_the_cpu(
    cuda_checkpoint: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, state = cuda_checkpoint
    with open_torch(path) as checkpoint:
        assert [info.name for info in checkpoint.tensors] == list(state)
        for name, tensor in state.items():
            assert checkpoint.tensor(name).device.type == "cpu"
            assert np.array_equal(values_of(checkpoint, name), tensor.double().numpy())
