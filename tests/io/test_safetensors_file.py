"""Single safetensors files: reading what the reference library wrote, and strict header checks.

Every corrupt file must be refused at open time with an `InputError` that names the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import write_raw_safetensors, write_safetensors
from weissi_cli.errors import InputError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.dtypes import decode
from weissi_cli.io.safetensors_file import MAX_HEADER_BYTES, SafetensorsCheckpoint

FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def float_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        f"layer.{index}.weight": torch.randn(3, 5, generator=generator, dtype=torch.float64).to(
            dtype
        )
        for index, dtype in enumerate(FLOAT_DTYPES)
    }


def as_float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.to(torch.float64).numpy()


def open_file(path: Path) -> SafetensorsCheckpoint:
    return SafetensorsCheckpoint(path)


def refused(path: Path) -> str:
    """The message of the InputError raised when opening `path`."""
    with pytest.raises(InputError) as caught:
        SafetensorsCheckpoint(path).close()
    message = str(caught.value)
    assert str(path) in message
    return message


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# --- valid files ------------------------------------------------------------------------


def test_every_float_dtype_reads_back_as_the_reference_library_loads_it(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", float_state())
    expected = load_file(str(path))
    with open_file(path) as checkpoint:
        for info in checkpoint.tensors:
            values = decode(checkpoint.read_raw(info.name, 0, info.numel), info.dtype)
            assert np.array_equal(
                values.astype(np.float64).reshape(info.shape), as_float64(expected[info.name])
            )


def test_tensor_infos_carry_torch_dtype_names_and_shapes(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", float_state())
    with open_file(path) as checkpoint:
        described = [(info.name, info.shape, info.dtype) for info in checkpoint.tensors]
    assert described == [
        ("layer.0.weight", (3, 5), "float64"),
        ("layer.1.weight", (3, 5), "float32"),
        ("layer.2.weight", (3, 5), "float16"),
        ("layer.3.weight", (3, 5), "bfloat16"),
    ]


def test_bfloat16_comes_back_as_uint16_bits(tmp_path: Path) -> None:
    tensor = torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16)
    path = write_safetensors(tmp_path / "m.safetensors", {"w": tensor})
    with open_file(path) as checkpoint:
        raw = checkpoint.read_raw("w", 0, 3)
    assert raw.dtype == np.uint16
    assert raw.tolist() == tensor.view(torch.int16).numpy().view(np.uint16).tolist()


def test_integer_and_bool_tensors_are_listed_with_their_dtype_names(tmp_path: Path) -> None:
    state = {
        "a.int64": torch.arange(4, dtype=torch.int64),
        "b.int32": torch.arange(3, dtype=torch.int32),
        "c.int8": torch.arange(2, dtype=torch.int8),
        "d.uint8": torch.arange(5, dtype=torch.uint8),
        "e.bool": torch.tensor([True, False]),
        "f.weight": torch.ones(2, 2),
    }
    path = write_safetensors(tmp_path / "m.safetensors", state)
    with open_file(path) as checkpoint:
        dtypes = {info.name: info.dtype for info in checkpoint.tensors}
        supported = [info.name for info in checkpoint.tensors if info.is_supported_float]
    assert dtypes == {
        "a.int64": "int64",
        "b.int32": "int32",
        "c.int8": "int8",
        "d.uint8": "uint8",
        "e.bool": "bool",
        "f.weight": "float32",
    }
    assert supported == ["f.weight"]


def test_tensor_infos_report_sizes_in_elements_and_bytes(tmp_path: Path) -> None:
    state = {"w": torch.zeros(3, 4, dtype=torch.bfloat16), "i": torch.zeros(5, dtype=torch.int64)}
    path = write_safetensors(tmp_path / "m.safetensors", state)
    with open_file(path) as checkpoint:
        sizes = {info.name: (info.numel, info.nbytes) for info in checkpoint.tensors}
    assert sizes == {"w": (12, 24), "i": (5, 40)}


def test_parameter_count_and_file_bytes(tmp_path: Path) -> None:
    state = {"a": torch.zeros(3, 4), "b": torch.zeros(7, dtype=torch.float16)}
    path = write_safetensors(tmp_path / "m.safetensors", state)
    with open_file(path) as checkpoint:
        assert checkpoint.parameter_count == 19
        assert checkpoint.file_bytes == path.stat().st_size


def test_metadata_is_read(tmp_path: Path) -> None:
    path = write_safetensors(
        tmp_path / "m.safetensors", {"w": torch.ones(2)}, metadata={"format": "pt", "k": "v"}
    )
    with open_file(path) as checkpoint:
        assert checkpoint.metadata == {"format": "pt", "k": "v"}


def test_a_file_without_metadata_has_empty_metadata(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)})
    with open_file(path) as checkpoint:
        assert checkpoint.metadata == {}


def test_tensors_are_in_natural_name_order(tmp_path: Path) -> None:
    names = ["net.10.weight", "net.2.weight", "net.1.bias", "net.1.weight", "head.weight"]
    path = write_safetensors(tmp_path / "m.safetensors", {n: torch.ones(1) for n in names})
    with open_file(path) as checkpoint:
        order = [info.name for info in checkpoint.tensors]
    assert order == ["head.weight", "net.1.bias", "net.1.weight", "net.2.weight", "net.10.weight"]


def test_natural_order_does_not_depend_on_the_layout_in_the_file(tmp_path: Path) -> None:
    # Data laid out net.10 first; the header lists it first too.
    header = {
        "net.10.w": entry("F32", [1], 0, 4),
        "net.9.w": entry("F32", [1], 4, 8),
        "net.2.w": entry("F32", [1], 8, 12),
    }
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(12))
    with open_file(path) as checkpoint:
        order = [info.name for info in checkpoint.tensors]
    assert order == ["net.2.w", "net.9.w", "net.10.w"]


def test_contains_and_info_look_tensors_up_by_name(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2, 3)})
    with open_file(path) as checkpoint:
        assert "w" in checkpoint
        assert "x" not in checkpoint
        assert checkpoint.info("w").shape == (2, 3)


def test_read_all_gives_the_tensor_in_its_shape(tmp_path: Path) -> None:
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    path = write_safetensors(tmp_path / "m.safetensors", {"w": tensor})
    with open_file(path) as checkpoint:
        assert checkpoint.read_all("w").tolist() == tensor.tolist()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_chunked_reads_at_offsets_equal_slices_of_the_tensor(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    tensor = torch.randn(101, generator=torch.Generator().manual_seed(1)).to(dtype)
    neighbour = torch.ones(7, dtype=dtype)  # another tensor before it in the data section
    path = write_safetensors(tmp_path / "m.safetensors", {"a": neighbour, "b": tensor})
    expected = as_float64(tensor)
    with open_file(path) as checkpoint:
        for start, count in [(0, 101), (0, 1), (13, 40), (100, 1), (64, 37), (50, 0)]:
            values = decode(checkpoint.read_raw("b", start, count), checkpoint.info("b").dtype)
            assert values.astype(np.float64).tolist() == expected[start : start + count].tolist()


def test_read_into_a_buffer_returns_a_view_of_it(tmp_path: Path) -> None:
    tensor = torch.arange(10, dtype=torch.float32)
    path = write_safetensors(tmp_path / "m.safetensors", {"w": tensor})
    buffer = bytearray(64)
    with open_file(path) as checkpoint:
        chunk = checkpoint.read_raw("w", 2, 5, buffer)
    assert chunk.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert np.frombuffer(buffer, np.float32, count=5).tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_read_into_a_too_small_buffer_is_refused(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {"w": torch.zeros(10)})
    with open_file(path) as checkpoint, pytest.raises(ValueError, match="buffer"):
        checkpoint.read_raw("w", 0, 10, bytearray(39))


def test_empty_tensors_are_accepted(tmp_path: Path) -> None:
    state = {"empty": torch.zeros(0, 4), "w": torch.ones(2), "also_empty": torch.zeros(0)}
    path = write_safetensors(tmp_path / "m.safetensors", state)
    with open_file(path) as checkpoint:
        assert checkpoint.info("empty").shape == (0, 4)
        assert checkpoint.read_raw("empty", 0, 0).size == 0
        assert checkpoint.read_all("w").tolist() == [1.0, 1.0]


def test_a_file_with_no_tensors_opens_empty(tmp_path: Path) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", {"__metadata__": {"a": "b"}})
    with open_file(path) as checkpoint:
        assert checkpoint.tensors == ()
        assert checkpoint.metadata == {"a": "b"}


def test_a_header_padded_with_spaces_is_accepted(tmp_path: Path) -> None:
    header = json.dumps({"w": entry("F32", [2], 0, 8)}).encode() + b"       "
    path = write_raw_safetensors(
        tmp_path / "m.safetensors", header, np.ones(2, np.float32).tobytes()
    )
    with open_file(path) as checkpoint:
        assert checkpoint.read_all("w").tolist() == [1.0, 1.0]


def test_open_checkpoint_dispatches_on_the_suffix(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)})
    with open_checkpoint(path) as checkpoint:
        assert isinstance(checkpoint, SafetensorsCheckpoint)
        assert checkpoint.format == "safetensors"


def test_close_releases_the_file_descriptor(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)})
    checkpoint = open_file(path)
    checkpoint.close()
    assert checkpoint.fd == -1
    checkpoint.close()  # closing twice is harmless


# --- corrupt files ----------------------------------------------------------------------


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    refused(tmp_path / "absent.safetensors")


def test_a_missing_file_is_an_input_error_through_open_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="absent.safetensors"):
        open_checkpoint(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("size", [0, 1, 7])
def test_a_file_shorter_than_eight_bytes_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x01" * size)
    assert "too short" in refused(path)


def test_a_header_length_beyond_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    header = {"w": entry("F32", [1], 0, 4)}
    raw = json.dumps(header).encode()
    path = write_raw_safetensors(tmp_path / "m.safetensors", raw, bytes(4), len(raw) + 5)
    refused(path)


def test_a_huge_header_length_is_refused(tmp_path: Path) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", b"{}", header_length=2**63)
    refused(path)


def test_a_valid_header_above_100_mb_is_refused(tmp_path: Path) -> None:
    # The header is well-formed JSON; only its size is wrong (the reference limit).
    filler = "x" * (MAX_HEADER_BYTES + 1 - len('{"__metadata__":{"pad":""}}'))
    header = json.dumps({"__metadata__": {"pad": filler}}, separators=(",", ":")).encode()
    assert len(header) == MAX_HEADER_BYTES + 1
    path = write_raw_safetensors(tmp_path / "m.safetensors", header)
    assert "header" in refused(path)


def test_the_header_limit_is_100_mb() -> None:
    assert MAX_HEADER_BYTES == 100_000_000


def test_a_header_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", b'{"w": {"dtype": "F32",')
    assert "JSON" in refused(path)


def test_a_header_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", b'{"\xff": 1}')
    refused(path)


@pytest.mark.parametrize("header", [[], "text", 3, None])
def test_a_header_that_is_not_a_json_object_is_refused(tmp_path: Path, header: object) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", header)
    assert "not an object" in refused(path)


@pytest.mark.parametrize(
    "metadata", [{"a": 1}, {"a": None}, {"a": ["b"]}, {"a": {"b": "c"}}, ["a"], "a", 3]
)
def test_metadata_that_does_not_map_strings_to_strings_is_refused(
    tmp_path: Path, metadata: object
) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", {"__metadata__": metadata})
    assert "__metadata__" in refused(path)


@pytest.mark.parametrize("missing", ["dtype", "shape", "data_offsets"])
def test_an_entry_missing_a_field_is_refused(tmp_path: Path, missing: str) -> None:
    fields = entry("F32", [2], 0, 8)
    del fields[missing]
    path = write_raw_safetensors(tmp_path / "m.safetensors", {"w": fields}, bytes(8))
    assert "'w'" in refused(path)


@pytest.mark.parametrize("value", [5, "F32", [0, 4], None])
def test_an_entry_that_is_not_an_object_is_refused(tmp_path: Path, value: object) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", {"w": value}, bytes(4))
    assert "'w'" in refused(path)


def test_a_dtype_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    path = write_raw_safetensors(tmp_path / "m.safetensors", {"w": entry(4, [1], 0, 4)}, bytes(4))
    refused(path)


@pytest.mark.parametrize(
    "shape", [[-1], [2, -3], [True], [1, False], [2.0], ["2"], [None], "2", 2, None, {"0": 2}]
)
def test_a_shape_that_is_not_a_list_of_non_negative_ints_is_refused(
    tmp_path: Path, shape: object
) -> None:
    path = write_raw_safetensors(
        tmp_path / "m.safetensors", {"w": entry("F32", shape, 0, 8)}, bytes(8)
    )
    assert "shape" in refused(path)


@pytest.mark.parametrize(
    "offsets", [[0], [0, 8, 8], [-8, 0], [8, 0], [0.0, 8.0], [False, True], "0,8", None]
)
def test_malformed_data_offsets_are_refused(tmp_path: Path, offsets: object) -> None:
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": offsets}}
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(8))
    assert "data_offsets" in refused(path)


@pytest.mark.parametrize(
    ("dtype", "shape", "span"),
    [("F32", [2, 3], 20), ("F32", [2, 3], 28), ("BF16", [4], 4), ("F64", [1], 4), ("I64", [2], 8)],
)
def test_data_offsets_that_disagree_with_shape_and_dtype_are_refused(
    tmp_path: Path, dtype: str, shape: list[int], span: int
) -> None:
    path = write_raw_safetensors(
        tmp_path / "m.safetensors", {"w": entry(dtype, shape, 0, span)}, bytes(span)
    )
    assert "needs" in refused(path)


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(12))
    assert "overlaps" in refused(path)


def test_two_tensors_on_the_same_bytes_are_refused(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8)}
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(8))
    assert "overlaps" in refused(path)


def test_a_gap_between_tensors_is_refused(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(20))
    assert "unused bytes" in refused(path)


def test_a_gap_before_the_first_tensor_is_refused(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 4, 12)}
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(12))
    assert "unused bytes" in refused(path)


def test_tensors_running_past_the_end_of_the_file_are_refused(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [4], 8, 24)}
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(20))
    assert "truncated" in refused(path)


def test_trailing_bytes_after_the_last_tensor_are_refused(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8)}
    path = write_raw_safetensors(tmp_path / "m.safetensors", header, bytes(9))
    assert "after the last tensor" in refused(path)


def test_duplicate_tensor_names_in_the_header_are_refused(tmp_path: Path) -> None:
    first = json.dumps(entry("F32", [1], 0, 4))
    second = json.dumps(entry("F32", [1], 4, 8))
    raw = f'{{"w": {first}, "w": {second}}}'.encode()
    path = write_raw_safetensors(tmp_path / "m.safetensors", raw, bytes(8))
    assert "twice" in refused(path)


def test_a_duplicate_metadata_key_is_refused(tmp_path: Path) -> None:
    raw = b'{"__metadata__": {"a": "1", "a": "2"}}'
    path = write_raw_safetensors(tmp_path / "m.safetensors", raw)
    refused(path)


@pytest.mark.parametrize("cut", [1, 4, 13, 40])
def test_a_file_truncated_inside_the_data_fails_at_open_time(tmp_path: Path, cut: int) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", float_state())
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    assert "truncated" in refused(path)


def test_a_file_truncated_inside_the_header_fails_at_open_time(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", float_state())
    path.write_bytes(path.read_bytes()[:30])
    refused(path)


def test_a_refused_file_does_not_leak_its_descriptor(tmp_path: Path) -> None:
    import os

    path = write_raw_safetensors(tmp_path / "m.safetensors", [])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(InputError):
            SafetensorsCheckpoint(path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_file_that_shrinks_after_opening_fails_with_an_input_error_on_read(
    tmp_path: Path,
) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(100)})
    with open_file(path) as checkpoint:
        os_size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.truncate(os_size - 200)
        with pytest.raises(InputError, match="ended early"):
            checkpoint.read_raw("w", 0, 100)


# --- the format's dtypes ----------------------------------------------------------------

# Every dtype code the format defines, with its size in bits (the reference parser refuses
# any other code).
DEFINED_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


@pytest.mark.parametrize(("code", "bits"), sorted(DEFINED_BITS.items()))
def test_every_dtype_the_format_defines_is_read_with_its_size(
    tmp_path: Path, code: str, bits: int
) -> None:
    from safetensors import safe_open

    nbytes = 8 * bits // 8  # eight elements end on a byte for every size
    path = write_raw_safetensors(
        tmp_path / "m.safetensors", {"t": entry(code, [8], 0, nbytes)}, b"\1" * nbytes
    )
    with safe_open(str(path), "np") as reference:  # the reference library reads it too
        assert list(reference.keys()) == ["t"]
    with open_file(path) as checkpoint:
        info = checkpoint.info("t")
        assert info.nbytes == nbytes
        assert info.is_supported_float == (code in ("F64", "F32", "F16", "BF16"))


@pytest.mark.parametrize(("code", "count"), [("F4", 3), ("F6_E2M3", 5), ("F6_E3M2", 1)])
def test_a_sub_byte_tensor_that_ends_inside_a_byte_is_refused(
    tmp_path: Path, code: str, count: int
) -> None:
    bits = DEFINED_BITS[code] * count
    nbytes = -(-bits // 8)
    path = write_raw_safetensors(
        tmp_path / "m.safetensors", {"t": entry(code, [count], 0, nbytes)}, b"\0" * nbytes
    )
    assert "ends inside a byte" in refused(path)


@pytest.mark.parametrize("code", ["C128", "I4", "U4", "Q8", "f32", "F8", "bool", "FOO", ""])
def test_a_dtype_the_format_does_not_define_is_refused(tmp_path: Path, code: str) -> None:
    path = write_raw_safetensors(
        tmp_path / "m.safetensors", {"t": entry(code, [2], 0, 8)}, b"\0" * 8
    )
    assert "is not a safetensors dtype" in refused(path)
