"""Reading ONNX models: initializers inline (raw or typed fields) and in external data files,
streamed from where they lie; locations outside the model's folder, sizes the files do not
hold and malformed protobuf refused with one line (exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from weissi_cli.errors import InputError, UsageError
from weissi_cli.io import detect_format, open_checkpoint
from weissi_cli.io.dtypes import decode
from weissi_cli.stats import compute_stats


def _model(
    initializers: list[onnx.TensorProto], nodes: list[onnx.NodeProto] | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes or [helper.make_node("MatMul", ["x", initializers[0].name], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    return {
        "w": generator.standard_normal((4, 6)).astype(np.float32),
        "b": generator.standard_normal(6).astype(np.float32),
        "big": generator.standard_normal((300, 70)).astype(np.float32),
    }


def _check_values(path: Path, expected: dict[str, np.ndarray]) -> None:
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.format == "onnx"
        stats = compute_stats(checkpoint)
        for name, value in expected.items():
            raw = checkpoint.read_all(name)
            got = decode(raw.reshape(-1), checkpoint.info(name).dtype)
            assert np.array_equal(got.reshape(value.shape), value.astype(got.dtype)), name
            half = value.size // 2
            part = checkpoint.read_raw(name, half, value.size - half)
            assert np.array_equal(
                decode(part, checkpoint.info(name).dtype), value.reshape(-1)[half:]
            )
            assert stats[name].fro_norm == pytest.approx(
                np.linalg.norm(value.astype(np.float64)), rel=1e-6
            )


def test_raw_data_is_streamed_from_the_model_file(tmp_path: Path) -> None:
    weights = _weights()
    path = tmp_path / "m.onnx"
    onnx.save(_model([numpy_helper.from_array(v, k) for k, v in weights.items()]), str(path))
    _check_values(path, weights)
    with open_checkpoint(path) as checkpoint:
        fd, offset, file = checkpoint.locate("big")  # type: ignore[misc]
        assert file == path
        assert os.pread(fd, 8, offset) == weights["big"].tobytes()[:8]


def test_typed_fields_are_read(tmp_path: Path) -> None:
    """float_data lies in the file like raw_data; float16 in int32_data is decoded."""
    generator = np.random.default_rng(1)
    values = generator.standard_normal((3, 5)).astype(np.float32)
    halves = generator.standard_normal((2, 4)).astype(np.float16)
    typed = helper.make_tensor("w", TensorProto.FLOAT, values.shape, values.reshape(-1).tolist())
    half = helper.make_tensor(
        "h", TensorProto.FLOAT16, halves.shape, halves.astype(np.float32).reshape(-1).tolist()
    )
    assert not typed.raw_data
    assert not half.raw_data
    path = tmp_path / "typed.onnx"
    onnx.save(_model([typed, half], [helper.make_node("Identity", ["x"], ["y"])]), str(path))
    _check_values(path, {"w": values, "h": halves})
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.initializer("w").storage == "typed"
        assert checkpoint.initializer("h").storage == "decoded"
        assert checkpoint.locate("h") is None


def test_bfloat16_raw_data(tmp_path: Path) -> None:
    import torch

    values = torch.randn(4, 6).to(torch.bfloat16)
    tensor = helper.make_tensor(
        "w", TensorProto.BFLOAT16, [4, 6], values.view(torch.int16).numpy().tobytes(), raw=True
    )
    path = tmp_path / "bf16.onnx"
    onnx.save(_model([tensor]), str(path))
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.info("w").dtype == "bfloat16"
        got = decode(checkpoint.read_all("w").reshape(-1), "bfloat16")
        assert np.array_equal(got, values.float().numpy().reshape(-1))


def _external(tmp_path: Path, one_file: bool) -> tuple[Path, dict[str, np.ndarray]]:
    weights = _weights(2)
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(
        _model([numpy_helper.from_array(v, k) for k, v in weights.items()]),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=one_file,
        location="weights.bin" if one_file else None,
        size_threshold=0,
    )
    return path, weights


@pytest.mark.parametrize("one_file", [True, False])
def test_external_data_is_streamed_from_its_files(tmp_path: Path, one_file: bool) -> None:
    path, weights = _external(tmp_path, one_file)
    _check_values(path, weights)
    _check_values(path.parent, weights)  # the folder names its one model
    with open_checkpoint(path) as checkpoint:
        assert len(checkpoint.data_files) == (1 if one_file else 3)
        fd, offset, file = checkpoint.locate("big")  # type: ignore[misc]
        assert file.parent == path.parent.resolve()
        assert os.pread(fd, 8, offset) == weights["big"].tobytes()[:8]


def _set_location(path: Path, name: str, location: str, **entries: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.name == name:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
                elif entry.key in entries:
                    entry.value = entries[entry.key]
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("/etc/passwd", "absolute path"),
        ("../outside.bin", "leads out"),
        ("sub/../../outside.bin", "leads out"),
        ("C:\\weights.bin", "absolute path"),
        ("missing.bin", "no such file"),
        ("", "without a location"),
    ],
)
def test_locations_outside_the_folder_are_refused(
    tmp_path: Path, location: str, message: str
) -> None:
    path, _ = _external(tmp_path, one_file=True)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    _set_location(path, "big", location)
    with pytest.raises(InputError, match=message):
        open_checkpoint(path)


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    path, _ = _external(tmp_path, one_file=True)
    outside = tmp_path / "secret.bin"
    (path.parent / "weights.bin").rename(outside)
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(InputError, match="link that leads out"):
        open_checkpoint(path)


def test_a_link_inside_the_folder_is_followed(tmp_path: Path) -> None:
    path, weights = _external(tmp_path, one_file=True)
    (path.parent / "weights.bin").rename(path.parent / "real.bin")
    (path.parent / "weights.bin").symlink_to("real.bin")
    _check_values(path, weights)


def test_a_location_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    path, _ = _external(tmp_path, one_file=True)
    (path.parent / "sub").mkdir()
    _set_location(path, "big", "sub")
    with pytest.raises(InputError, match="not a regular file"):
        open_checkpoint(path)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"offset": "999999999"}, "truncated"),
        ({"length": "12"}, "needs 84000 bytes"),
        ({"offset": "x"}, "non-numeric"),
        ({"offset": "-8"}, "needs bytes"),
    ],
)
def test_external_sizes_are_checked(tmp_path: Path, entries: dict[str, str], message: str) -> None:
    path, _ = _external(tmp_path, one_file=True)
    _set_location(path, "big", "weights.bin", **entries)
    with pytest.raises(InputError, match=message):
        open_checkpoint(path)


def test_a_truncated_data_file_is_refused(tmp_path: Path) -> None:
    path, _ = _external(tmp_path, one_file=True)
    data = path.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        open_checkpoint(path)


def test_external_tensors_outside_the_initializers_are_checked(tmp_path: Path) -> None:
    """A Constant node's tensor may be external data too: its location is checked."""
    value = numpy_helper.from_array(np.ones((64,), np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.ClearField("raw_data")
    entry = value.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    nodes = [helper.make_node("Constant", [], ["y"], value=value)]
    path = tmp_path / "constant.onnx"
    onnx.save(_model([numpy_helper.from_array(np.ones((4, 6), np.float32), "w")], nodes), str(path))
    with pytest.raises(InputError, match="leads out"):
        open_checkpoint(path)


def test_raw_data_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    tensor = numpy_helper.from_array(np.ones((4, 6), np.float32), "w")
    tensor.raw_data = tensor.raw_data[:-4]
    path = tmp_path / "short.onnx"
    path.write_bytes(_model([tensor]).SerializeToString())
    with pytest.raises(InputError, match="needs 96 bytes but raw_data holds 92"):
        open_checkpoint(path)


def test_duplicate_initializers_are_refused(tmp_path: Path) -> None:
    tensor = numpy_helper.from_array(np.ones((4, 6), np.float32), "w")
    path = tmp_path / "twice.onnx"
    path.write_bytes(_model([tensor, tensor]).SerializeToString())
    with pytest.raises(InputError, match="appears twice"):
        open_checkpoint(path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08",  # a varint cut short
        b"\x3a\xff\xff\xff\xff\x0f",  # a graph of 4 GiB in a 6-byte file
        b"\x0b\x00",  # wire type 3 (groups)
        b"\x08\x07" + b"\x3a\x02\x0a\x00",  # a graph whose node field runs past its end
        b"\x08\x07",  # no graph
        b"\x08\x07\x3a\x00\x3a\x00",  # an empty graph (read: no nodes, no tensors)
    ],
)
def test_malformed_protobuf_is_refused_or_read(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    try:
        with open_checkpoint(path) as checkpoint:
            assert checkpoint.tensors == ()
    except InputError as error:
        if not str(error).startswith(str(path)):
            raise


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    """Subgraphs inside subgraphs past the depth limit."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [], [])
    for _ in range(30):
        node = helper.make_node("If", ["c"], ["y"], then_branch=graph)
        graph = helper.make_graph([node], "g", [], [])
    model = helper.make_model(graph)
    path = tmp_path / "deep.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match="nested more than"):
        open_checkpoint(path)


def test_folders_name_their_one_model(tmp_path: Path) -> None:
    path, _ = _external(tmp_path, one_file=True)
    assert detect_format(path.parent) == ("onnx", path)
    (path.parent / "other.onnx").write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="several ONNX models"):
        detect_format(path.parent)


def test_varint_typed_tensors_are_not_rescaled(tmp_path: Path) -> None:
    """float16 values held as int32_data varints would change length when rescaled."""
    from weissi_cli.scales import uniform
    from weissi_cli.writers import WriteOptions
    from weissi_cli.writers import onnx as onnx_writer

    halves = np.ones((2, 4), np.float16)
    tensor = helper.make_tensor(
        "h", TensorProto.FLOAT16, [2, 4], halves.astype(np.float32).reshape(-1).tolist()
    )
    path = tmp_path / "typed.onnx"
    onnx.save(_model([tensor], [helper.make_node("Identity", ["x"], ["y"])]), str(path))
    with open_checkpoint(path) as checkpoint, pytest.raises(UsageError, match="varints"):
        onnx_writer.write(
            checkpoint, {"h": uniform((2, 4), 2.0)}, tmp_path / "o.onnx", WriteOptions({})
        )


def test_an_external_tensor_without_a_length_takes_what_its_shape_needs(tmp_path: Path) -> None:
    path, weights = _external(tmp_path, one_file=True)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        kept = [e for e in tensor.external_data if e.key != "length"]
        del tensor.external_data[:]
        tensor.external_data.extend(kept)
    path.write_bytes(model.SerializeToString())
    _check_values(path, weights)
