"""A bounded reader of the protobuf wire format, for ONNX files: messages as field lists
with the byte span of every payload, large byte fields never read into memory.

ONNX models are protobuf messages (`onnx.proto`). Initializer data can be gigabytes inline
(`raw_data`) or in other files (`external_data`); this reader records where each payload
lies (`Span`) and reads only the small fields a graph is made of: names, shapes,
attributes, types. Every length is checked against the bytes that enclose it, nesting is
limited, and so are the number of fields and the size of what is read into memory.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
MAX_DEPTH = 64  # nested messages (a subgraph of a subgraph adds three levels)
MAX_FIELDS = 50_000_000  # fields parsed in one file
MAX_STRING = 1 << 26  # a name, a doc string or an attribute's bytes read into memory
WINDOW = 1 << 20  # bytes read from the file at a time


class ProtoError(ValueError):
    """The bytes are not a well-formed message of the expected kind (a one-line reason)."""


@dataclass(frozen=True)
class Span:
    """Bytes `[offset, offset + length)` of the file, not read."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


class Message:
    """One parsed message: `fields` maps a field name to its values in file order (ints,
    floats, strings, `Span`s, `Message`s, or `Packed` runs); `tag` is where the field that
    holds it starts in the file, `start`/`end` its payload."""

    __slots__ = ("end", "fields", "kind", "number", "start", "tag")

    def __init__(self, kind: str, number: int, tag: int, start: int, end: int) -> None:
        self.kind = kind
        self.number = number  # the field number it is held under
        self.tag = tag
        self.start = start
        self.end = end
        self.fields: dict[str, list[Any]] = {}

    def one(self, name: str, default: Any = None) -> Any:
        """The field's value (the last one, as protobuf merges a repeated scalar)."""
        values = self.fields.get(name)
        return values[-1] if values else default

    def all(self, name: str) -> list[Any]:
        return self.fields.get(name, [])

    def children(self) -> Iterator[Message]:
        for values in self.fields.values():
            for value in values:
                if isinstance(value, Message):
                    yield value


@dataclass(frozen=True)
class Packed:
    """A run of a repeated scalar field: packed (`wire` LENGTH) or one element (`wire` its
    own type), located in the file and decoded on demand."""

    wire: int
    span: Span


# -- the schema: field number -> (name, kind); a kind is a scalar kind or a message name,
# and a name ending in "*" is repeated. Fields not listed are checked and skipped.
# Scalar kinds: int (varint), str (UTF-8 read into memory), bytes (a Span), f32, i64s/f32s/
# f64s/u64s/i32s (repeated scalars kept as Packed runs).
SCHEMA: dict[str, dict[int, tuple[str, str]]] = {
    "Model": {
        1: ("ir_version", "int"),
        2: ("producer_name", "str"),
        3: ("producer_version", "str"),
        4: ("domain", "str"),
        5: ("model_version", "int"),
        7: ("graph", "Graph"),
        8: ("opset_import*", "OpSet"),
        14: ("metadata_props*", "Entry"),
        20: ("training_info*", "Training"),
        25: ("functions*", "Function"),
    },
    "Graph": {
        1: ("node*", "Node"),
        2: ("name", "str"),
        5: ("initializer*", "Tensor"),
        15: ("sparse_initializer*", "Sparse"),
        11: ("input*", "ValueInfo"),
        12: ("output*", "ValueInfo"),
        13: ("value_info*", "ValueInfo"),
        16: ("metadata_props*", "Entry"),
    },
    "Node": {
        1: ("input*", "str"),
        2: ("output*", "str"),
        3: ("name", "str"),
        4: ("op_type", "str"),
        7: ("domain", "str"),
        8: ("overload", "str"),
        5: ("attribute*", "Attribute"),
    },
    "Attribute": {
        1: ("name", "str"),
        20: ("type", "int"),
        2: ("f", "f32"),
        3: ("i", "int"),
        4: ("s", "bytes"),
        5: ("t", "Tensor"),
        6: ("g", "Graph"),
        22: ("sparse_tensor", "Sparse"),
        7: ("floats", "f32s"),
        8: ("ints", "i64s"),
        9: ("strings*", "bytes"),
        10: ("tensors*", "Tensor"),
        11: ("graphs*", "Graph"),
        23: ("sparse_tensors*", "Sparse"),
        21: ("ref_attr_name", "str"),
    },
    "Tensor": {
        1: ("dims", "i64s"),
        2: ("data_type", "int"),
        4: ("float_data", "f32s"),
        5: ("int32_data", "i32s"),
        6: ("string_data*", "bytes"),
        7: ("int64_data", "i64s"),
        8: ("name", "str"),
        9: ("raw_data", "bytes"),
        10: ("double_data", "f64s"),
        11: ("uint64_data", "u64s"),
        13: ("external_data*", "Entry"),
        14: ("data_location", "int"),
    },
    "Sparse": {1: ("values", "Tensor"), 2: ("indices", "Tensor"), 3: ("dims", "i64s")},
    "ValueInfo": {1: ("name", "str"), 2: ("type", "Type")},
    "Type": {1: ("tensor_type", "TensorType"), 8: ("sparse_tensor_type", "TensorType")},
    "TensorType": {1: ("elem_type", "int"), 2: ("shape", "Shape")},
    "Shape": {1: ("dim*", "Dim")},
    "Dim": {1: ("dim_value", "int"), 2: ("dim_param", "str")},
    "Entry": {1: ("key", "str"), 2: ("value", "str")},
    "OpSet": {1: ("domain", "str"), 2: ("version", "int")},
    "Function": {
        1: ("name", "str"),
        4: ("input*", "str"),
        5: ("output*", "str"),
        7: ("node*", "Node"),
        9: ("opset_import*", "OpSet"),
        10: ("domain", "str"),
        11: ("attribute_proto*", "Attribute"),
    },
    "Training": {1: ("initialization", "Graph"), 2: ("algorithm", "Graph")},
}
# The wire type each scalar kind takes when it is not packed.
SCALAR_WIRE = {
    "int": VARINT,
    "str": LENGTH,
    "bytes": LENGTH,
    "f32": FIXED32,
    "i64s": VARINT,
    "i32s": VARINT,
    "u64s": VARINT,
    "f32s": FIXED32,
    "f64s": FIXED64,
}


class FileBytes:
    """Reads of a file through a moving window (never the whole file)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._start = 0
        self._window = b""

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ProtoError(f"a field runs past the end of the file (byte {offset + length})")
        end = offset + length
        if self._start <= offset and end <= self._start + len(self._window):
            begin = offset - self._start
            return self._window[begin : begin + length]
        if length > WINDOW:
            return _pread_all(self.fd, length, offset)
        self._start = offset
        self._window = _pread_all(self.fd, min(WINDOW, self.size - offset), offset)
        return self._window[:length]

    def varint(self, offset: int, limit: int) -> tuple[int, int]:
        """(value, offset after it) of the varint at `offset`, which must end before `limit`."""
        chunk = self.read(offset, min(10, limit - offset))
        value = 0
        for index, byte in enumerate(chunk):
            value |= (byte & 0x7F) << (7 * index)
            if byte < 0x80:
                if index == 9 and byte > 1:
                    raise ProtoError(f"a varint at byte {offset} overflows 64 bits")
                return value, offset + index + 1
        raise ProtoError(f"a varint at byte {offset} runs past its message")


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    done = 0
    while done < length:
        part = os.pread(fd, length - done, offset + done)
        if not part:
            raise ProtoError("the file ended early (truncated while reading?)")
        parts.append(part)
        done += len(part)
    return b"".join(parts)


class Parser:
    """Parses messages of SCHEMA from a file, within the limits above."""

    def __init__(self, data: FileBytes) -> None:
        self.data = data
        self.fields = 0

    def message(
        self, kind: str, start: int, end: int, depth: int = 0, tag: int = 0, number: int = 0
    ) -> Message:
        if depth > MAX_DEPTH:
            raise ProtoError(f"messages nested more than {MAX_DEPTH} deep")
        schema = SCHEMA[kind]
        message = Message(kind, number, tag, start, end)
        position = start
        data = self.data
        while position < end:
            field_start = position
            key, position = data.varint(position, end)
            number_, wire = key >> 3, key & 7
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise ProtoError(f"more than {MAX_FIELDS} fields")
            if number_ == 0:
                raise ProtoError(f"field number 0 at byte {field_start}")
            entry = schema.get(number_)
            if wire == LENGTH:
                length, position = data.varint(position, end)
                if length > end - position:
                    raise ProtoError(
                        f"a field of {length} bytes at byte {field_start} runs past its "
                        f"message (which ends at byte {end})"
                    )
                payload = (position, position + length)
                position += length
            elif wire == VARINT:
                value, position = data.varint(position, end)
                payload = (value, value)
            elif wire in (FIXED32, FIXED64):
                width = 4 if wire == FIXED32 else 8
                if position + width > end:
                    raise ProtoError(f"a fixed-width field at byte {field_start} runs past its end")
                payload = (position, position + width)
                position += width
            else:  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist
                raise ProtoError(f"wire type {wire} at byte {field_start}")
            if entry is None:
                continue
            name, value_kind = entry
            repeated = name.endswith("*")
            name = name.rstrip("*")
            value = self._value(value_kind, wire, payload, depth, field_start, number_)
            if repeated or value_kind in PACKED_KINDS:
                message.fields.setdefault(name, []).append(value)
            else:
                message.fields[name] = [value]
        return message

    def _value(
        self, kind: str, wire: int, payload: tuple[int, int], depth: int, tag: int, number: int
    ) -> Any:
        begin, finish = payload
        if kind in SCHEMA:
            if wire != LENGTH:
                raise ProtoError(f"a {kind} message at byte {tag} has wire type {wire}")
            return self.message(kind, begin, finish, depth + 1, tag, number)
        if kind in PACKED_KINDS:
            if wire == LENGTH:
                return Packed(LENGTH, Span(begin, finish - begin))
            if wire != SCALAR_WIRE[kind]:
                raise ProtoError(f"a repeated field at byte {tag} has wire type {wire}")
            if wire == VARINT:
                return Packed(VARINT, Span(-1, begin))  # the value itself, kept in `length`
            return Packed(wire, Span(begin, finish - begin))
        if wire != SCALAR_WIRE[kind]:
            raise ProtoError(f"a field at byte {tag} has wire type {wire}, expected {kind}")
        if kind == "int":
            return _signed(begin)
        if kind == "f32":
            return struct.unpack("<f", self.data.read(begin, 4))[0]
        if kind == "bytes":
            return Span(begin, finish - begin)
        # str
        if finish - begin > MAX_STRING:
            raise ProtoError(f"a string of {finish - begin} bytes at byte {tag}")
        try:
            return self.data.read(begin, finish - begin).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtoError(f"a string at byte {tag} is not UTF-8") from None


PACKED_KINDS = frozenset(("i64s", "i32s", "u64s", "f32s", "f64s"))


def _signed(value: int) -> int:
    """A varint read as int64 (negative numbers are ten-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def read_string(data: FileBytes, span: Span) -> bytes:
    if span.length > MAX_STRING:
        raise ProtoError(f"a field of {span.length} bytes is too large to read")
    return data.read(span.offset, span.length)


def packed_ints(
    data: FileBytes, runs: list[Packed], signed: bool = True, limit: int = 1 << 24
) -> list[int]:
    """The values of a repeated varint field (int64, int32, uint64), at most `limit`."""
    values: list[int] = []
    for run in runs:
        if run.wire == VARINT:
            values.append(_signed(run.span.length) if signed else run.span.length)
            continue
        if run.wire != LENGTH:
            raise ProtoError("a repeated integer field holds fixed-width values")
        position, end = run.span.offset, run.span.end
        chunk = read_string(data, run.span)
        index = 0
        while index < len(chunk):
            value = 0
            shift = 0
            while True:
                if index >= len(chunk) or shift > 63:
                    raise ProtoError(
                        f"a packed varint runs past its field (bytes {position}..{end})"
                    )
                byte = chunk[index]
                index += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            values.append(_signed(value) if signed else value)
            if len(values) > limit:
                raise ProtoError(f"more than {limit} values in a repeated integer field")
    return values


def fixed_runs(runs: list[Packed], width: int) -> list[Span]:
    """The byte spans of a repeated fixed-width field (floats, doubles)."""
    spans = []
    for run in runs:
        if run.wire == VARINT or run.span.length % width:
            raise ProtoError(f"a repeated {width * 8}-bit field is not a whole number of values")
        spans.append(run.span)
    return spans


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_length_field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | LENGTH) + encode_varint(len(payload)) + payload


def encode_entry(number: int, key: str, value: str) -> bytes:
    """A `StringStringEntryProto` (key = 1, value = 2) held under field `number`."""
    body = encode_length_field(1, key.encode("utf-8")) + encode_length_field(
        2, value.encode("utf-8")
    )
    return encode_length_field(number, body)
