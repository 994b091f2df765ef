"""Front-ends that turn a model into an ATen graph for the symmetry engine.

- an exported program (`.pt2`): its own graph;
- a Hugging Face model folder: the architecture built from `config.json` with transformers
  on the meta device (no weights, nothing downloaded) and exported with `torch.export`;
- a state dict plus the model's code (`--model FILE.py:NAME`): the module built on the meta
  device and exported on example inputs of the given shapes.

Each maps the graph's parameter placeholders to the checkpoint's tensor names (tied
weights included) so that the engine's symmetries name checkpoint tensors.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError, UsageError
from weissi_cli.progress import phase

EXAMPLE_TOKENS = 4  # sequence length of the example input for language models


@dataclass(frozen=True)
class TracedGraph:
    """A graph whose placeholders are named by checkpoint tensors."""

    graph: Any
    placeholders: dict[str, str]  # placeholder node -> checkpoint tensor
    origin: str
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    buffers: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()
    forward: str = "the graph as exported"  # which forward pass the graph is


class TraceError(InputError):
    """A model could not be built or exported; the message names what failed."""


# -- exported programs ---------------------------------------------------------------------


def from_program(program: Any, tensor_names: Sequence[str]) -> TracedGraph:
    """The graph of an exported program, its placeholders named by the state dict."""
    signature = program.graph_signature
    names: dict[str, str] = dict(signature.inputs_to_parameters)
    names.update(signature.inputs_to_buffers)
    names.update(getattr(signature, "inputs_to_lifted_tensor_constants", {}))
    buffers = frozenset(signature.inputs_to_buffers.values())
    known = set(tensor_names)
    return TracedGraph(
        graph=program.graph,
        placeholders={node: name for node, name in names.items() if name in known},
        origin="graph",
        buffers=buffers,
    )


# -- Hugging Face folders ------------------------------------------------------------------


@phase("tracing the architecture with transformers")
def from_transformers(config_path: Path, tensor_names: Sequence[str]) -> TracedGraph:
    """Build the architecture `config.json` names on the meta device and export it."""
    torch, transformers = _import_transformers(config_path)
    folder = config_path.parent
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(folder), trust_remote_code=False, local_files_only=True
        )
    except Exception as error:
        raise TraceError(
            f"{config_path}: transformers cannot read this config ({_first_line(error)}); "
            "pin the structure with a spec file instead"
        ) from None
    model_class = _model_class(config, config_path, transformers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = model_class._from_config(config)
        except Exception as error:
            raise TraceError(
                f"{config_path}: transformers could not build {model_class.__name__} from this "
                f"config ({_first_line(error)}); pin the structure with a spec file instead"
            ) from None
    model.eval()
    inputs = _example_inputs(model, config, torch)
    wrapper = _OutputsAsTuple(model, _accepts(model, "use_cache"))
    names = _checkpoint_names(model, tensor_names, transformers)
    _require_match(names.values(), tensor_names, f"{config_path}: {model_class.__name__}")
    program = _export(torch, wrapper, (), inputs, f"{config_path}: {model_class.__name__}")
    label = getattr(config, "model_type", None) or model_class.__name__
    traced = _name_placeholders(program, "m.", names, model, f"graph:{label}")
    return replace(traced, forward="eval mode, example inputs of one sequence or image")


def _import_transformers(where: Path) -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise TraceError(
            f"{where}: tracing a Hugging Face architecture needs transformers "
            "(pip install 'weissi-cli[hf]'), or pin the structure with a spec file"
        ) from None
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    return torch, transformers


def _model_class(config: Any, config_path: Path, transformers: Any) -> Any:
    """The class `architectures` names, else the task-free base model for the type."""
    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, name, None) if isinstance(name, str) else None
        if isinstance(found, type) and hasattr(found, "_from_config"):
            return found
    try:
        mapping = transformers.AutoModel._model_mapping
        return mapping[type(config)]
    except (KeyError, AttributeError):
        raise TraceError(
            f"{config_path}: transformers has no model class for model_type "
            f"{getattr(config, 'model_type', None)!r}; pin the structure with a spec file"
        ) from None


def _accepts(model: Any, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _example_inputs(model: Any, config: Any, torch: Any) -> dict[str, Any]:
    """Small meta tensors of the shape and kind the model's main input expects."""
    main = getattr(model, "main_input_name", "input_ids")
    device = torch.device("meta")
    if main == "input_ids":
        inputs = {"input_ids": torch.zeros((1, EXAMPLE_TOKENS), dtype=torch.long, device=device)}
        if getattr(config, "is_encoder_decoder", False) and _accepts(model, "decoder_input_ids"):
            inputs["decoder_input_ids"] = torch.zeros(
                (1, EXAMPLE_TOKENS), dtype=torch.long, device=device
            )
        return inputs
    if main == "pixel_values":
        vision = getattr(config, "vision_config", config)
        size = getattr(vision, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        channels = getattr(vision, "num_channels", 3)
        return {"pixel_values": torch.zeros((1, channels, size, size), device=device)}
    raise TraceError(
        f"weissi does not know which example input {type(model).__name__} takes "
        f"(its main input is {main!r}); pin the structure with a spec file"
    )


class _OutputsAsTuple:
    """A module wrapper whose forward returns the model's tensor outputs as a tuple (what
    torch.export flattens), with the cache off."""

    def __new__(cls, model: Any, use_cache: bool) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, **inputs: Any) -> Any:
                if use_cache:
                    inputs["use_cache"] = False
                outputs = self.m(**inputs)
                values = outputs.values() if hasattr(outputs, "values") else outputs
                return tuple(v for v in values if isinstance(v, torch.Tensor))

        return Wrapper()


def _export(
    torch: Any, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], what: str
) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(module, args, kwargs, strict=False)
        except Exception as error:
            raise TraceError(
                f"{what} could not be exported with torch.export ({_first_line(error)}); "
                "pin the structure with a spec file instead"
            ) from None


def _checkpoint_names(model: Any, tensor_names: Sequence[str], transformers: Any) -> dict[str, str]:
    """model parameter name -> checkpoint tensor name, by transformers' own loading rules
    (renamings, the base-model prefix). Tensors that transformers merges while loading
    (each expert's matrices stacked into one parameter) become parameters of their own,
    from which the merged one is computed with transformers' own conversion operations, so
    that the graph reads the checkpoint's tensors (`_unmerge`)."""
    model_names = {name for name, _ in model.named_parameters()} | {
        name for name, _ in model.named_buffers()
    }
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )
    except ImportError:
        return {name: name for name in model_names if name in set(tensor_names)}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = dict.fromkeys(model_names, True)
    found: dict[str, str] = {}
    merged: dict[str, tuple[Any, dict[str, list[str]]]] = {}
    for name in sorted(tensor_names, key=dot_natural_key):
        target, pattern = rename_source_key(
            name, renamings, converters, model.base_model_prefix, meta
        )
        if pattern is not None and target in model_names:
            converter = next(c for c in converters if pattern in c.source_patterns)
            merged.setdefault(target, (converter, {}))[1].setdefault(pattern, []).append(name)
        elif pattern is None and target in model_names:
            found.setdefault(target, name)
    return {**found, **_unmerge(model, merged)}


def _unmerge(model: Any, merged: Mapping[str, tuple[Any, dict[str, list[str]]]]) -> dict[str, str]:
    """Replace each merged parameter by one parameter per checkpoint tensor and a property
    that merges them with the converter's operations; the new names map to the checkpoint."""
    import torch

    names: dict[str, str] = {}
    for target, (converter, patterns) in merged.items():
        owner_name, _, attribute = target.rpartition(".")
        owner = model.get_submodule(owner_name)
        merged_value = getattr(owner, attribute)
        sources: dict[str, list[str]] = {}
        for pattern, keys in patterns.items():
            for key in keys:
                leaf = f"weissi_source_{len(names)}"
                shape = _source_shape(merged_value, converter, patterns, key)
                owner.register_parameter(
                    leaf,
                    torch.nn.Parameter(
                        torch.empty(shape, dtype=merged_value.dtype, device="meta"),
                        requires_grad=False,
                    ),
                )
                names[f"{owner_name}.{leaf}" if owner_name else leaf] = key
                sources.setdefault(pattern, []).append(leaf)
        del owner._parameters[attribute]
        cls = type(owner)
        owner.__class__ = type(
            f"Unmerged{cls.__name__}", (cls,), {attribute: property(_merger(converter, sources))}
        )
    return names


def _merger(converter: Any, sources: Mapping[str, list[str]]) -> Any:
    def merged(module: Any) -> Any:
        collected = {p: [getattr(module, leaf) for leaf in leaves] for p, leaves in sources.items()}
        for operation in converter.operations:
            collected = operation.convert(
                collected,
                source_patterns=converter.source_patterns,
                target_patterns=converter.target_patterns,
            )
        return next(iter(collected.values()))

    return merged


def _source_shape(merged: Any, converter: Any, patterns: Mapping[str, list[str]], key: str) -> Any:
    """The shape of one checkpoint tensor that the converter merges: the merged parameter's
    shape with the stacking axis removed and each concatenated axis divided among the
    patterns (the converters transformers uses for experts: MergeModulelist, Concatenate)."""
    shape = list(merged.shape)
    for operation in converter.operations:
        kind = type(operation).__name__
        if kind == "MergeModulelist":
            del shape[operation.dim]
        elif kind == "Concatenate":
            # after the stack the concatenation axis counts from the merged tensor
            dim = operation.dim - 1 if operation.dim > 0 else operation.dim
            shape[dim] //= len(patterns)
        else:
            raise TraceError(
                f"transformers merges {key} with {kind}, which weissi cannot undo; "
                "pin the structure with a spec file"
            )
    return tuple(shape)


def _name_placeholders(
    program: Any, prefix: str, names: Mapping[str, str], model: Any, origin: str
) -> TracedGraph:
    signature = program.graph_signature
    by_node: dict[str, str] = dict(signature.inputs_to_parameters)
    by_node.update(signature.inputs_to_buffers)
    buffers = {name.removeprefix(prefix) for name in signature.inputs_to_buffers.values()}
    placeholders = {}
    for node, target in by_node.items():
        target = target.removeprefix(prefix)
        if target in names:
            placeholders[node] = names[target]
    # tied weights: every other name of a parameter the graph reads scales with it
    by_identity: dict[int, list[str]] = {}
    for name, value in model.named_parameters(remove_duplicate=False):
        by_identity.setdefault(id(value), []).append(name)
    read = set(placeholders.values())
    aliases: dict[str, tuple[str, ...]] = {}
    for group in by_identity.values():
        checkpoint = list(dict.fromkeys(names[n] for n in group if n in names))
        canonical = [n for n in checkpoint if n in read]
        if canonical and len(checkpoint) > 1:
            aliases[canonical[0]] = tuple(n for n in checkpoint if n != canonical[0])
    return TracedGraph(
        graph=program.graph,
        placeholders=placeholders,
        origin=origin,
        aliases=aliases,
        buffers=frozenset(names[b] for b in buffers if b in names),
    )


# -- a state dict and the model's code -------------------------------------------------------

_SHAPE = re.compile(r"^\d+(x\d+)*$")


def parse_shape(text: str) -> tuple[int, ...]:
    """`1x3x48x48` -> (1, 3, 48, 48)."""
    if not _SHAPE.match(text.strip()):
        raise UsageError(f"--example-shape takes sizes joined by x (like 1x3x48x48), not {text!r}")
    return tuple(int(size) for size in text.strip().split("x"))


def load_factory(spec: str) -> Any:
    """`FILE.py:NAME` -> the callable NAME defined in FILE.py (imported as a module)."""
    path_text, _, name = spec.rpartition(":")
    if not path_text or not name:
        raise UsageError(f"--model takes FILE.py:NAME, not {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--model {spec}: no such file {path}")
    module_name = f"weissi_user_model_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise UsageError(f"--model {spec}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as error:
        raise TraceError(
            f"--model {spec}: importing {path} failed ({_first_line(error)})"
        ) from None
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        raise UsageError(f"--model {spec}: {path} defines no callable {name!r}")
    return factory


def build_module(spec: str, device: str = "meta") -> Any:
    """The module `--model FILE.py:NAME` returns, built on `device`."""
    import torch

    factory = load_factory(spec)
    try:
        with torch.device(device):
            module = factory()
    except Exception as error:
        raise TraceError(
            f"--model {spec}: building the model failed ({_first_line(error)})"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(
            f"--model {spec}: {factory!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module.eval()


@phase("tracing the model's code (--model)")
def from_module(
    spec: str,
    shapes: Sequence[tuple[int, ...]],
    dtype: str,
    tensor_names: Sequence[str],
) -> TracedGraph:
    """Export the user's module on example inputs and name its parameters by the state dict."""
    import torch

    if not shapes:
        raise UsageError("--model needs --example-shape (the shape of each input, like 1x3x48x48)")
    module = build_module(spec)
    torch_dtype = _dtype(torch, dtype)
    inputs = tuple(torch.zeros(shape, dtype=torch_dtype, device="meta") for shape in shapes)
    program = _export(torch, module, inputs, {}, f"--model {spec}")
    model_names = {name for name, _ in module.state_dict().items()}
    names, note = match_state_dict(model_names, tensor_names)
    _require_match(names.values(), tensor_names, f"--model {spec}")
    traced = _name_placeholders(
        program, "", names, module, f"graph:{Path(spec.rpartition(':')[0]).stem}"
    )
    return replace(traced, notes=(note,) if note else (), forward=traced_forward(shapes, dtype))


def traced_forward(shapes: Sequence[tuple[int, ...]], dtype: str) -> str:
    """The forward pass `--model` traces, as reports name it."""
    inputs = ", ".join("x".join(map(str, shape)) for shape in shapes)
    return f"eval mode, input{'s' if len(shapes) > 1 else ''} {inputs} {dtype}"


def _require_match(matched: Any, tensor_names: Sequence[str], what: str) -> None:
    """Most of the checkpoint's tensors must be the model's: otherwise the code (or config)
    describes another network, and its structure says nothing about these weights."""
    found = set(matched)
    missing = [name for name in tensor_names if name not in found]
    if len(missing) * 2 > len(tensor_names):
        raise TraceError(
            f"{what} does not hold {len(missing)} of the checkpoint's {len(tensor_names)} "
            f"tensors (e.g. {missing[0]}); is this the model that saved them? Pin the "
            "structure with a spec file instead"
        )


def _dtype(torch: Any, name: str) -> Any:
    found = getattr(torch, name, None)
    if not isinstance(found, torch.dtype):
        raise UsageError(
            f"--example-dtype takes a torch dtype name (float32, int64, ...), not {name!r}"
        )
    return found


# Prefixes that training wrappers add to every key of a state dict.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def match_state_dict(
    model_names: set[str], tensor_names: Sequence[str]
) -> tuple[dict[str, str], str]:
    """model name -> checkpoint name: exact, else with one wrapper prefix added or removed
    (said in a note)."""
    exact = {name: name for name in tensor_names if name in model_names}
    if exact:
        return exact, ""
    for prefix in WRAPPER_PREFIXES:
        stripped = {n.removeprefix(prefix): n for n in tensor_names if n.startswith(prefix)}
        found = {m: stripped[m] for m in model_names if m in stripped}
        if found:
            return found, f"checkpoint names carry the prefix {prefix!r}; matched without it"
        added = {m: f"{prefix}{m}" for m in model_names if f"{prefix}{m}" in set(tensor_names)}
        if added:
            return added, f"model names matched the checkpoint with the prefix {prefix!r} added"
    return {}, ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
