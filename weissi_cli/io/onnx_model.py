"""An ONNX model as weissi reads it: the graph (nodes, attributes, types) and where each
initializer's bytes lie, inline or in external data files inside the model's folder.

Parsed with `onnx_proto` (no dependency on the `onnx` package); nothing is executed and no
initializer is read here. External data locations must name regular files inside the
model's folder (no absolute paths, no `..`, no links that lead out), and every tensor's
bytes must lie within its file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import InputError
from weissi_cli.io.onnx_proto import (
    FileBytes,
    Message,
    Packed,
    Parser,
    ProtoError,
    Span,
    fixed_runs,
    packed_ints,
    read_string,
)

# TensorProto.DataType -> (dtype name, bytes per element; 0 where not a whole byte)
ONNX_DTYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 4),
    2: ("uint8", 1),
    3: ("int8", 1),
    4: ("uint16", 2),
    5: ("int16", 2),
    6: ("int32", 4),
    7: ("int64", 8),
    8: ("string", 0),
    9: ("bool", 1),
    10: ("float16", 2),
    11: ("float64", 8),
    12: ("uint32", 4),
    13: ("uint64", 8),
    14: ("complex64", 8),
    15: ("complex128", 16),
    16: ("bfloat16", 2),
    17: ("float8_e4m3fn", 1),
    18: ("float8_e4m3fnuz", 1),
    19: ("float8_e5m2", 1),
    20: ("float8_e5m2fnuz", 1),
    21: ("uint4", 0),
    22: ("int4", 0),
    23: ("float4_e2m1", 0),
}
DTYPE_CODES = {name: code for code, (name, _) in ONNX_DTYPES.items()}
MAX_DIMS = 64
MAX_ELEMENTS = 1 << 50
MAX_TYPED_ELEMENTS = 1 << 24  # values of a typed field (int32_data ...) decoded in memory
MAX_DATA_FILES = 8192


@dataclass(frozen=True)
class Initializer:
    """A tensor stored in the model: its description and where its bytes are.

    `storage`: "raw" (raw_data in the model file), "typed" (float_data or double_data, the
    little-endian values contiguous in the model file), "external" (a data file), or
    "decoded" (values held in varint fields, decoded into memory when read)."""

    name: str
    dims: tuple[int, ...]
    code: int
    storage: str
    file: Path
    offset: int
    length: int
    message: Message = field(compare=False, repr=False)

    @property
    def dtype(self) -> str:
        return ONNX_DTYPES.get(self.code, (f"onnx_type_{self.code}", 0))[0]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.dims:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * ONNX_DTYPES.get(self.code, ("", 0))[1]


@dataclass(frozen=True)
class ValueType:
    """A graph input's or value's tensor type: element type and dims (an int, a symbolic
    name, or None when unknown). `dims` is None when the rank is unknown."""

    elem_type: int
    dims: tuple[int | str | None, ...] | None


@dataclass(frozen=True)
class Node:
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any]


@dataclass
class OnnxModel:
    """A parsed model file (the data of its initializers stays where it is)."""

    path: Path
    size: int
    root: Message
    data: FileBytes
    opsets: dict[str, int]
    initializers: list[Initializer]
    inputs: list[tuple[str, ValueType | None]]
    outputs: list[str]
    value_types: dict[str, ValueType]
    nodes: list[Node]
    metadata: dict[str, str]
    data_files: dict[str, Path]  # location as written -> resolved file
    functions: set[tuple[str, str]]
    notes: list[str]


def parse_model(path: Path, fd: int) -> OnnxModel:
    """Parse the model file open at `fd` (InputError naming `path` if it is not one)."""
    size = os.fstat(fd).st_size
    data = FileBytes(fd, size)
    try:
        root = Parser(data).message("Model", 0, size)
        return _model(path, size, root, data)
    except ProtoError as error:
        raise InputError(f"{path}: not a valid ONNX model ({error})") from None


def _model(path: Path, size: int, root: Message, data: FileBytes) -> OnnxModel:
    graphs = root.all("graph")
    if not graphs:
        raise InputError(f"{path}: not an ONNX model (it holds no graph)")
    if root.one("ir_version") is None:
        raise InputError(f"{path}: not an ONNX model (no ir_version)")
    graph = graphs[-1]
    opsets = {
        str(entry.one("domain", "")): int(entry.one("version", 0))
        for entry in root.all("opset_import")
    }
    metadata = {
        str(entry.one("key", "")): str(entry.one("value", ""))
        for entry in root.all("metadata_props")
    }
    folder = path.parent
    data_files: dict[str, Path] = {}
    initializers = []
    names: set[str] = set()
    for message in graph.all("initializer"):
        initializer = _initializer(path, message, data, folder, data_files)
        if initializer.name in names:
            raise InputError(f"{path}: initializer {initializer.name!r} appears twice")
        names.add(initializer.name)
        initializers.append(initializer)
    notes = []
    sparse = graph.all("sparse_initializer")
    if sparse:
        notes.append(f"{len(sparse)} sparse initializer(s) are not read (dense tensors only)")
    nodes = [_node(path, message, data) for message in graph.all("node")]
    value_types: dict[str, ValueType] = {}
    for info in [*graph.all("input"), *graph.all("output"), *graph.all("value_info")]:
        kind = _value_type(info)
        if kind is not None:
            value_types[str(info.one("name", ""))] = kind
    inputs = [
        (str(info.one("name", "")), value_types.get(str(info.one("name", ""))))
        for info in graph.all("input")
        if str(info.one("name", "")) not in names
    ]
    outputs = [str(info.one("name", "")) for info in graph.all("output")]
    functions = {(str(f.one("domain", "")), str(f.one("name", ""))) for f in root.all("functions")}
    # every external tensor anywhere (subgraphs, constants, functions) must resolve too
    known = {id(i.message) for i in initializers}
    for message in _tensors_below(root):
        if id(message) not in known:
            _external_file(path, message, folder, data_files)
    return OnnxModel(
        path=path,
        size=size,
        root=root,
        data=data,
        opsets=opsets,
        initializers=initializers,
        inputs=inputs,
        outputs=outputs,
        value_types=value_types,
        nodes=nodes,
        metadata=metadata,
        data_files=data_files,
        functions=functions,
        notes=notes,
    )


def _tensors_below(message: Message) -> list[Message]:
    found = []
    stack = [message]
    while stack:
        current = stack.pop()
        for child in current.children():
            if child.kind == "Tensor":
                found.append(child)
            else:
                stack.append(child)
    return found


def _dims(path: Path, message: Message, data: FileBytes, what: str) -> tuple[int, ...]:
    dims = tuple(packed_ints(data, message.all("dims"), limit=MAX_DIMS))
    if len(dims) > MAX_DIMS or any(size < 0 for size in dims):
        raise InputError(f"{path}: {what} has dims {dims}; dims must be non-negative")
    count = 1
    for size in dims:
        count *= size
        if count > MAX_ELEMENTS:
            raise InputError(f"{path}: {what} declares {dims}, more elements than any file holds")
    return dims


def _initializer(
    path: Path, message: Message, data: FileBytes, folder: Path, data_files: dict[str, Path]
) -> Initializer:
    name = str(message.one("name", ""))
    what = f"initializer {name!r}"
    if not name:
        raise InputError(f"{path}: an initializer has no name")
    dims = _dims(path, message, data, what)
    code = int(message.one("data_type", 0))
    itemsize = ONNX_DTYPES.get(code, ("", 0))[1]
    numel = 1
    for size in dims:
        numel *= size
    nbytes = numel * itemsize
    external = int(message.one("data_location", 0)) == 1
    if external:
        file, offset, length = _external_file(path, message, folder, data_files, nbytes)
        if itemsize and length != nbytes:
            raise InputError(
                f"{path}: {what} of shape {dims} needs {nbytes} bytes but its external data "
                f"holds {length}"
            )
        return Initializer(name, dims, code, "external", file, offset, length, message)
    raw = message.one("raw_data")
    if raw is not None:
        if itemsize and raw.length != nbytes:
            raise InputError(
                f"{path}: {what} of shape {dims} needs {nbytes} bytes but raw_data holds "
                f"{raw.length}"
            )
        return Initializer(name, dims, code, "raw", path, raw.offset, raw.length, message)
    fixed = {1: ("float_data", 4), 11: ("double_data", 8)}.get(code)
    if fixed is not None:
        runs = message.all(fixed[0])
        spans = fixed_runs(runs, fixed[1]) if runs else []
        total = sum(span.length for span in spans)
        if total != nbytes:
            raise InputError(
                f"{path}: {what} of shape {dims} needs {numel} values but holds {total // fixed[1]}"
            )
        if len(spans) <= 1:
            offset = spans[0].offset if spans else 0
            return Initializer(name, dims, code, "typed", path, offset, nbytes, message)
    return Initializer(name, dims, code, "decoded", path, 0, nbytes, message)


def _external_file(
    path: Path,
    message: Message,
    folder: Path,
    data_files: dict[str, Path],
    nbytes: int | None = None,
) -> tuple[Path, int, int]:
    """(file, offset, length) of a tensor's external data, checked; without a `length`
    entry the tensor takes `nbytes` (what its shape needs), or the rest of the file."""
    name = str(message.one("name", ""))
    entries = {str(e.one("key", "")): str(e.one("value", "")) for e in message.all("external_data")}
    location = entries.get("location")
    if int(message.one("data_location", 0)) != 1 and location is None:
        return path, 0, 0
    if not location:
        raise InputError(f"{path}: tensor {name!r} has external data without a location")
    file = data_files.get(location)
    if file is None:
        if len(data_files) >= MAX_DATA_FILES:
            raise InputError(f"{path}: more than {MAX_DATA_FILES} external data files")
        file = resolve_location(path, folder, location)
        data_files[location] = file
    try:
        offset = int(entries.get("offset", "0"))
        size = file.stat().st_size
        if "length" in entries:
            length = int(entries["length"])
        else:
            length = nbytes if nbytes else size - offset
    except ValueError:
        raise InputError(
            f"{path}: tensor {name!r} has a non-numeric external data offset or length"
        ) from None
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(
            f"{path}: tensor {name!r} needs bytes {offset}..{offset + length} of {location}, "
            f"which holds {size} bytes (truncated?)"
        )
    return file, offset, length


def resolve_location(path: Path, folder: Path, location: str) -> Path:
    """The file an external data location names, refused unless it is a regular file inside
    the model's folder."""
    where = f"{path}: external data location {location!r}"
    pure = PurePosixPath(location.replace("\\", "/"))
    if pure.is_absolute() or (len(location) > 1 and location[1] == ":") or "\x00" in location:
        raise InputError(f"{where} is an absolute path; it must name a file in the model's folder")
    if ".." in pure.parts:
        raise InputError(f"{where} leads out of the model's folder ('..')")
    candidate = folder.joinpath(*pure.parts)
    try:
        real = candidate.resolve(strict=True)
        inside = real.is_relative_to(folder.resolve())
        status = os.stat(real)
    except FileNotFoundError:
        raise InputError(f"{where}: no such file beside the model") from None
    except (OSError, RuntimeError) as error:
        raise InputError(f"{where}: cannot be read ({error})") from None
    if not inside:
        raise InputError(f"{where} is a link that leads out of the model's folder (to {real})")
    if not stat.S_ISREG(status.st_mode):
        raise InputError(f"{where} is not a regular file")
    return real


def _node(path: Path, message: Message, data: FileBytes) -> Node:
    attributes = {}
    for attribute in message.all("attribute"):
        name = str(attribute.one("name", ""))
        attributes[name] = attribute_value(path, attribute, data)
    return Node(
        name=str(message.one("name", "")),
        op_type=str(message.one("op_type", "")),
        domain=str(message.one("domain", "")),
        inputs=tuple(str(i) for i in message.all("input")),
        outputs=tuple(str(o) for o in message.all("output")),
        attributes=attributes,
    )


def attribute_value(path: Path, attribute: Message, data: FileBytes) -> Any:
    """An attribute's value: int, float, bytes, a list of them, or a Message (tensors and
    graphs stay messages; `tensor_array` reads a tensor)."""
    kind = attribute.one("type", 0)
    if attribute.one("ref_attr_name") is not None:
        return None
    if kind == 1:
        return float(attribute.one("f", 0.0))
    if kind == 2:
        return int(attribute.one("i", 0))
    if kind == 3:
        span = attribute.one("s")
        return read_string(data, span) if span is not None else b""
    if kind in (4, 5, 11):
        return attribute.one({4: "t", 5: "g", 11: "sparse_tensor"}[kind])
    if kind == 6:
        spans = fixed_runs(attribute.all("floats"), 4)
        return [float(x) for s in spans for x in np.frombuffer(read_string(data, s), "<f4")]
    if kind == 7:
        return packed_ints(data, attribute.all("ints"))
    if kind == 8:
        return [read_string(data, span) for span in attribute.all("strings")]
    if kind in (9, 10, 12):
        return attribute.all({9: "tensors", 10: "graphs", 12: "sparse_tensors"}[kind])
    # an attribute without a type: take whichever value field it holds
    for name in ("i", "f"):
        if attribute.one(name) is not None:
            return attribute.one(name)
    if attribute.all("ints"):
        return packed_ints(data, attribute.all("ints"))
    for name in ("t", "g"):
        if attribute.one(name) is not None:
            return attribute.one(name)
    return None


def _value_type(info: Message) -> ValueType | None:
    kind = info.one("type")
    tensor = kind.one("tensor_type") if kind is not None else None
    if tensor is None:
        return None
    shape = tensor.one("shape")
    dims: tuple[int | str | None, ...] | None = None
    if shape is not None:
        found: list[int | str | None] = []
        for dim in shape.all("dim"):
            value = dim.one("dim_value")
            param = dim.one("dim_param")
            found.append(int(value) if value is not None else (str(param) if param else None))
        dims = tuple(found)
    return ValueType(int(tensor.one("elem_type", 0)), dims)


def tensor_array(
    model: OnnxModel, message: Message, limit: int = MAX_TYPED_ELEMENTS
) -> npt.NDArray[Any]:
    """A small tensor's values (constants, shapes): raw, typed or external data, decoded.
    InputError if it holds more than `limit` elements or is not a numeric type."""
    path = model.path
    name = str(message.one("name", ""))
    dims = _dims(path, message, model.data, f"tensor {name!r}")
    code = int(message.one("data_type", 0))
    numel = 1
    for size in dims:
        numel *= size
    if numel > limit:
        raise InputError(f"{path}: tensor {name!r} has {numel} elements, too many to read here")
    dtype_name, itemsize = ONNX_DTYPES.get(code, ("", 0))
    numpy_type = NUMPY_TYPES.get(dtype_name)
    if numpy_type is None:
        raise InputError(f"{path}: tensor {name!r} is of type {dtype_name or code}, not numeric")
    dtype = np.dtype(numpy_type).newbyteorder("<")
    if int(message.one("data_location", 0)) == 1:
        file, offset, length = _external_file(path, message, path.parent, model.data_files)
        if length != numel * itemsize:
            raise InputError(f"{path}: tensor {name!r} has external data of the wrong size")
        with open(file, "rb") as handle:
            handle.seek(offset)
            raw_bytes = handle.read(length)
        return np.frombuffer(raw_bytes, dtype).reshape(dims).copy()
    raw = message.one("raw_data")
    if raw is not None:
        if raw.length != numel * itemsize:
            raise InputError(f"{path}: tensor {name!r} has raw_data of the wrong size")
        return np.frombuffer(read_string(model.data, raw), dtype).reshape(dims).copy()
    values = typed_values(model.data, message, dtype_name, limit)
    if values.size != numel:
        raise InputError(f"{path}: tensor {name!r} holds {values.size} values for shape {dims}")
    return values.reshape(dims)


def typed_values(
    data: FileBytes, message: Message, dtype_name: str, limit: int
) -> npt.NDArray[Any]:
    """The values of a tensor stored in typed fields, as raw storage values (16-bit floats
    as their bits)."""
    numpy_type = NUMPY_TYPES[dtype_name]
    if dtype_name in ("float32", "float64"):
        width = 4 if dtype_name == "float32" else 8
        field_name = "float_data" if width == 4 else "double_data"
        spans = fixed_runs(message.all(field_name), width)
        chunks = [read_string(data, span) for span in spans]
        return np.frombuffer(b"".join(chunks), np.dtype(numpy_type).newbyteorder("<")).copy()
    if dtype_name == "int64":
        ints = packed_ints(data, message.all("int64_data"), limit=limit)
    elif dtype_name in ("uint64", "uint32"):
        ints = packed_ints(data, message.all("uint64_data"), signed=False, limit=limit)
    else:
        ints = packed_ints(data, message.all("int32_data"), limit=limit)
    array = np.array(ints, dtype=np.int64) if ints else np.zeros(0, np.int64)
    if dtype_name == "float16":  # int32_data holds the 16 bits of each value
        return array.astype(np.uint16).view(np.float16)
    with contextlib.suppress(OverflowError):
        return array.astype(numpy_type)
    raise ProtoError("a typed value is out of its type's range")


# numpy types of each readable dtype's storage (16-bit floats as bits, like `dtypes`)
NUMPY_TYPES: dict[str, Any] = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "bool": np.bool_,
    "float8_e4m3fn": np.uint8,
    "float8_e5m2": np.uint8,
}


__all__ = [
    "DTYPE_CODES",
    "ONNX_DTYPES",
    "Initializer",
    "Node",
    "OnnxModel",
    "Packed",
    "Span",
    "ValueType",
    "parse_model",
    "resolve_location",
    "tensor_array",
]
