"""The walk over a graph: every value gets a `Scale`, every op relates the scales of its
inputs and outputs by its rule (`rules.RULES`), and what the constraints leave free is the
set of scale symmetries.

The walk takes an ATen-level `torch.fx` graph (what `torch.export` produces) whose
placeholders are parameters, buffers, constants and user inputs. Parameters and buffers
that the checkpoint holds get one fresh atom per index of each dimension; everything else
(user inputs, buffers computed at load time, constants) scales by 1.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weissi_cli.structure.engine.atoms import Atoms, Ids
from weissi_cli.structure.engine.experts import (
    Routed,
    Stacked,
    collapse,
    grouped_mm,
    per_expert,
)
from weissi_cli.structure.engine.scale import Scale, force_all

# Grouped matrix products of mixture-of-experts layers (rows grouped by expert).
GROUPED_PRODUCTS = frozenset(("transformers::grouped_mm_fallback", "_grouped_mm", "grouped_mm"))
# Higher-order ops that call a submodule's graph on their inputs.
SUBGRAPH_CALLS = frozenset(("wrap_with_set_grad_enabled", "wrap_with_autocast"))

Value = Scale | Stacked | Routed | list[Any] | tuple[Any, ...] | None


@dataclass(frozen=True)
class Forcing:
    """Atoms fixed to 1 at `node` for `reason` (kept to report where symmetries stopped)."""

    node: str
    op: str
    reason: str
    ids: Ids


@dataclass(frozen=True)
class Derived:
    """A tensor axis that scales by a power of other atoms: a batch norm's running variance
    scales by the square of its input channel's scale."""

    tensor: str
    axis: int
    ids: Ids  # the atom each index of the axis follows
    exponent: int


@dataclass
class Product:
    """`out = a · b**sign`, element by element, kept until one side is known to be 1."""

    out: Ids
    a: Ids
    b: Ids
    inverse: bool
    node: str
    stored: str = ""  # the checkpoint tensor `b` is read from, unchanged but for its layout


@dataclass
class WalkState:
    atoms: Atoms = field(default_factory=Atoms)
    values: dict[str, Value] = field(default_factory=dict)
    parameters: dict[str, Scale] = field(default_factory=dict)  # tensor name -> its atoms
    derived: list[Derived] = field(default_factory=list)
    approximate: list[tuple[Ids, str]] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    forcings: list[Forcing] = field(default_factory=list)
    constants: set[str] = field(default_factory=set)  # stored tensors held fixed as factors
    joins: list[tuple[Ids, Ids, Any]] = field(default_factory=list)
    unknown_ops: dict[str, int] = field(default_factory=dict)
    node: str = ""
    op: str = ""

    def force(self, ids: Ids | Iterable[Ids], reason: str) -> None:
        """Fix atoms to 1 and remember why (for `graph`'s stops)."""
        arrays = [ids] if isinstance(ids, np.ndarray) else list(ids)
        for array in arrays:
            atoms = self.atoms
            if isinstance(atoms, RecordingAtoms):
                atoms.force_because(array, reason)
            else:
                atoms.force(array)

    def settle(self, ids: Ids) -> None:
        """Fix atoms to 1 that stand for nothing a report should mention (a running
        variance's own atoms, whose scale follows its input as a derived member)."""
        Atoms.force(self.atoms, ids)

    def force_scale(self, scale: Scale | None, reason: str) -> None:
        if scale is not None:
            self.force([factor.ids for factor in scale.factors], reason)


class RecordingAtoms(Atoms):
    """Atoms that remember every join (to rebuild components without the forcings when a
    report asks where a symmetry stopped) and attribute forcings to the current node."""

    def __init__(self, state: WalkState) -> None:
        super().__init__()
        self.state = state
        self.recording = True

    def join(self, first: Ids, second: Ids, inverse: Any = False) -> None:
        if self.recording and (np.asarray(first).size and np.asarray(second).size):
            first_b, second_b = np.broadcast_arrays(np.asarray(first), np.asarray(second))
            self.state.joins.append((first_b.ravel().copy(), second_b.ravel().copy(), inverse))
        super().join(first, second, inverse)

    def force(self, ids: Ids) -> None:
        self.force_because(ids, _DEFAULT_REASON)

    def force_because(self, ids: Ids, reason: str) -> None:
        """Force `ids`, noting the current node and `reason` when any was still free."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        if not flat.size:
            return
        if not self.recording:
            super().force(flat)
            return
        self.recording = False  # the joins to atom 0 are forcings, not edges
        try:
            free = ~self.forced(flat)
            if free.any():
                self.state.forcings.append(
                    Forcing(self.state.node, self.state.op, reason, flat[free])
                )
                super().force(flat[free])
        finally:
            self.recording = True


CONSTANT_REASON = "a stored tensor multiplying a scaled value: held fixed as a constant"
_DEFAULT_REASON = "a view, concatenation or broadcast that would need two scales in one place"


Rule = Callable[["Walk", Any, dict[str, Any]], Value]


class Walk:
    """Assign scales to every value of `graph`, in node order."""

    def __init__(
        self,
        graph: Any,
        placeholders: Mapping[str, str],
        scalable: Callable[[str], bool],
        rules: Mapping[str, Rule],
    ) -> None:
        self.graph = graph
        self.placeholders = placeholders  # placeholder node name -> tensor name
        self.scalable = scalable  # which tensor names may carry a scale
        self.rules = rules
        self.state = WalkState()
        self.state.atoms = RecordingAtoms(self.state)

    @property
    def atoms(self) -> Atoms:
        return self.state.atoms

    # values -----------------------------------------------------------------------------
    def scale_of(self, argument: Any) -> Scale | None:
        """The scale of a node argument (None for Python constants and non-tensors); an
        expert-valued argument is collapsed (its experts' atoms joined) for good."""
        name = getattr(argument, "name", None)
        if name is None or not hasattr(argument, "op"):
            return None
        value = self.state.values.get(name)
        if isinstance(value, Stacked | Routed):
            value = collapse(value, self)
            self.state.values[name] = value
        return value if isinstance(value, Scale) else None

    def expert_value(self, argument: Any) -> Any:
        """The value of a node argument as it is, experts kept apart."""
        name = getattr(argument, "name", None)
        return self.state.values.get(name) if name is not None else None

    @contextlib.contextmanager
    def substituted(self, values: Mapping[str, Any]) -> Iterator[None]:
        """Nodes temporarily valued otherwise (one expert's part at a time)."""
        saved = {name: self.state.values.get(name) for name in values}
        self.state.values.update(values)
        try:
            yield
        finally:
            self.state.values.update(saved)

    def shape_of(self, node: Any) -> tuple[int, ...] | None:
        value = node.meta.get("val") if hasattr(node, "meta") else None
        shape = getattr(value, "shape", None)
        if shape is None:
            return None
        try:
            return tuple(int(size) for size in shape)
        except (TypeError, ValueError):  # a symbolic size: ask for static shapes
            return None

    def output_shapes(self, node: Any) -> list[tuple[int, ...] | None]:
        value = node.meta.get("val")
        if isinstance(value, list | tuple):
            shapes: list[tuple[int, ...] | None] = []
            for item in value:
                shape = getattr(item, "shape", None)
                try:
                    shapes.append(tuple(int(s) for s in shape) if shape is not None else None)
                except (TypeError, ValueError):
                    shapes.append(None)
            return shapes
        return [self.shape_of(node)]

    # the walk ---------------------------------------------------------------------------
    def run(self) -> WalkState:
        for node in self.graph.nodes:
            self.state.node, self.state.op = node.name, _op_name(node.target)
            if node.op == "placeholder":
                self.state.values[node.name] = self.placeholder(node)
            elif node.op == "call_function":
                self.state.values[node.name] = self.call(node)
            elif node.op == "output":
                self.state.op = "output"
                for argument in _nodes_in(node.args):
                    self.state.force_scale(self.scale_of(argument), "reaches the graph output")
            elif node.op == "get_attr":
                self.state.values[node.name] = None
        self.resolve_products()
        return self.state

    def placeholder(self, node: Any) -> Scale | None:
        shape = self.shape_of(node)
        if shape is None:
            return None
        tensor = self.placeholders.get(node.name)
        if tensor is None or not self.scalable(tensor) or not node.users:
            # an input, a tensor the checkpoint does not hold, or one the graph never reads
            # (the unused twin of a tied weight): it does not scale
            return Scale.ones(shape)
        if tensor not in self.state.parameters:
            self.state.parameters[tensor] = Scale.fresh(shape, self.atoms)
        return self.state.parameters[tensor]

    def call(self, node: Any) -> Value:
        if node.target is operator.getitem:
            source, index = node.args
            value = self.state.values.get(getattr(source, "name", ""))
            if isinstance(value, list | tuple) and isinstance(index, int):
                return value[index] if index < len(value) else None
            return None
        if self.state.op in SUBGRAPH_CALLS:
            return self.inline(node)
        arguments = _bind(node)
        rule = self.rules.get(self.state.op)
        if rule is not None and any(
            isinstance(self.expert_value(a), Stacked | Routed)
            for a in _nodes_in(list(arguments.values()))
        ):
            kept: Value = (
                grouped_mm(self, node, arguments)
                if self.state.op in GROUPED_PRODUCTS
                else per_expert(self, node, arguments, rule)
            )
            if kept is not None:
                return kept
        tensors = [self.scale_of(a) for a in _nodes_in(list(arguments.values()))]
        if rule is None:
            free = [s for s in tensors if s is not None and not s.is_one(self.atoms)]
            for scale in free:
                self.state.force_scale(scale, f"{self.state.op} has no rule")
            if free:
                self.state.unknown_ops[self.state.op] = (
                    self.state.unknown_ops.get(self.state.op, 0) + 1
                )
            return self.ones_like_output(node)
        return rule(self, node, arguments)

    def inline(self, node: Any) -> Value:
        """A region export wraps in a submodule (grad mode, autocast): walk its graph with
        its placeholders bound to the call's inputs, as if its ops stood here."""
        owner = self.graph.owning_module
        where = [i for i, a in enumerate(node.args) if getattr(a, "op", None) == "get_attr"]
        if owner is None or not where:
            return self.ones_like_output(node)
        module = getattr(owner, node.args[where[0]].target)
        inputs = list(node.args[where[0] + 1 :])
        inner = Walk(module.graph, {}, self.scalable, self.rules)
        inner.state = self.state
        outputs: Value = None
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        with self.substituted(
            {p.name: self.expert_value(a) for p, a in zip(placeholders, inputs, strict=False)}
        ):
            for inner_node in module.graph.nodes:
                if inner_node.op == "placeholder":
                    continue
                self.state.node, self.state.op = inner_node.name, _op_name(inner_node.target)
                if inner_node.op == "call_function":
                    self.state.values[inner_node.name] = inner.call(inner_node)
                elif inner_node.op == "output":
                    results = inner_node.args[0]
                    outputs = [
                        self.state.values.get(r.name) if hasattr(r, "name") else None
                        for r in (results if isinstance(results, list | tuple) else [results])
                    ]
        return outputs

    def ones_like_output(self, node: Any) -> Value:
        shapes = self.output_shapes(node)
        value = node.meta.get("val")
        if isinstance(value, list | tuple):
            return [Scale.ones(s) if s is not None else None for s in shapes]
        return Scale.ones(shapes[0]) if shapes[0] is not None else None

    # products ---------------------------------------------------------------------------
    def product(self, out: Ids, a: Ids, b: Ids, inverse: bool, stored: str = "") -> None:
        """`out = a · b**(-1 if inverse else 1)` element by element; `stored` names the
        checkpoint tensor `b` is read from, when it is one."""
        self.state.products.append(Product(out, a, b, inverse, self.state.node, stored))

    def resolve_products(self) -> None:
        """Settle the deferred products: once one side is 1 the other two are joined. What
        is never settled has two free scales meeting in one value, which no equality between
        two atoms can follow: a factor read from a stored tensor is then held fixed as a
        constant (the other side's scale passes the product, `(s·x)·c = s·(x·c)`), and
        where no factor is stored, all three are forced."""
        atoms = self.atoms
        pending = self.state.products
        while pending:
            progress = False
            left: list[Product] = []
            for item in pending:
                a_one = atoms.forced(item.a)
                b_one = atoms.forced(item.b)
                out_one = atoms.forced(item.out)
                settled = a_one | b_one | out_one
                if a_one.any():
                    atoms.join(item.out[a_one], item.b[a_one], item.inverse)
                if (b_one & ~a_one).any():
                    mask = b_one & ~a_one
                    atoms.join(item.out[mask], item.a[mask])
                if (out_one & ~a_one & ~b_one).any():
                    mask = out_one & ~a_one & ~b_one
                    atoms.join(item.a[mask], item.b[mask], not item.inverse)
                if settled.any():
                    progress = True
                if not settled.all():
                    rest = ~settled
                    left.append(
                        Product(
                            item.out[rest],
                            item.a[rest],
                            item.b[rest],
                            item.inverse,
                            item.node,
                            item.stored,
                        )
                    )
            pending = left
            if not progress and pending:
                stored = next((p for p in pending if p.stored), None)
                if stored is not None:
                    self.state.node, self.state.op = stored.node, "mul"
                    self.hold_constant(stored.stored, [stored.b])
                    continue
                item = pending.pop(0)
                self.state.node, self.state.op = item.node, "mul"
                self.state.force(
                    [item.out, item.a, item.b], "a product of two values that both carry scales"
                )
        self.state.products = []

    def hold_constant(self, tensor: str, ids: Iterable[Ids]) -> None:
        """Fix every atom of the stored `tensor` (and `ids`, the atoms it is read as): it is
        a constant of the network (a folded table or multiplier), not a weight that scales."""
        scale = self.state.parameters.get(tensor)
        own = [factor.ids for factor in scale.factors] if scale is not None else []
        self.state.force([*own, *ids], CONSTANT_REASON)
        self.state.constants.add(tensor)


def _op_name(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    if schema is not None:
        namespace, _, name = schema.name.partition("::")
        return name if namespace == "aten" else f"{namespace}::{name}"
    return str(getattr(target, "__name__", target))


def _bind(node: Any) -> dict[str, Any]:
    """The node's arguments by their schema names (positional ones as `arg<i>` otherwise)."""
    schema = getattr(node.target, "_schema", None)
    bound: dict[str, Any] = {}
    if schema is None:
        bound.update({f"arg{i}": value for i, value in enumerate(node.args)})
        bound.update(dict(node.kwargs))
        return bound
    names = [argument.name for argument in schema.arguments]
    for index, value in enumerate(node.args):
        bound[names[index] if index < len(names) else f"arg{index}"] = value
    bound.update(dict(node.kwargs))
    for argument in schema.arguments:
        if argument.name not in bound and argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound


def _nodes_in(value: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(value, list | tuple):
        for item in value:
            found += _nodes_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            found += _nodes_in(item)
    elif hasattr(value, "op") and hasattr(value, "name"):
        found.append(value)
    return found


def force_inputs(walk: Walk, arguments: Mapping[str, Any], reason: str) -> None:
    for argument in _nodes_in(list(arguments.values())):
        walk.state.force_scale(walk.scale_of(argument), reason)


__all__ = ["Derived", "Forcing", "Walk", "WalkState", "force_all", "force_inputs"]
