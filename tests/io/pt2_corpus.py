"""Hostile `.pt2` archives built from a valid one: each carries a payload that creates a
marker file if anything runs it (unpickling, `eval`, an import, guard code, running the
program), or inflates to gigabytes. Also a zip writer that controls every size field, and
random mutations of the corpus for the fuzz suite."""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import random
import shlex
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

COMMANDS = ("inspect", "graph", "check", "diff", "rebalance")
MARKER_MODULE = "weissi_pt2_marker"  # imported by a hostile tree spec: creates the marker
BOMB_BYTES = 3_900 << 20  # what each zip bomb inflates to (under 4 GiB: no ZIP64 needed)


def arguments(command: str, path: Path, valid: Path, folder: Path) -> list[str]:
    """The command line that runs `command` on `path` (`diff` against `valid`, `rebalance`
    into `folder/out.pt2`)."""
    if command == "diff":
        return ["diff", str(path), str(valid)]
    if command == "rebalance":
        return ["rebalance", str(path), "-o", str(folder / "out.pt2")]
    return [command, str(path)]


class Touch:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@dataclass(frozen=True)
class Hostile:
    """A hostile archive and the member (or word) a refusal must name. `live` runs the
    payload the way torch would (to show that the test would catch it running)."""

    name: str
    path: Path
    names: str
    live: Callable[[Path], object] | None = None


@dataclass
class Member:
    """A zip member as written: `data` is the stored or raw-deflate bytes; `size` and `crc`
    are what the headers declare."""

    name: str
    data: bytes
    size: int
    crc: int
    deflated: bool = False


def stored(name: str, data: bytes) -> Member:
    return Member(name, data, len(data), zlib.crc32(data))


def write_zip(path: Path, members: list[Member], duplicates: int = 0) -> Path:
    """A zip with exactly the given headers; `duplicates` extra directory entries point at
    the last member's data (overlapping entries)."""
    out = io.BytesIO()
    directory = []
    for member in members:
        offset = out.tell()
        name = member.name.encode()
        method = 8 if member.deflated else 0
        fields = (20, 0, method, 0, 0x21, member.crc, len(member.data), member.size, len(name), 0)
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name + member.data)
        directory.append((fields, name, offset))
    for index in range(duplicates):
        fields, name, offset = directory[-1]
        alias = name + f".{index}".encode()
        directory.append(((*fields[:-2], len(alias), 0), alias, offset))
    start = out.tell()
    for fields, name, offset in directory:
        out.write(
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, offset) + name
        )
    size = out.tell() - start
    out.write(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(directory), len(directory), size, start, 0)
    )
    path.write_bytes(out.getvalue())
    return path


def zeros_bomb(name: str, size: int = BOMB_BYTES) -> Member:
    """`size` zero bytes as raw deflate (about 1 KB per MB), declared honestly."""
    data, crc = deflated_zeros(size)
    return Member(name, data, size, crc, deflated=True)


@functools.cache
def deflated_zeros(size: int) -> tuple[bytes, int]:
    """Raw deflate of `size` zero bytes, and their CRC-32."""
    chunk_size = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    # After a full flush the compressor starts afresh: the same input gives the same bytes.
    block = compressor.compress(bytes(chunk_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(size, chunk_size)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = block * count + tail.compress(bytes(rest)) + tail.flush()
    crc, zero = 0, bytes(chunk_size)
    for _ in range(count):
        crc = zlib.crc32(zero, crc)
    return data, zlib.crc32(bytes(rest), crc)


class Archive:
    """A valid archive's members, to be changed and written out."""

    def __init__(self, valid: Path) -> None:
        with zipfile.ZipFile(valid) as archive:
            self.root = archive.namelist()[0].split("/", 1)[0]
            self.members = {
                info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()
            }

    def json(self, name: str) -> Any:
        return json.loads(self.members[name])

    def set_json(self, name: str, value: Any) -> None:
        self.members[name] = json.dumps(value).encode()

    def write(self, path: Path, extra: list[Member] = (), duplicates: int = 0) -> Path:  # type: ignore[assignment]
        members = [stored(f"{self.root}/{name}", data) for name, data in self.members.items()]
        replaced = {member.name for member in extra}
        members = [m for m in members if m.name not in replaced]
        return write_zip(path, [*members, *extra], duplicates)


def raw_bytes_meta(size: int) -> dict[str, Any]:
    """A tensor description that makes a member look like `size` raw bytes."""
    return {
        "dtype": 1,
        "sizes": [{"as_int": size}],
        "requires_grad": False,
        "device": {"type": "cpu", "index": None},
        "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0},
        "layout": 7,
    }


def user_input(program: dict[str, Any]) -> str:
    """The name of the program's first tensor input."""
    for spec in program["graph_module"]["signature"]["input_specs"]:
        if "user_input" in spec:
            return str(spec["user_input"]["arg"]["as_tensor"]["name"])
    raise AssertionError("no user input")


def _torch_pickle(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _export_load(path: Path) -> object:
    return torch.export.load(path)


def _run(path: Path) -> object:
    program = torch.export.load(path)
    args, kwargs = program.example_inputs
    return program.module()(*args, **kwargs)


def build_corpus(valid: Path, folder: Path, marker: Path) -> dict[str, Hostile]:
    """Every hostile archive, by name, written into `folder` (which also receives the
    module a hostile tree spec imports)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MARKER_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\nclass Kind:\n    A = 1\n"
    )
    payload = _torch_pickle((Touch(marker),))
    corpus: dict[str, Hostile] = {}

    def add(name: str, archive: Archive, names: str, live: Any = None, **write: Any) -> None:
        corpus[name] = Hostile(name, archive.write(folder / f"{name}.pt2", **write), names, live)

    # 1. a malicious pickle as the example inputs, a decoy config marking it raw bytes
    archive = Archive(valid)
    archive.members["data/sample_inputs/model.pt"] = payload
    archive.set_json(
        "data/sample_inputs/model_config.json",
        {"config": {"x": {"path_name": "model.pt", "is_param": False, "use_pickle": False}}},
    )
    add("sample_inputs", archive, "data/sample_inputs/model.pt", _export_load)

    # 2. constants that torch unpickles whatever `use_pickle` says
    for prefix, live in (("opaque_obj_", _export_load), ("custom_obj_", None)):
        archive = Archive(valid)
        config = archive.json("data/constants/model_constants_config.json")
        evil = pickle.dumps(Touch(marker))
        config["config"]["evil"] = {
            "path_name": f"{prefix}0",
            "is_param": False,
            "use_pickle": False,
            "tensor_meta": raw_bytes_meta(len(evil)),
        }
        archive.set_json("data/constants/model_constants_config.json", config)
        archive.members[f"data/constants/{prefix}0"] = evil
        add(prefix.rstrip("_"), archive, f"data/constants/{prefix}0", live)

    # 3. a weight marked as pickled (torch loads it with weights_only=False)
    archive = Archive(valid)
    config = archive.json("data/weights/model_weights_config.json")
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    config["config"][first]["path_name"] = "weight_pickled"
    archive.set_json("data/weights/model_weights_config.json", config)
    archive.members["data/weights/weight_pickled"] = payload
    add("pickled_weight", archive, "data/weights/weight_pickled", _export_load)

    # 4. legacy pickled weights/constants torch reads instead of the config, listed by a decoy
    for folder_name in ("weights", "constants"):
        archive = Archive(valid)
        config_name = f"data/{folder_name}/model_{folder_name}_config.json"
        config = archive.json(config_name)
        config["config"]["decoy"] = {
            "path_name": "model.pt",
            "is_param": False,
            "use_pickle": False,
            "tensor_meta": None,
        }
        archive.set_json(config_name, config)
        archive.members[f"data/{folder_name}/model.pt"] = payload
        add(f"legacy_{folder_name}", archive, f"data/{folder_name}/model.pt", _export_load)

    # 5. zip bombs: an extra member, a weight, the program; a member whose data is shared
    # by many directory entries
    archive = Archive(valid)
    add(
        "bomb_extra",
        archive,
        "data/weights/weight_bomb",
        extra=[zeros_bomb(f"{archive.root}/data/weights/weight_bomb")],
    )
    weight = next(
        entry["path_name"]
        for entry in archive.json("data/weights/model_weights_config.json")["config"].values()
    )
    add(
        "bomb_weight",
        archive,
        f"data/weights/{weight}",
        extra=[zeros_bomb(f"{archive.root}/data/weights/{weight}")],
    )
    add(
        "bomb_program",
        archive,
        "models/model.json",
        extra=[zeros_bomb(f"{archive.root}/models/model.json")],
    )
    add(
        "bomb_overlap",
        archive,
        "overlaps",
        extra=[zeros_bomb(f"{archive.root}/extra/shared", 64 << 20)],
        duplicates=200,
    )

    # 6. strings torch evaluates: a symbolic shape (sympy's eval), a tree spec context that
    # imports a module, guard code, and a call to an ATen operator that creates files
    archive = Archive(valid)
    program = archive.json("models/model.json")
    name = user_input(program)
    command = f"__import__('os').system('touch {shlex.quote(str(marker))}')"
    program["graph_module"]["graph"]["tensor_values"][name]["sizes"][0] = {
        "as_expr": {"expr_str": command, "hint": {"as_int": 4}}
    }
    archive.set_json("models/model.json", program)
    add("sympy_shape", archive, "models/model.json", _export_load)

    archive = Archive(valid)
    program = archive.json("models/model.json")
    signature = program["graph_module"]["module_call_graph"][0]["signature"]
    spec = json.loads(signature["in_spec"])
    spec[1]["children_spec"][1]["context"] = json.dumps(
        [{"__enum__": True, "fqn": f"{MARKER_MODULE}:Kind", "name": "A"}]
    )
    signature["in_spec"] = json.dumps(spec)
    archive.set_json("models/model.json", program)
    add("tree_spec_import", archive, "models/model.json", _export_load)

    archive = Archive(valid)
    program = archive.json("models/model.json")
    program["guards_code"] = [f"{command} == 0"]
    archive.set_json("models/model.json", program)
    add("guard_code", archive, "models/model.json", _run)

    archive = Archive(valid)
    program = archive.json("models/model.json")
    program["graph_module"]["graph"]["nodes"].insert(
        0,
        {
            "target": "torch.ops.aten.from_file.default",
            "inputs": [
                {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                {"name": "size", "arg": {"as_int": 4}, "kind": 1},
                {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
            ],
            "outputs": [{"as_tensor": {"name": "evil"}}],
            "metadata": {},
            "is_hop_single_tensor_return": None,
            "name": "evil",
        },
    )
    program["graph_module"]["graph"]["tensor_values"]["evil"] = raw_bytes_meta(4)
    archive.set_json("models/model.json", program)
    add("file_operator", archive, "from_file", _run)

    # 7. native code for AOTInductor, which torch.export.load loads into the process
    archive = Archive(valid)
    archive.members["data/aotinductor/model/model.wrapper.so"] = b"\x7fELF" + bytes(60)
    add("aot_inductor", archive, "data/aotinductor/")
    return corpus


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Random flips, cuts, splices and JSON-aware edits of an archive's bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        action = rng.choice(["flip", "cut", "insert", "json"])
        position = rng.randrange(max(len(out), 1))
        if action == "flip" and out:
            out[position] ^= rng.randint(1, 255)
        elif action == "cut":
            del out[position : position + rng.randint(1, 64)]
        elif action == "insert":
            out[position:position] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        else:
            start = out.find(b'"', position)
            if start >= 0:
                token = rng.choice([b'"\xff', b'"[[[[[[', b'"1e999', b'"\\u0000', b'"' * 3])
                out[start : start + 1] = token
    return bytes(out)


HOSTILE_VALUES: list[Any] = [
    None,
    -1,
    2**63,
    10**400,
    1.5,
    "",
    "\ud800",
    "opaque_obj_0",
    "../../etc/passwd",
    "__import__('os').system('true')",
    [[[[[[[[]]]]]]]],
    {"as_int": -5},
    {"as_expr": {"expr_str": "s0**s0**s0", "hint": None}},
    True,
]


def mutate_archive(path: Path, target: Path, rng: random.Random) -> Path:
    """A mutant of the archive at `path`: a JSON value replaced, a member's bytes edited
    (both rewritten with correct CRCs, so the change reaches the parsers), or the file's
    raw bytes flipped, cut and spliced."""
    kind = rng.choice(["json", "member", "bytes"])
    with zipfile.ZipFile(path) as archive:
        inflated = sum(info.file_size for info in archive.infolist())
    if kind == "bytes" or inflated > 64 << 20:  # a bomb's members are never inflated here
        target.write_bytes(mutate(path.read_bytes(), rng))
        return target
    try:
        archive = Archive(path)
    except (zipfile.BadZipFile, KeyError, IndexError, OSError, ValueError):
        target.write_bytes(mutate(path.read_bytes(), rng))
        return target
    names = sorted(archive.members)
    jsons = [name for name in names if name.endswith(".json")]
    if kind == "json" and jsons:
        name = rng.choice(jsons)
        try:
            value = json.loads(archive.members[name])
        except ValueError:
            value = None
        if value is not None:
            _replace_random_leaf(value, rng)
            archive.members[name] = json.dumps(value).encode("utf-8", "surrogatepass")
            return archive.write(target)
    name = rng.choice(names)
    archive.members[name] = mutate(archive.members[name], rng)
    return archive.write(target)


def _replace_random_leaf(value: Any, rng: random.Random) -> None:
    """Walk down from `value` at random and replace one entry with a hostile value."""
    node = value
    for _ in range(64):
        children = (
            list(node.items())
            if isinstance(node, dict)
            else list(enumerate(node))
            if isinstance(node, list)
            else []
        )
        if not children:
            return
        key, child = rng.choice(children)
        if not isinstance(child, dict | list) or not child or rng.random() < 0.2:
            node[key] = rng.choice(HOSTILE_VALUES)
            return
        node = child
