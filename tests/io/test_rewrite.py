"""Writing rescaled checkpoints: same format, untouched bytes, one rounding, atomic commit.

Covers `write_rescaled` for single and sharded safetensors and torch pickles (zip and legacy),
the `PendingOutput` commit/discard protocol, and `check_output_path`'s refusals.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import sha256, write_safetensors, write_sharded, write_torch
from tests.io.test_scaling import round_exactly
from weissi_cli import chunking
from weissi_cli.errors import OutputError, UsageError
from weissi_cli.io import Checkpoint, open_checkpoint
from weissi_cli.io.dtypes import decode, encode
from weissi_cli.io.safetensors_file import SafetensorsCheckpoint
from weissi_cli.io.sharded import ShardedCheckpoint
from weissi_cli.io.torch_pickle import TorchCheckpoint
from weissi_cli.writers import PendingOutput, check_output_path, write_rescaled
from weissi_cli.writers.pending import pending_file

FACTORS = {"net.0.weight": 0.3, "net.0.bias": 0.3, "net.2.weight": 1 / 0.3, "net.4.bias": 2.0}
RECORD = {"tool_version": "0.0-test", "scales": FACTORS}
INDEX = "model.safetensors.index.json"
FIRST = "model-00001-of-00002.safetensors"
SECOND = "model-00002-of-00002.safetensors"


def model_state() -> dict[str, torch.Tensor]:
    """Every supported float dtype, a bias, an integer buffer; some tensors left untouched."""
    generator = torch.Generator().manual_seed(11)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "net.0.weight": randn(5, 4).float(),
        "net.0.bias": randn(5).to(torch.float16),
        "net.2.weight": randn(3, 5).to(torch.bfloat16),
        "net.2.bias": randn(3).to(torch.bfloat16),
        "net.4.weight": randn(2, 3),
        "net.4.bias": randn(2),
        "net.10.steps": torch.arange(3, dtype=torch.int64),
        "net.10.mask": torch.tensor([True, False]),
    }


def flat_values(checkpoint: Checkpoint, name: str) -> np.ndarray:
    info = checkpoint.info(name)
    return decode(checkpoint.read_raw(name, 0, info.numel), info.dtype).astype(np.float64)


def raw_bytes(checkpoint: Checkpoint, name: str) -> bytes:
    info = checkpoint.info(name)
    return checkpoint.read_raw(name, 0, info.numel).tobytes()


def expected_scaled_bytes(checkpoint: Checkpoint, name: str, factor: float) -> bytes:
    """The exact products, each rounded once to the storage dtype."""
    dtype = checkpoint.info(name).dtype
    values = flat_values(checkpoint, name)
    if dtype == "float64":  # one IEEE multiplication is the exact product rounded once
        return encode(values * factor, dtype).tobytes()
    exact = Fraction(factor)
    rounded = [round_exactly(Fraction(float(v)) * exact, dtype) for v in values]
    return encode(np.array(rounded, np.float64), dtype).tobytes()


def file_bytes_of(checkpoint: SafetensorsCheckpoint, name: str) -> bytes:
    """A tensor's bytes straight from the file (works for every dtype)."""
    entry = checkpoint.entry(name)
    start = checkpoint.header.data_start
    with open(checkpoint.path, "rb") as handle:
        handle.seek(start + entry.begin)
        return handle.read(entry.end - entry.begin)


def header_layout(checkpoint: SafetensorsCheckpoint) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(e.info.name, e.dtype_code, e.info.shape) for e in checkpoint.header.entries]


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def write(
    checkpoint: Checkpoint, output: Path, factors: dict[str, float] | None = None
) -> PendingOutput:
    return write_rescaled(checkpoint, FACTORS if factors is None else factors, output, RECORD)


def committed(checkpoint: Checkpoint, output: Path) -> Path:
    write(checkpoint, output).commit()
    return output


@contextlib.contextmanager
def source_and_result(source_path: Path, output: Path) -> Iterator[tuple[Any, Any]]:
    """The input opened, and the committed output of rewriting it with FACTORS."""
    with open_checkpoint(source_path) as source:
        committed(source, output)
        with open_checkpoint(output) as result:
            yield source, result


# --- single safetensors -------------------------------------------------------------------


@pytest.fixture
def single(tmp_path: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    metadata = {"format": "pt", "author": "someone"}
    return write_safetensors(source / "model.safetensors", model_state(), metadata)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_safetensors_untouched_tensors_are_byte_identical(single: Path, out_dir: Path) -> None:
    with source_and_result(single, out_dir / "m.safetensors") as (source, result):
        for info in source.tensors:
            if info.name not in FACTORS:
                assert file_bytes_of(result, info.name) == file_bytes_of(source, info.name)


def test_safetensors_scaled_tensors_are_rounded_once_from_the_exact_product(
    single: Path, out_dir: Path
) -> None:
    with source_and_result(single, out_dir / "m.safetensors") as (source, result):
        for name, factor in FACTORS.items():
            assert raw_bytes(result, name) == expected_scaled_bytes(source, name, factor)


def test_safetensors_scaled_tensors_actually_change(single: Path, out_dir: Path) -> None:
    with source_and_result(single, out_dir / "m.safetensors") as (source, result):
        for name in FACTORS:
            assert raw_bytes(result, name) != raw_bytes(source, name)


def test_safetensors_names_dtypes_shapes_and_layout_are_kept(single: Path, out_dir: Path) -> None:
    with source_and_result(single, out_dir / "m.safetensors") as (source, result):
        assert header_layout(result) == header_layout(source)
        assert result.tensors == source.tensors
        offsets = [(e.begin, e.end) for e in result.header.entries]
        assert offsets == [(e.begin, e.end) for e in source.header.entries]


def test_safetensors_metadata_is_kept_with_a_weissi_record(single: Path, out_dir: Path) -> None:
    with source_and_result(single, out_dir / "m.safetensors") as (_, result):
        metadata = dict(result.metadata)
    assert json.loads(metadata.pop("weissi")) == RECORD
    assert metadata == {"format": "pt", "author": "someone"}


def test_safetensors_output_loads_in_the_reference_library(single: Path, out_dir: Path) -> None:
    with SafetensorsCheckpoint(single) as source:
        output = committed(source, out_dir / "m.safetensors")
    original, loaded = load_file(str(single)), load_file(str(output))
    assert list(loaded) == list(original)
    for name, tensor in original.items():
        assert loaded[name].dtype == tensor.dtype
        assert loaded[name].shape == tensor.shape
        if name not in FACTORS:
            assert torch.equal(loaded[name], tensor)


def test_safetensors_header_is_padded_to_eight_bytes(single: Path, out_dir: Path) -> None:
    with source_and_result(single, out_dir / "m.safetensors") as (_, result):
        assert result.header.data_start % 8 == 0


def test_safetensors_input_is_not_modified(single: Path, out_dir: Path) -> None:
    before = sha256(single)
    with SafetensorsCheckpoint(single) as source:
        committed(source, out_dir / "m.safetensors")
    assert sha256(single) == before


def test_safetensors_rewrite_without_factors_copies_every_tensor(
    single: Path, out_dir: Path
) -> None:
    with SafetensorsCheckpoint(single) as source:
        output = write(source, out_dir / "m.safetensors", factors={})
        output.commit()
        with SafetensorsCheckpoint(out_dir / "m.safetensors") as result:
            data = result.header.data_start
            source_data = source.header.data_start
    assert (out_dir / "m.safetensors").read_bytes()[data:] == single.read_bytes()[source_data:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_safetensors_scaling_crosses_chunk_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(chunking, "SCALE_ELEMENTS", 7)
    monkeypatch.setattr(chunking, "COPY_BYTES", 5)
    tensor = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    state = {"a": tensor, "b": tensor.clone() * 2, "c": tensor.clone() * 3}
    source_path = write_safetensors(tmp_path / "m.safetensors", state)
    with SafetensorsCheckpoint(source_path) as source:
        output = write_rescaled(source, {"b": 0.7}, tmp_path / "o.safetensors", RECORD)
        output.commit()
        with SafetensorsCheckpoint(tmp_path / "o.safetensors") as result:
            assert raw_bytes(result, "b") == expected_scaled_bytes(source, "b", 0.7)
            assert raw_bytes(result, "a") == raw_bytes(source, "a")
            assert raw_bytes(result, "c") == raw_bytes(source, "c")


def test_safetensors_scaling_a_tensor_larger_than_a_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunking, "SCALE_ELEMENTS", 1000)
    size = chunking.SCALE_ELEMENTS + 77
    tensor = torch.randn(size, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    source_path = write_safetensors(tmp_path / "m.safetensors", {"w": tensor})
    with SafetensorsCheckpoint(source_path) as source:
        write_rescaled(source, {"w": 1.7}, tmp_path / "o.safetensors", RECORD).commit()
        with SafetensorsCheckpoint(tmp_path / "o.safetensors") as result:
            assert raw_bytes(result, "w") == expected_scaled_bytes(source, "w", 1.7)


def test_safetensors_power_of_two_scaling_is_exact(single: Path, out_dir: Path) -> None:
    factors = {"net.0.weight": 0.25, "net.2.weight": 8.0}
    with SafetensorsCheckpoint(single) as source:
        write(source, out_dir / "m.safetensors", factors).commit()
        with SafetensorsCheckpoint(out_dir / "m.safetensors") as result:
            for name, factor in factors.items():
                assert np.array_equal(flat_values(result, name), flat_values(source, name) * factor)


def test_safetensors_empty_tensors_can_be_scaled(tmp_path: Path) -> None:
    state = {"empty": torch.zeros(0, 3), "w": torch.ones(2)}
    source_path = write_safetensors(tmp_path / "m.safetensors", state)
    with SafetensorsCheckpoint(source_path) as source:
        write_rescaled(
            source, {"empty": 2.0, "w": 2.0}, tmp_path / "o.safetensors", RECORD
        ).commit()
    assert load_file(str(tmp_path / "o.safetensors"))["w"].tolist() == [2.0, 2.0]


# --- commit and discard -----------------------------------------------------------------


def test_nothing_is_at_the_destination_before_commit(single: Path, out_dir: Path) -> None:
    with SafetensorsCheckpoint(single) as source:
        pending = write(source, out_dir / "m.safetensors")
    assert not (out_dir / "m.safetensors").exists()
    pending.discard()


def test_the_pending_output_is_readable_before_commit(single: Path, out_dir: Path) -> None:
    with SafetensorsCheckpoint(single) as source:
        pending = write(source, out_dir / "m.safetensors")
        with open_checkpoint(pending.readable_path) as result:
            assert raw_bytes(result, "net.0.weight") == expected_scaled_bytes(
                source, "net.0.weight", FACTORS["net.0.weight"]
            )
    # in a staging folder of the destination's folder (the same file system: one rename
    # puts it in place), under the destination's own name
    assert pending.readable_path.name == "m.safetensors"
    assert pending.readable_path.parent.parent.parent == out_dir
    pending.discard()


def test_commit_puts_the_output_in_place_and_leaves_no_temporary(
    single: Path, out_dir: Path
) -> None:
    with SafetensorsCheckpoint(single) as source:
        pending = write(source, out_dir / "m.safetensors")
    pending.commit()
    assert listing(out_dir) == ["m.safetensors"]
    assert listing(single.parent) == ["model.safetensors"]


def test_discard_leaves_nothing_behind(single: Path, out_dir: Path) -> None:
    with SafetensorsCheckpoint(single) as source:
        pending = write(source, out_dir / "m.safetensors")
    pending.discard()
    assert listing(out_dir) == []
    assert listing(single.parent) == ["model.safetensors"]


def test_commit_replaces_an_existing_output(single: Path, out_dir: Path) -> None:
    (out_dir / "m.safetensors").write_bytes(b"old")
    with SafetensorsCheckpoint(single) as source:
        check_output_path(source, out_dir / "m.safetensors", force=True)
        write_rescaled(source, FACTORS, out_dir / "m.safetensors", RECORD, force=True).commit()
    assert load_file(str(out_dir / "m.safetensors")).keys() == load_file(str(single)).keys()


def test_discard_keeps_an_existing_output(single: Path, out_dir: Path) -> None:
    (out_dir / "m.safetensors").write_bytes(b"old")
    with SafetensorsCheckpoint(single) as source:
        write(source, out_dir / "m.safetensors").discard()
    assert listing(out_dir) == ["m.safetensors"]
    assert (out_dir / "m.safetensors").read_bytes() == b"old"


def test_a_write_into_a_missing_folder_is_an_output_error(single: Path, tmp_path: Path) -> None:
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError):
        write(source, tmp_path / "absent" / "m.safetensors")


# --- sharded safetensors ---------------------------------------------------------------------


def shard_states() -> dict[str, dict[str, torch.Tensor]]:
    state = model_state()
    first = {name: state[name] for name in ("net.0.weight", "net.0.bias", "net.10.steps")}
    second = {name: tensor for name, tensor in state.items() if name not in first}
    return {FIRST: first, SECOND: second}


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    return write_sharded(tmp_path / "in", shard_states(), metadata={"format": "pt"})


def test_sharded_output_is_a_folder_mirroring_shards_and_index(
    sharded: Path, tmp_path: Path
) -> None:
    with ShardedCheckpoint(sharded) as source:
        committed(source, tmp_path / "out")
    assert listing(tmp_path / "out") == sorted([INDEX, FIRST, SECOND])


def test_sharded_index_keeps_its_weight_map_and_gains_the_record(
    sharded: Path, tmp_path: Path
) -> None:
    with ShardedCheckpoint(sharded) as source:
        committed(source, tmp_path / "out")
    original = json.loads(sharded.read_text())
    written = json.loads((tmp_path / "out" / INDEX).read_text())
    assert written["weight_map"] == original["weight_map"]
    assert written["metadata"] == {**original["metadata"], "weissi": RECORD}


def test_sharded_tensors_are_scaled_or_copied_byte_for_byte(sharded: Path, tmp_path: Path) -> None:
    with source_and_result(sharded, tmp_path / "out") as (source, result):
        assert isinstance(result, ShardedCheckpoint)
        assert result.tensors == source.tensors
        for info in source.tensors:
            if info.name in FACTORS:
                expected = expected_scaled_bytes(source, info.name, FACTORS[info.name])
                assert raw_bytes(result, info.name) == expected
            elif info.is_supported_float:
                assert raw_bytes(result, info.name) == raw_bytes(source, info.name)


def test_sharded_integer_tensors_are_copied_byte_for_byte(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        committed(source, tmp_path / "out")
    for shard in (FIRST, SECOND):
        original, written = (
            load_file(str(sharded.parent / shard)),
            load_file(str(tmp_path / "out" / shard)),
        )
        for name, tensor in original.items():
            if not tensor.is_floating_point():
                assert torch.equal(written[name], tensor)


def test_sharded_shards_keep_their_layout(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        committed(source, tmp_path / "out")
        for name, shard in source.shards.items():
            with SafetensorsCheckpoint(tmp_path / "out" / name) as result:
                assert header_layout(result) == header_layout(shard)


def test_sharded_each_shard_records_only_its_own_scales(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        committed(source, tmp_path / "out")
    records = {}
    for shard in (FIRST, SECOND):
        with SafetensorsCheckpoint(tmp_path / "out" / shard) as result:
            assert result.metadata["format"] == "pt"
            records[shard] = json.loads(result.metadata["weissi"])
    assert records[FIRST]["scales"] == {"net.0.weight": 0.3, "net.0.bias": 0.3}
    assert records[SECOND]["scales"] == {"net.2.weight": 1 / 0.3, "net.4.bias": 2.0}
    assert records[FIRST]["tool_version"] == "0.0-test"


def test_sharded_nothing_is_at_the_destination_before_commit(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        pending = write(source, tmp_path / "out")
    assert not any((tmp_path / "out" / name).exists() for name in (INDEX, FIRST, SECOND))
    pending.discard()


def test_sharded_pending_output_is_readable_before_commit(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        pending = write(source, tmp_path / "out")
        with open_checkpoint(pending.readable_path) as result:
            assert isinstance(result, ShardedCheckpoint)
            assert result.tensors == source.tensors
    pending.discard()


def test_sharded_commit_leaves_no_staging_folder(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        pending = write(source, tmp_path / "out")
    pending.commit()
    assert [name for name in os.listdir(tmp_path / "out") if name.startswith(".")] == []
    assert listing(sharded.parent) == sorted([INDEX, FIRST, SECOND])


def test_sharded_discard_removes_the_folder_it_created(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        pending = write(source, tmp_path / "out")
    pending.discard()
    assert not (tmp_path / "out").exists()


def test_sharded_discard_keeps_a_folder_that_existed(sharded: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README").write_text("keep me")
    with ShardedCheckpoint(sharded) as source:
        pending = write(source, tmp_path / "out")
    pending.discard()
    assert listing(tmp_path / "out") == ["README"]


def test_sharded_input_is_not_modified(sharded: Path, tmp_path: Path) -> None:
    before = {name: sha256(sharded.parent / name) for name in (INDEX, FIRST, SECOND)}
    with ShardedCheckpoint(sharded) as source:
        committed(source, tmp_path / "out")
    assert {name: sha256(sharded.parent / name) for name in before} == before


def test_sharded_index_with_null_metadata_can_be_rewritten(sharded: Path, tmp_path: Path) -> None:
    index = json.loads(sharded.read_text())
    index["metadata"] = None
    sharded.write_text(json.dumps(index))
    with ShardedCheckpoint(sharded) as source:
        committed(source, tmp_path / "out")
    written = json.loads((tmp_path / "out" / INDEX).read_text())
    assert written["metadata"] == {"weissi": RECORD}


# --- torch pickles ------------------------------------------------------------------------

LAYOUTS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


def torch_state() -> OrderedDict[str, torch.Tensor]:
    state = OrderedDict(model_state())
    state["net.0.weight"] = state["net.0.weight"].T.contiguous().T  # non-contiguous, scaled
    state["net.4.weight"] = state["net.4.weight"].T.contiguous().T  # non-contiguous, untouched
    return state


def load_weights(path: Path) -> object:
    return torch.load(path, weights_only=True)


def test_torch_state_has_non_contiguous_tensors() -> None:
    state = torch_state()
    assert not state["net.0.weight"].is_contiguous()
    assert not state["net.4.weight"].is_contiguous()


@LAYOUTS
def test_torch_untouched_tensors_are_byte_identical(tmp_path: Path, legacy: bool) -> None:
    source_path = write_torch(tmp_path / "m.pt", torch_state(), legacy=legacy)
    with source_and_result(source_path, tmp_path / "o.pt") as (source, result):
        for info in source.tensors:
            if info.name not in FACTORS:
                assert raw_bytes(result, info.name) == raw_bytes(source, info.name)


@LAYOUTS
def test_torch_scaled_tensors_are_rounded_once_from_the_exact_product(
    tmp_path: Path, legacy: bool
) -> None:
    source_path = write_torch(tmp_path / "m.pt", torch_state(), legacy=legacy)
    with source_and_result(source_path, tmp_path / "o.pt") as (source, result):
        for name, factor in FACTORS.items():
            assert raw_bytes(result, name) == expected_scaled_bytes(source, name, factor)


@LAYOUTS
def test_torch_names_order_dtypes_and_shapes_are_kept(tmp_path: Path, legacy: bool) -> None:
    source_path = write_torch(tmp_path / "m.pt", torch_state(), legacy=legacy)
    with source_and_result(source_path, tmp_path / "o.pt") as (source, result):
        assert result.tensors == source.tensors


@LAYOUTS
def test_torch_output_keeps_the_serialisation(tmp_path: Path, legacy: bool) -> None:
    import zipfile

    source_path = write_torch(tmp_path / "m.pt", torch_state(), legacy=legacy)
    with open_checkpoint(source_path) as source:
        committed(source, tmp_path / "o.pt")
    assert zipfile.is_zipfile(tmp_path / "o.pt") is not legacy


@LAYOUTS
def test_torch_output_loads_with_weights_only_and_has_the_same_keys(
    tmp_path: Path, legacy: bool
) -> None:
    state = torch_state()
    with open_checkpoint(write_torch(tmp_path / "m.pt", state, legacy=legacy)) as source:
        committed(source, tmp_path / "o.pt")
    loaded = load_weights(tmp_path / "o.pt")
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        if name not in FACTORS:
            assert torch.equal(loaded[name], tensor)


@LAYOUTS
def test_torch_record_rides_in_the_state_dict_metadata(tmp_path: Path, legacy: bool) -> None:
    with open_checkpoint(write_torch(tmp_path / "m.pt", torch_state(), legacy=legacy)) as source:
        committed(source, tmp_path / "o.pt")
    loaded = load_weights(tmp_path / "o.pt")
    assert loaded._metadata["weissi"] == RECORD


def test_torch_module_metadata_is_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    state = model.state_dict()
    with open_checkpoint(write_torch(tmp_path / "m.pt", state)) as source:
        write_rescaled(source, {"0.weight": 2.0}, tmp_path / "o.pt", RECORD).commit()
    loaded = load_weights(tmp_path / "o.pt")
    expected = OrderedDict(state._metadata)
    expected["weissi"] = RECORD
    assert loaded._metadata == expected


def test_torch_output_still_loads_into_the_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with open_checkpoint(write_torch(tmp_path / "m.pt", model.state_dict())) as source:
        factors = {"0.weight": 2.0, "0.bias": 2.0, "2.weight": 0.5}
        write_rescaled(source, factors, tmp_path / "o.pt", RECORD).commit()
    inputs = torch.randn(5, 3)
    before = model(inputs)
    model.load_state_dict(load_weights(tmp_path / "o.pt"))
    assert torch.equal(model(inputs), before)  # powers of two: bit-identical outputs


@LAYOUTS
@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model_state", "model"])
def test_torch_wrapper_keeps_its_other_keys(tmp_path: Path, legacy: bool, key: str) -> None:
    root = {"epoch": 12, key: torch_state(), "optimizer": {"lr": 0.01}}
    with open_checkpoint(write_torch(tmp_path / "m.pt", root, legacy=legacy)) as source:
        committed(source, tmp_path / "o.pt")
    loaded = load_weights(tmp_path / "o.pt")
    assert list(loaded) == ["epoch", key, "optimizer"]
    assert loaded["epoch"] == 12
    assert loaded["optimizer"] == {"lr": 0.01}
    assert loaded[key]._metadata["weissi"] == RECORD
    assert list(loaded[key]) == list(torch_state())


def test_torch_non_tensor_entries_of_the_state_dict_are_kept(tmp_path: Path) -> None:
    state = {"net.0.weight": torch.ones(2, 2), "note": "trained on digits", "count": 3}
    with open_checkpoint(write_torch(tmp_path / "m.pt", state)) as source:
        write_rescaled(source, {"net.0.weight": 2.0}, tmp_path / "o.pt", RECORD).commit()
    loaded = load_weights(tmp_path / "o.pt")
    assert list(loaded) == ["net.0.weight", "note", "count"]
    assert loaded["note"] == "trained on digits"
    assert loaded["count"] == 3


def test_torch_untouched_tied_tensors_stay_tied(tmp_path: Path) -> None:
    shared = torch.randn(4, 3)
    state = {"embed.weight": shared, "net.0.weight": torch.ones(2), "head.weight": shared}
    with open_checkpoint(write_torch(tmp_path / "m.pt", state)) as source:
        write_rescaled(source, {"net.0.weight": 2.0}, tmp_path / "o.pt", RECORD).commit()
    with open_checkpoint(tmp_path / "o.pt") as result:
        assert result.shared_storage("embed.weight") == ("head.weight",)


def test_torch_scaling_crosses_chunk_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunking, "SCALE_ELEMENTS", 7)
    tensor = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with open_checkpoint(write_torch(tmp_path / "m.pt", {"w": tensor.T})) as source:
        write_rescaled(source, {"w": 0.7}, tmp_path / "o.pt", RECORD).commit()
        with open_checkpoint(tmp_path / "o.pt") as result:
            assert raw_bytes(result, "w") == expected_scaled_bytes(source, "w", 0.7)


@LAYOUTS
def test_torch_commit_and_discard(tmp_path: Path, legacy: bool) -> None:
    source_path = write_torch(tmp_path / "m.pt", torch_state(), legacy=legacy)
    with open_checkpoint(source_path) as source:
        pending = write(source, tmp_path / "o.pt")
        staging = pending.readable_path.parent.parent
        assert listing(tmp_path) == sorted(["m.pt", staging.name])
        assert isinstance(open_checkpoint(pending.readable_path), TorchCheckpoint)
        pending.discard()
        assert listing(tmp_path) == ["m.pt"]
        write(source, tmp_path / "o.pt").commit()
        assert listing(tmp_path) == ["m.pt", "o.pt"]


def test_torch_input_is_not_modified(tmp_path: Path) -> None:
    source_path = write_torch(tmp_path / "m.pt", torch_state())
    before = sha256(source_path)
    with open_checkpoint(source_path) as source:
        committed(source, tmp_path / "o.pt")
    assert sha256(source_path) == before


def test_staged_files_are_hidden_unique_and_keep_their_name(tmp_path: Path) -> None:
    first = pending_file(tmp_path / "model.safetensors").readable_path
    second = pending_file(tmp_path / "model.safetensors").readable_path
    assert first != second
    assert first.name == second.name == "model.safetensors"
    assert first.parent.parent.parent == tmp_path
    assert first.parent.parent.name.startswith(".weissi-tmp-")
    assert first.is_file()


def test_discard_leaves_files_of_other_runs_alone(single: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "model.safetensors"
    other = pending_file(output).staging  # another run's, beside ours
    assert other is not None
    with SafetensorsCheckpoint(single) as source:
        write_rescaled(source, {}, output, {"tool_version": "test"}).discard()
    assert sorted(p.name for p in output.parent.iterdir()) == [other.root.name]


# --- check_output_path ------------------------------------------------------------------------


def test_check_accepts_a_new_file_beside_the_input(single: Path) -> None:
    with SafetensorsCheckpoint(single) as source:
        check_output_path(source, single.parent / "new.safetensors", force=False)


def test_check_refuses_the_input_itself(single: Path) -> None:
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, single, force=True)


def test_check_refuses_the_input_spelled_differently(single: Path) -> None:
    spelled = single.parent / ".." / single.parent.name / single.name
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, spelled, force=True)


def test_check_refuses_a_symlink_to_the_input(single: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.safetensors"
    link.symlink_to(single)
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, link, force=True)


def test_check_refuses_the_target_of_an_input_opened_through_a_symlink(
    single: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link.safetensors"
    link.symlink_to(single)
    with SafetensorsCheckpoint(link) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, single, force=True)


def test_check_refuses_a_hard_link_to_the_input(single: Path, tmp_path: Path) -> None:
    link = tmp_path / "hard.safetensors"
    os.link(single, link)
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, link, force=True)


def test_check_refuses_an_existing_output_without_force(single: Path, out_dir: Path) -> None:
    (out_dir / "m.safetensors").write_bytes(b"old")
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError, match="--force"):
        check_output_path(source, out_dir / "m.safetensors", force=False)


def test_check_allows_an_existing_output_with_force(single: Path, out_dir: Path) -> None:
    (out_dir / "m.safetensors").write_bytes(b"old")
    with SafetensorsCheckpoint(single) as source:
        check_output_path(source, out_dir / "m.safetensors", force=True)


@pytest.mark.parametrize("name", ["m.pt", "m.bin", "m", "m.safetensors.json"])
def test_check_refuses_a_non_safetensors_name_for_safetensors(
    single: Path, out_dir: Path, name: str
) -> None:
    with SafetensorsCheckpoint(single) as source, pytest.raises(UsageError, match="safetensors"):
        check_output_path(source, out_dir / name, force=False)


@pytest.mark.parametrize("name", ["o.safetensors", "o.txt", "o"])
def test_check_refuses_a_non_torch_name_for_a_torch_pickle(tmp_path: Path, name: str) -> None:
    source_path = write_torch(tmp_path / "m.pt", torch_state())
    with open_checkpoint(source_path) as source, pytest.raises(UsageError, match="torch"):
        check_output_path(source, tmp_path / name, force=False)


@pytest.mark.parametrize("name", ["o.pt", "o.pth", "o.bin", "o.ckpt"])
def test_check_accepts_any_torch_suffix_for_a_torch_pickle(tmp_path: Path, name: str) -> None:
    with open_checkpoint(write_torch(tmp_path / "m.pt", torch_state())) as source:
        check_output_path(source, tmp_path / name, force=False)


def test_check_refuses_a_missing_parent_folder(single: Path, tmp_path: Path) -> None:
    output = tmp_path / "absent" / "m.safetensors"
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError, match="absent"):
        check_output_path(source, output, force=True)


def test_check_refuses_a_folder_as_output(single: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with SafetensorsCheckpoint(single) as source, pytest.raises(OutputError, match="folder"):
        check_output_path(source, folder, force=True)


def test_check_refuses_the_torch_input_itself(tmp_path: Path) -> None:
    source_path = write_torch(tmp_path / "m.pt", torch_state())
    with open_checkpoint(source_path) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, source_path, force=True)


def test_check_accepts_a_new_folder_for_sharded(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source:
        check_output_path(source, tmp_path / "new", force=False)


def test_check_accepts_an_empty_folder_for_sharded(sharded: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with ShardedCheckpoint(sharded) as source:
        check_output_path(source, tmp_path / "empty", force=False)


def test_check_refuses_a_non_empty_folder_for_sharded_without_force(
    sharded: Path, tmp_path: Path
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / FIRST).write_text("x")
    with ShardedCheckpoint(sharded) as source, pytest.raises(OutputError, match="--force"):
        check_output_path(source, tmp_path / "full", force=False)
    with ShardedCheckpoint(sharded) as source:
        check_output_path(source, tmp_path / "full", force=True)


def test_check_refuses_to_replace_a_folder_without_weights_even_with_force(
    sharded: Path, tmp_path: Path
) -> None:
    """--force replaces the whole folder: only a model folder is replaced."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("x")
    with ShardedCheckpoint(sharded) as source, pytest.raises(OutputError, match="weight files"):
        check_output_path(source, tmp_path / "project", force=True)


def test_check_refuses_the_input_folder_for_sharded_even_with_force(sharded: Path) -> None:
    with ShardedCheckpoint(sharded) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, sharded.parent, force=True)


def test_check_refuses_a_symlink_to_the_input_folder_for_sharded(
    sharded: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(sharded.parent, target_is_directory=True)
    with ShardedCheckpoint(sharded) as source, pytest.raises(OutputError, match="input"):
        check_output_path(source, link, force=True)


@pytest.mark.parametrize("name", [INDEX, FIRST])
def test_check_refuses_an_input_file_as_sharded_output(sharded: Path, name: str) -> None:
    with ShardedCheckpoint(sharded) as source, pytest.raises(OutputError):
        check_output_path(source, sharded.parent / name, force=True)


def test_check_refuses_a_file_as_sharded_output(sharded: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with ShardedCheckpoint(sharded) as source, pytest.raises(OutputError, match="folder"):
        check_output_path(source, tmp_path / "file", force=True)


def test_check_refuses_a_missing_parent_for_sharded(sharded: Path, tmp_path: Path) -> None:
    with ShardedCheckpoint(sharded) as source, pytest.raises(OutputError, match="absent"):
        check_output_path(source, tmp_path / "absent" / "out", force=False)


def test_pending_output_with_no_moves_commits_and_discards_quietly(tmp_path: Path) -> None:
    pending = PendingOutput(tmp_path / "x", tmp_path / "x")
    pending.commit()
    pending.discard()
    assert listing(tmp_path) == []
