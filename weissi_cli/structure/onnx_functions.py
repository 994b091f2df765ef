"""Model-local functions inlined into the graph, and the outer values control flow reads."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from weissi_cli.errors import WeissiError
from weissi_cli.io.onnx_model import Node, OnnxModel, attribute_value
from weissi_cli.io.onnx_proto import Message, ProtoError

MAX_DEPTH = 16  # calls nested deeper than this are not inlined
MAX_NODES = 1 << 20  # nodes the inlined graph may have


@dataclass(frozen=True)
class Function:
    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    body: tuple[Message, ...]  # the body's Node messages
    defaults: dict[str, Any]  # attribute name -> default value
    opsets: dict[str, int]


@dataclass
class Inlined:
    """The graph's nodes with calls replaced by bodies, and what could not be inlined."""

    nodes: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    added: int = 0  # nodes of calls still being expanded
    functions: dict[tuple[str, str], Function] = field(default_factory=dict)
    overloaded: set[tuple[str, str]] = field(default_factory=set)


def inline_functions(model: OnnxModel) -> Inlined:
    """The graph's nodes, each call of a local function replaced by its body: the call's
    inputs and outputs in place of the function's, its other values renamed apart, and
    every attribute reference resolved (`_attributes`). A call that cannot be inlined
    exactly (an overloaded name, another opset version, a body with control flow, nesting
    deeper than `MAX_DEPTH`, more than `MAX_NODES` nodes, a body that cannot be read) stays
    one node, which stops every scale that reaches it; a note says which and why."""
    try:
        functions, overloaded = _functions(model)
    except (ProtoError, WeissiError) as error:
        kept = Inlined(nodes=list(model.nodes))
        kept.notes.append(f"local functions are not inlined: {error}")
        return kept
    result = Inlined(functions=functions, overloaded=overloaded)
    if not functions and not overloaded:
        result.nodes = list(model.nodes)
        return result
    counter = itertools.count()
    for node in model.nodes:
        result.nodes += _expand(model, node, 0, counter, result)
    return result


def _functions(model: OnnxModel) -> tuple[dict[tuple[str, str], Function], set[tuple[str, str]]]:
    found: dict[tuple[str, str], Function] = {}
    seen: set[tuple[str, str]] = set()
    overloaded: set[tuple[str, str]] = set()
    for message in model.root.all("functions"):
        key = (str(message.one("domain", "")), str(message.one("name", "")))
        if key in seen:
            overloaded.add(key)
        seen.add(key)
        defaults = {
            str(a.one("name", "")): attribute_value(model.path, a, model.data)
            for a in message.all("attribute_proto")
        }
        opsets = {
            str(entry.one("domain", "")): int(entry.one("version", 0))
            for entry in message.all("opset_import")
        }
        found[key] = Function(
            domain=key[0],
            name=key[1],
            inputs=tuple(str(i) for i in message.all("input")),
            outputs=tuple(str(o) for o in message.all("output")),
            body=tuple(message.all("node")),
            defaults=defaults,
            opsets=opsets,
        )
    for key in overloaded:
        found.pop(key, None)
    return found, overloaded


def _expand(
    model: OnnxModel, node: Node, depth: int, counter: Iterator[int], result: Inlined
) -> list[Node]:
    notes = result.notes
    key = (node.domain, node.op_type)
    if key in result.overloaded:
        notes.append(_kept(node, "several functions have its name (overloads are not followed)"))
        return [node]
    function = result.functions.get(key)
    if function is None:
        return [node]
    reason = _cannot_inline(model, function, depth)
    if not reason and len(result.nodes) + result.added + len(function.body) > MAX_NODES:
        reason = f"the inlined graph would have more than {MAX_NODES} nodes"
    if reason:
        notes.append(_kept(node, reason))
        return [node]
    call = next(counter)
    prefix = f"{node.name or node.op_type}/"
    names = dict.fromkeys(function.inputs, "")
    names.update(zip(function.inputs, node.inputs, strict=False))
    names.update(zip(function.outputs, node.outputs, strict=False))

    added = result.added
    try:
        return _inlined(model, node, function, names, f"{prefix}#{call}", depth, counter, result)
    except (ProtoError, WeissiError) as error:
        result.added = added
        notes.append(_kept(node, f"its body cannot be read ({error})"))
        return [node]


def _inlined(
    model: OnnxModel,
    node: Node,
    function: Function,
    names: dict[str, str],
    tag: str,
    depth: int,
    counter: Iterator[int],
    result: Inlined,
) -> list[Node]:
    """The body of `function` for the call `node`: `names` maps the function's inputs and
    outputs to the call's; its other values are named `<call>/<value>#<n>` (`tag`)."""
    prefix, _, call = tag.rpartition("#")

    def renamed(name: str) -> str:
        if not name:
            return ""
        if name not in names:
            names[name] = f"{prefix}{name}#{call}"
        return names[name]

    nodes: list[Node] = []
    for message in function.body:
        inner = Node(
            name=prefix + str(message.one("name", "") or message.one("op_type", "")),
            op_type=str(message.one("op_type", "")),
            domain=str(message.one("domain", "")),
            inputs=tuple(renamed(str(i)) for i in message.all("input")),
            outputs=tuple(renamed(str(o)) for o in message.all("output")),
            attributes=_attributes(model, message, node.attributes, function.defaults),
        )
        expanded = _expand(model, inner, depth + 1, counter, result)
        result.added += len(expanded)
        nodes += expanded
    result.added -= len(nodes)
    return nodes


def _cannot_inline(model: OnnxModel, function: Function, depth: int) -> str:
    """Why the function's body cannot stand in for a call ("" when it can)."""
    if depth >= MAX_DEPTH:
        return f"calls nested more than {MAX_DEPTH} deep are not followed"
    for domain, version in function.opsets.items():
        if domain in ("", "ai.onnx") and version != model.opsets.get(domain, version):
            return f"its body imports opset {version}, the model {model.opsets.get(domain)}"
    for message in function.body:
        for attribute in message.all("attribute"):
            if attribute.one("g") is not None or attribute.all("graphs"):
                op = str(message.one("op_type", ""))
                return f"its body holds control flow ({op})"
    return ""


def _attributes(
    model: OnnxModel, message: Message, given: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
    """A body node's attributes: references take the call's value, else the function's
    default, else are left out (the op's own default applies)."""
    attributes: dict[str, Any] = {}
    for attribute in message.all("attribute"):
        name = str(attribute.one("name", ""))
        reference = attribute.one("ref_attr_name")
        if reference is None:
            attributes[name] = attribute_value(model.path, attribute, model.data)
        elif str(reference) in given:
            attributes[name] = given[str(reference)]
        elif str(reference) in defaults:
            attributes[name] = defaults[str(reference)]
    return attributes


def _kept(node: Node, reason: str) -> str:
    what = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    return f"local function {what} at node {node.name or node.outputs[0]} is not inlined: {reason}"


def has_subgraphs(node: Node) -> bool:
    return bool(_subgraphs(node))


def outer_names(node: Node) -> list[str]:
    """The values of the enclosing graph that `node`'s subgraphs read without naming them
    as inputs (an initializer among them): the node stops their scales too, so that no
    rescaling changes what a subgraph computes."""
    found: dict[str, None] = {}
    for graph in _subgraphs(node):
        _outer(graph, set(), found)
    return [name for name in found if name and name not in node.inputs]


def _subgraphs(node: Node) -> list[Message]:
    graphs: list[Message] = []
    for value in node.attributes.values():
        items = value if isinstance(value, list) else [value]
        graphs += [v for v in items if isinstance(v, Message) and v.kind == "Graph"]
    return graphs


def _outer(graph: Message, bound: set[str], found: dict[str, None]) -> None:
    """Add to `found` what `graph` reads that neither it nor `bound` (the enclosing
    subgraphs' own values) defines."""
    own = set(bound)
    own.update(str(info.one("name", "")) for info in graph.all("input"))
    own.update(str(tensor.one("name", "")) for tensor in graph.all("initializer"))
    for message in graph.all("node"):
        for name in message.all("input"):
            if str(name) not in own:
                found.setdefault(str(name), None)
        for attribute in message.all("attribute"):
            inner = [attribute.one("g")] if attribute.one("g") is not None else []
            for subgraph in inner + list(attribute.all("graphs")):
                _outer(subgraph, own, found)
        own.update(str(name) for name in message.all("output"))
