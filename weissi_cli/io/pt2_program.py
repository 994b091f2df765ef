"""A `torch.export` program built from a `.pt2` archive without running anything from it.

Where torch (2.13) runs code from an archive, and why this module reaches none of it:

- `torch.export.load` → `pt2_archive._package.load_pt2` unpickles weights and constants
  marked `use_pickle` (`torch.load(weights_only=False)`), `custom_obj_*` constants
  (TorchScript's `_pickle_load_obj`), `opaque_obj_*` constants (`pickle.loads`), a legacy
  `data/{weights,constants}/<model>.pt` that it reads instead of the configs, and the
  example inputs (`serialize.deserialize_torch_artifact`, which retries with
  `weights_only=False`); it loads AOTInductor libraries (`data/aotinductor/`), and falls back
  to an older format of pickled members. This module never calls any of it: it reads the
  program's JSON and the raw bytes of every tensor itself (`pt2_archive`), refuses every
  entry that is not raw tensor bytes, and loads the example inputs only with
  `torch.load(weights_only=True)`.
- `ExportedProgramDeserializer.deserialize` unpickles its state dict, constants and example
  inputs only when they are bytes (`deserialize_torch_artifact` returns a dict or tuple as
  it is). It is given dicts of tensors weissi built, and no example inputs.
- The deserializer evaluates strings of the JSON: symbolic shapes go through
  `sympy.sympify` (which is `eval`), tree specs may name modules to import (enum and
  default-factory contexts), and a node's target may resolve to any callable reachable from
  `torch`, `operator` or `math`. `pt2_strings` checks every symbolic shape and tree spec
  first against a language that cannot name, import or call anything but arithmetic and
  shape functions; `_check_calls` then walks the built program: every call is an ATen
  operator that opens no file, a listed control-flow operator or a listed arithmetic
  builtin, and no argument is a function. Running it (verification does) only computes.
- `ExportedProgram.module()` compiles the archive's guard code, with string inputs spliced
  in, when the program has example inputs. The program is built without them (they live
  beside it in `Pt2Contents.examples`), so it never does; the guard code and string inputs
  are checked all the same (`pt2_strings`), so that a program weissi writes back holds none.
"""

from __future__ import annotations

import io
import math
import operator
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weissi_cli.errors import InputError, UnsafePickleError
from weissi_cli.io.pt2_archive import Pt2Archive, check_torch_zip
from weissi_cli.io.pt2_strings import check_strings

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

MODEL = "model"  # the program torch.export.load returns; other programs are never read
PROGRAM = f"models/{MODEL}.json"
WEIGHTS = "data/weights/"
CONSTANTS = "data/constants/"
EXAMPLES = f"data/sample_inputs/{MODEL}.pt"
LEGACY = (f"{WEIGHTS}{MODEL}.pt", f"{CONSTANTS}{MODEL}.pt")
AOT_INDUCTOR = "data/aotinductor/"

# Control flow whose bodies are subgraphs of the same program (checked like the rest).
CONTROL_FLOW = frozenset(
    {"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast"}
)
ARITHMETIC = (
    operator.getitem, operator.add, operator.mul, operator.sub, operator.truediv,
    operator.floordiv, operator.mod, operator.pow, operator.neg, operator.abs, operator.eq,
    operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_,
    operator.or_, operator.not_, operator.lshift, operator.rshift, math.ceil, math.floor,
    math.trunc, round,
)  # fmt: skip


@dataclass(frozen=True)
class Pt2Contents:
    """The program (built without example inputs: see the module docstring) and its
    example inputs, loaded with `weights_only=True`, or None when it records none."""

    program: ExportedProgram
    examples: tuple[tuple[Any, ...], dict[str, Any]] | None


def read_program(path: Path) -> Pt2Contents:
    """The program of a `.pt2`, or InputError/UnsafePickleError naming what was refused."""
    archive = Pt2Archive(path)
    try:
        return _read(archive, path)
    finally:
        archive.close()


def _read(archive: Pt2Archive, path: Path) -> Pt2Contents:
    _check_layout(archive, path)
    program_json = archive.read_json(PROGRAM)
    check_strings(program_json, archive.member(PROGRAM), path)
    weights = _entries(archive, path, WEIGHTS, f"{MODEL}_weights_config.json")
    lifted = _entries(archive, path, CONSTANTS, f"{MODEL}_constants_config.json")
    state_dict, constants = _tensors(archive, path, weights), _tensors(archive, path, lifted)
    examples = _examples(archive, path)
    program = _deserialize(program_json, state_dict, constants, archive.member(PROGRAM), path)
    _check_calls(program, path)
    if examples is not None:
        try:  # torch's setter checks them against the program's input spec
            program.example_inputs = examples
        except Exception as error:  # a mismatch raises ValueError, TypeError, ...
            raise InputError(
                f"{path}: the example inputs ({archive.member(EXAMPLES)}) do not fit the "
                f"program's inputs ({_first_line(error)})"
            ) from None
        program.example_inputs = None
    return Pt2Contents(program, examples)


def _check_layout(archive: Pt2Archive, path: Path) -> None:
    if not archive.has("archive_version") or not archive.has(PROGRAM):
        raise InputError(
            f"{path}: not a torch.export archive weissi reads (no archive_version or "
            f"{PROGRAM}); save the program with torch.export.save"
        )
    version = archive.read_text("archive_version", cap=64).strip()
    if version != "0":
        raise InputError(f"{path}: torch.export archive version {version!r}; weissi reads 0")
    order = archive.read_text("byteorder", cap=64).strip() if archive.has("byteorder") else None
    if order not in (None, "little"):
        raise InputError(f"{path}: byte order {order!r}; weissi reads little-endian tensors")
    for name in LEGACY:
        if archive.has(name):
            raise UnsafePickleError(
                f"{path}: refused to load: {archive.member(name)} is a legacy pickled "
                "payload, which torch.export.load reads instead of the archive's config (and "
                "unpickles unsafely if need be); weissi does not unpickle it and nothing in "
                "it was run. Re-save the program with a current torch.export.save."
            )
    native = next((name for name in archive.names() if name.startswith(AOT_INDUCTOR)), None)
    if native is not None:
        raise InputError(
            f"{path}: refused: {archive.member(native)} is native code compiled by "
            "AOTInductor, which torch.export.load loads into the process; weissi reads "
            "programs saved by torch.export.save and loads no native code"
        )


# tensors, from raw bytes only ----------------------------------------------------------------


def _entries(
    archive: Pt2Archive, path: Path, folder: str, config_name: str
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The weights or constants config: each entry's member and description, after
    refusing every entry that is not raw tensor bytes (`use_pickle` false and, for
    constants, a `tensor_` file): such entries are refused, never loaded."""
    config_member = folder + config_name
    if not archive.has(config_member):
        raise InputError(f"{path}: corrupt torch.export archive: no {config_member}")
    config = archive.read_json(config_member)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{path}: corrupt torch.export archive: {config_member} has no config")
    checked = {}
    for fqn, entry in entries.items():
        path_name = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(path_name, str) or "/" in path_name:
            raise InputError(
                f"{path}: corrupt torch.export archive: {config_member} entry {fqn!r} names no file"
            )
        member = folder + path_name
        refusal = _not_raw(entry, path_name, constant=folder == CONSTANTS)
        if refusal is not None:
            raise UnsafePickleError(
                f"{path}: refused to load: {archive.member(member)} ({fqn!r}) is {refusal}; "
                "weissi reads only raw tensor bytes from a .pt2 and nothing in it was run. "
                "Re-export the model without it if you trust its source."
            )
        if not archive.has(member):
            raise InputError(f"{path}: corrupt torch.export archive: no {archive.member(member)}")
        checked[fqn] = (member, entry)
    return checked


def _tensors(
    archive: Pt2Archive, path: Path, entries: dict[str, tuple[str, dict[str, Any]]]
) -> dict[str, torch.Tensor]:
    storages: dict[str, torch.Tensor] = {}
    return {
        fqn: _tensor(archive, path, member, fqn, entry, storages)
        for fqn, (member, entry) in entries.items()
    }


def _not_raw(entry: dict[str, Any], path_name: str, constant: bool) -> str | None:
    if path_name.startswith("custom_obj_"):
        return "a TorchScript object, which only TorchScript's unpickler restores"
    if path_name.startswith("opaque_obj_"):
        return "an opaque Python object, which only pickle restores"
    if entry.get("use_pickle") is not False:
        return "a pickled tensor (torch pickles tensor subclasses)"
    if constant and not path_name.startswith("tensor_"):
        return "a constant of a kind torch.export does not write"
    return None


def _tensor(
    archive: Pt2Archive,
    path: Path,
    member: str,
    fqn: str,
    entry: dict[str, Any],
    storages: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The tensor `entry` describes, as a view of its file's bytes (as torch builds it)."""
    import torch
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    where = f"{path}: corrupt torch.export archive: {archive.member(member)} ({fqn!r})"
    meta = entry.get("tensor_meta")
    if not isinstance(meta, dict):
        raise InputError(f"{where} has no tensor description")
    dtype_code = meta.get("dtype")
    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(dtype_code) if type(dtype_code) is int else None
    if dtype is None or meta.get("layout") != 7:  # schema.Layout.Strided
        raise InputError(f"{where} is not a dense tensor of a known dtype")
    sizes = _ints(meta.get("sizes"))
    strides = _ints(meta.get("strides"))
    offsets = _ints([meta.get("storage_offset")])
    if sizes is None or strides is None or offsets is None or len(sizes) != len(strides):
        raise InputError(f"{where} has a shape that is not a list of fixed sizes")
    storage = storages.get(member)
    if storage is None:
        storage = _storage(archive, path, member, dtype, where)
        storages[member] = storage
    elif storage.dtype != dtype:
        raise InputError(f"{where} reads its file as {dtype}, another entry as {storage.dtype}")
    numel = math.prod(sizes)
    extent = (
        offsets[0]
        + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
        + 1
    )
    if (numel and extent > storage.numel()) or offsets[0] > storage.numel():
        raise InputError(f"{where} reaches past its file's {storage.numel()} elements")
    tensor = torch.as_strided(storage, sizes, strides, offsets[0])
    requires_grad = meta.get("requires_grad") is True
    if entry.get("is_param") is True:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        try:
            tensor.requires_grad_(True)
        except RuntimeError:
            raise InputError(f"{where} asks for gradients of a {dtype} tensor") from None
    return tensor


def _storage(
    archive: Pt2Archive, path: Path, member: str, dtype: torch.dtype, where: str
) -> torch.Tensor:
    """A file of raw tensor bytes as one flat tensor (its own memory, writable)."""
    import torch

    itemsize = torch.empty(0, dtype=dtype).element_size()
    declared = archive.size(member)
    if declared % itemsize:
        raise InputError(f"{where} holds {declared} bytes, not whole {dtype} elements")
    if declared == 0:
        return torch.empty(0, dtype=dtype)
    data = archive.read(member)
    try:
        return torch.frombuffer(data, dtype=dtype)
    except (ValueError, TypeError, RuntimeError) as error:
        raise InputError(f"{where} cannot be read as {dtype} ({_first_line(error)})") from None


def _ints(values: Any) -> list[int] | None:
    """Sizes serialized as [{"as_int": n}, ...] with every n >= 0, or None."""
    if not isinstance(values, list):
        return None
    result = []
    for value in values:
        number = value.get("as_int") if isinstance(value, dict) and len(value) == 1 else None
        if type(number) is not int or not 0 <= number < 2**62:
            return None
        result.append(number)
    return result


# example inputs ------------------------------------------------------------------------------


def _examples(archive: Pt2Archive, path: Path) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The recorded example inputs, loaded only with `weights_only=True`."""
    import torch

    if not archive.has(EXAMPLES) or archive.size(EXAMPLES) == 0:
        return None
    member = archive.member(EXAMPLES)
    data = archive.read(EXAMPLES)
    check_torch_zip(data, member, path)
    try:
        loaded = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        offending = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"references {offending.group(1).rstrip('.')}" if offending else "holds objects"
        raise UnsafePickleError(
            f"{path}: refused to load: {member} (the example inputs) is a pickle that {what}, "
            "not just tensors and plain containers, and torch.export.load would run code from "
            "it; nothing in it was run. Re-export the model yourself if you trust its source."
        ) from None
    except Exception as error:  # torch's unpicklers raise many types on garbage input
        raise InputError(
            f"{path}: corrupt torch.export archive: {member} cannot be read "
            f"({_first_line(error)[:160]})"
        ) from None
    if not (
        isinstance(loaded, tuple)
        and len(loaded) == 2
        and isinstance(loaded[0], tuple | list)
        and isinstance(loaded[1], dict)
    ):
        raise InputError(f"{path}: {member} is not a pair of example args and kwargs")
    return tuple(loaded[0]), dict(loaded[1])


# the program ---------------------------------------------------------------------------------


def _deserialize(
    program_json: Any,
    state_dict: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    member: str,
    path: Path,
) -> ExportedProgram:
    """torch's deserializer on the checked JSON, given tensors it has nothing to unpickle
    in: `deserialize_torch_artifact` returns a dict as it is and only loads bytes."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program_json)  # type: ignore[no-untyped-call]
        return ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except Exception as error:  # torch raises many types on a damaged program
        raise InputError(
            f"{path}: not a readable torch.export program: {member} ({_first_line(error)[:200]})"
        ) from None


def _check_calls(program: ExportedProgram, path: Path) -> None:
    """Refuse a program that calls anything but computation (see the module docstring)."""
    import torch
    from torch._ops import HigherOrderOperator, OpOverload

    allowed_functions = {*ARITHMETIC, *(getattr(torch, f"sym_{name}") for name in SYM_FUNCTIONS)}
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            problem: str | None
            if node.op != "call_function":
                problem = f"a {node.op} node"
            elif isinstance(target, OpOverload):
                problem = _op_problem(target)
            elif isinstance(target, HigherOrderOperator):
                name = target.name()  # type: ignore[no-untyped-call]
                problem = None if name in CONTROL_FLOW else f"the operator {target}"
            elif target in allowed_functions:
                problem = None
            else:
                problem = f"{getattr(target, '__name__', target)!r}, not an operator"
            if problem is None and _has_callable(node.args, node.kwargs):
                problem = f"{target} with a function as an argument"
            if problem is not None:
                raise InputError(
                    f"{path}: refused: node {node.name!r} of the program calls {problem}; "
                    "weissi runs programs of ATen operators only"
                )


SYM_FUNCTIONS = ("int", "float", "ite", "max", "min", "not", "sqrt", "sum")


def _op_problem(op: Any) -> str | None:
    if op.namespace != "aten":
        return f"the {op.namespace} operator {op}"
    if any(argument.name == "filename" for argument in op._schema.arguments):
        return f"{op}, which opens files"
    return None


def _has_callable(args: Any, kwargs: Any) -> bool:
    import torch

    stack = [args, kwargs]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.fx.Node):
            continue
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, slice):
            stack.extend((item.start, item.stop, item.step))
        elif callable(item):
            return True
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
