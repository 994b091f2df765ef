"""Sharded safetensors: an index and its shards read as one checkpoint, and folder detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import write_safetensors, write_sharded
from weissi_cli.errors import InputError
from weissi_cli.io import detect_format, open_checkpoint
from weissi_cli.io.dtypes import decode
from weissi_cli.io.safetensors_file import SafetensorsCheckpoint
from weissi_cli.io.sharded import ShardedCheckpoint
from weissi_cli.writers.safetensors import _index_text

INDEX = "model.safetensors.index.json"
FIRST = "model-00001-of-00002.safetensors"
SECOND = "model-00002-of-00002.safetensors"


def two_shards() -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    return {
        FIRST: {
            "net.0.weight": torch.randn(4, 3, generator=generator),
            "net.0.bias": torch.randn(4, generator=generator),
            "net.10.weight": torch.randn(2, 2, generator=generator).to(torch.bfloat16),
        },
        SECOND: {
            "net.2.weight": torch.randn(2, 4, generator=generator, dtype=torch.float64),
            "net.2.bias": torch.randn(2, generator=generator).to(torch.float16),
        },
    }


def build(folder: Path, **kwargs: object) -> Path:
    return write_sharded(folder, two_shards(), **kwargs)  # type: ignore[arg-type]


def refused(path: Path) -> str:
    with pytest.raises(InputError) as caught:
        open_checkpoint(path).close()
    message = str(caught.value)
    assert str(path) in message
    return message


def rewrite_index(index_path: Path, change: object) -> None:
    index = json.loads(index_path.read_text())
    change(index)  # type: ignore[operator]
    index_path.write_text(json.dumps(index))


# --- reading ----------------------------------------------------------------------------


def test_the_index_file_opens_as_a_sharded_checkpoint(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    with open_checkpoint(index) as checkpoint:
        assert isinstance(checkpoint, ShardedCheckpoint)
        assert checkpoint.format == "safetensors-sharded"
        assert checkpoint.path == index


def test_the_folder_opens_through_its_index(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    assert detect_format(tmp_path / "model") == ("safetensors-sharded", index)
    with open_checkpoint(tmp_path / "model") as checkpoint:
        assert isinstance(checkpoint, ShardedCheckpoint)


def test_tensors_of_all_shards_are_merged_in_natural_order(tmp_path: Path) -> None:
    with open_checkpoint(build(tmp_path / "model")) as checkpoint:
        names = [info.name for info in checkpoint.tensors]
    assert names == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight", "net.10.weight"]


def test_every_tensor_reads_back_its_values_from_its_shard(tmp_path: Path) -> None:
    shards = two_shards()
    index = write_sharded(tmp_path / "model", shards)
    expected = {name: t for state in shards.values() for name, t in state.items()}
    with open_checkpoint(index) as checkpoint:
        for info in checkpoint.tensors:
            values = decode(checkpoint.read_raw(info.name, 0, info.numel), info.dtype)
            reference = expected[info.name].to(torch.float64).numpy().reshape(-1)
            assert np.array_equal(values.astype(np.float64), reference)


def test_tensor_dtypes_and_shapes_come_from_the_shards(tmp_path: Path) -> None:
    with open_checkpoint(build(tmp_path / "model")) as checkpoint:
        described = {info.name: (info.shape, info.dtype) for info in checkpoint.tensors}
    assert described == {
        "net.0.weight": ((4, 3), "float32"),
        "net.0.bias": ((4,), "float32"),
        "net.10.weight": ((2, 2), "bfloat16"),
        "net.2.weight": ((2, 4), "float64"),
        "net.2.bias": ((2,), "float16"),
    }


def test_shard_of_names_the_shard_holding_a_tensor(tmp_path: Path) -> None:
    with open_checkpoint(build(tmp_path / "model")) as checkpoint:
        assert isinstance(checkpoint, ShardedCheckpoint)
        assert checkpoint.shard_of("net.10.weight") == FIRST
        assert checkpoint.shard_of("net.2.bias") == SECOND
        assert list(checkpoint.shards) == [FIRST, SECOND]


def test_file_bytes_and_parameter_count_add_up_over_shards(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    shard_bytes = sum((tmp_path / "model" / name).stat().st_size for name in (FIRST, SECOND))
    with open_checkpoint(index) as checkpoint:
        assert checkpoint.file_bytes == shard_bytes
        assert checkpoint.parameter_count == 12 + 4 + 4 + 8 + 2


def test_shard_metadata_is_merged_and_index_metadata_kept_apart(tmp_path: Path) -> None:
    index = build(tmp_path / "model", metadata={"format": "pt"})
    with open_checkpoint(index) as checkpoint:
        assert isinstance(checkpoint, ShardedCheckpoint)
        assert checkpoint.metadata == {"format": "pt"}
        assert checkpoint.index_metadata == {"total_size": 0}


def test_an_index_without_metadata_opens(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    rewrite_index(index, lambda data: data.pop("metadata"))
    with open_checkpoint(index) as checkpoint:
        assert len(checkpoint.tensors) == 5


def test_a_single_shard_index_opens(tmp_path: Path) -> None:
    index = write_sharded(tmp_path / "model", {"model.safetensors": {"w": torch.ones(3)}})
    with open_checkpoint(index) as checkpoint:
        assert checkpoint.read_all("w").tolist() == [1.0, 1.0, 1.0]


def test_close_closes_every_shard(tmp_path: Path) -> None:
    checkpoint = open_checkpoint(build(tmp_path / "model"))
    assert isinstance(checkpoint, ShardedCheckpoint)
    checkpoint.close()
    assert [shard.fd for shard in checkpoint.shards.values()] == [-1, -1]


# --- folders ----------------------------------------------------------------------------


def test_a_folder_with_exactly_one_safetensors_file_opens_that_file(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "weights.safetensors", {"w": torch.ones(2)})
    (tmp_path / "config.json").write_text("{}")
    assert detect_format(tmp_path) == ("safetensors", path)
    with open_checkpoint(tmp_path) as checkpoint:
        assert isinstance(checkpoint, SafetensorsCheckpoint)
        assert checkpoint.path == path


def test_a_folder_with_several_safetensors_and_no_index_is_refused(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "a.safetensors", {"w": torch.ones(2)})
    write_safetensors(tmp_path / "b.safetensors", {"v": torch.ones(2)})
    assert "found 2" in refused(tmp_path)


def test_a_folder_without_checkpoints_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    assert "found 0" in refused(tmp_path)


def test_a_folder_with_two_indexes_is_refused(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    (tmp_path / "model" / "other.safetensors.index.json").write_text(index.read_text())
    assert "several" in refused(tmp_path / "model")


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nowhere")


# --- inconsistent indexes ---------------------------------------------------------------


def test_a_missing_shard_is_refused(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    (tmp_path / "model" / SECOND).unlink()
    message = refused(index)
    assert SECOND in message
    assert "missing" in message


def test_a_tensor_in_the_index_but_not_in_its_shard_is_refused(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    rewrite_index(index, lambda data: data["weight_map"].update({"net.4.weight": SECOND}))
    message = refused(index)
    assert "'net.4.weight'" in message


def test_a_tensor_assigned_to_the_wrong_shard_is_refused(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    rewrite_index(index, lambda data: data["weight_map"].update({"net.2.bias": FIRST}))
    assert "'net.2.bias'" in refused(index)


def test_a_tensor_in_a_shard_but_not_in_the_index_is_refused(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    rewrite_index(index, lambda data: data["weight_map"].pop("net.0.bias"))
    message = refused(index)
    assert "'net.0.bias'" in message
    assert FIRST in message


def test_a_tensor_in_two_shards_is_refused(tmp_path: Path) -> None:
    shards = two_shards()
    shards[SECOND]["net.0.bias"] = torch.zeros(4)
    index = write_sharded(tmp_path / "model", shards)  # the index keeps the second copy
    assert "'net.0.bias'" in refused(index)


@pytest.mark.parametrize(
    "index",
    [
        {"metadata": {}},
        {"weight_map": []},
        {"weight_map": "model.safetensors"},
        {"weight_map": None},
        [],
    ],
)
def test_an_index_without_a_weight_map_object_is_refused(tmp_path: Path, index: object) -> None:
    build(tmp_path / "model")
    path = tmp_path / "model" / INDEX
    path.write_text(json.dumps(index))
    assert "weight_map" in refused(path)


@pytest.mark.parametrize("weight_map", [{}, {"w": 3}, {"w": None}, {"w": [FIRST]}])
def test_a_weight_map_that_does_not_map_names_to_files_is_refused(
    tmp_path: Path, weight_map: object
) -> None:
    build(tmp_path / "model")
    path = tmp_path / "model" / INDEX
    path.write_text(json.dumps({"weight_map": weight_map}))
    assert "weight_map" in refused(path)


def test_an_index_that_is_not_json_is_refused(tmp_path: Path) -> None:
    build(tmp_path / "model")
    path = tmp_path / "model" / INDEX
    path.write_text('{"weight_map": {')
    assert "JSON" in refused(path)


def test_index_metadata_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    index = build(tmp_path / "model")
    rewrite_index(index, lambda data: data.update({"metadata": ["a"]}))
    assert "metadata" in refused(index)


@pytest.mark.parametrize(
    "shard_name",
    [f"sub/{FIRST}", f"../model/{FIRST}", f"/tmp/{FIRST}", f"./{FIRST}"],
)
def test_a_shard_name_with_a_path_separator_is_refused(tmp_path: Path, shard_name: str) -> None:
    index = build(tmp_path / "model")
    (tmp_path / "model" / "sub").mkdir()
    write_safetensors(tmp_path / "model" / "sub" / FIRST, two_shards()[FIRST])

    def point_elsewhere(data: dict) -> None:
        for name, shard in data["weight_map"].items():
            if shard == FIRST:
                data["weight_map"][name] = shard_name

    rewrite_index(index, point_elsewhere)
    assert "file name in the same folder" in refused(index)


@pytest.mark.parametrize("shard_name", ["..", ".", ""])
def test_a_shard_name_that_is_a_folder_is_refused(tmp_path: Path, shard_name: str) -> None:
    index = build(tmp_path / "model")
    rewrite_index(index, lambda data: data["weight_map"].update({"net.0.bias": shard_name}))
    refused(index)


def test_a_corrupt_shard_is_refused_naming_the_shard(tmp_path: Path) -> None:
    build(tmp_path / "model")
    shard = tmp_path / "model" / SECOND
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(InputError, match=SECOND):
        open_checkpoint(tmp_path / "model")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), json_values, max_size=4), st.dictionaries(st.text(), st.text()))
def test_the_written_index_is_the_same_json_with_one_weight_map_entry_per_line(
    metadata: dict, weight_map: dict
) -> None:
    index = {"metadata": metadata, "weight_map": weight_map}
    text = _index_text(index)
    assert json.loads(text) == index
    lines = [line.rstrip(",") for line in text.splitlines()]
    for name, shard in weight_map.items():
        assert f"    {json.dumps(name)}: {json.dumps(shard)}" in lines
