"""One case per row of the ONNX op table: a tiny module exported with torch.onnx.export
(both exporters where their graphs differ), whose symmetries read from the ONNX graph are
the engine's symmetries of the same module from torch.export, and hold when the ONNX
model is rescaled along them and run in ONNX Runtime. Rows no exporter writes are built
with onnx.helper from the module's own parameters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.onnx_models import (
    assert_same_structure,
    export,
    onnx_structure,
    op_types,
    randomize,
    rescaled_change,
)
from weissi_cli.structure.onnx_ops import OPS

ROUNDING = 1e-5  # float32 outputs in ONNX Runtime


class Act(nn.Module):
    """linear → f → linear: `f` decides whether the hidden units may scale."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], width: int = 6) -> None:
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(5, width), nn.Linear(width, 3), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.fn(self.a(x)))


def _where(mask: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda h: torch.where(mask(h), h, torch.zeros_like(h))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "prelu_like": lambda h: F.prelu(h, torch.tensor([0.25])),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "log": lambda h: torch.log(h * h + 1),
    "sqrt": lambda h: torch.sqrt(h * h + 1),
    "reciprocal": lambda h: torch.reciprocal(h * h + 1),
    "neg": torch.neg,
    "abs": torch.abs,
    "erf": torch.erf,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "atan": torch.atan,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "selu": F.selu,
    "celu": F.celu,
    "elu": F.elu,
    "mish": F.mish,
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
    "gelu": F.gelu,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "sign": lambda h: h * torch.sign(h),
    "isnan": _where(torch.isnan),
    "isinf": _where(torch.isinf),
    "and": _where(lambda h: (h > 0) & (h < 1)),
    "or": _where(lambda h: (h > 0) | (h < -1)),
    "xor": _where(lambda h: (h > 0) ^ (h < -1)),
    "not": _where(lambda h: ~(h > 0)),
    "equal": lambda h: torch.where(h == 0, h, h * 2),
    "less_equal": lambda h: torch.where(h <= 0, h, h * 2),
    "greater_equal": lambda h: torch.where(h >= 0, h, h * 2),
    "fmod": lambda h: torch.fmod(h, 1.5),
    "remainder": lambda h: torch.remainder(h, 1.5),
    "maximum": lambda h: torch.maximum(h, h * 0.5),
    "minimum": lambda h: torch.minimum(h, h * 2),
    "clamp_min_0": lambda h: torch.clamp(h, min=0),
    "clamp": lambda h: torch.clamp(h, -1, 1),
    "relu6": F.relu6,
    "square": lambda h: torch.pow(h, 2),
    "power_one": lambda h: torch.pow(h, 1.0),
    "scale_by_number": lambda h: h * 0.5 - h / 4,
    "divide_number_by": lambda h: 2.0 / (h * h + 1),
    "logsumexp": lambda h: h - torch.logsumexp(h, -1, keepdim=True),
    "cumsum": lambda h: torch.cumsum(h, 0),
    "topk": lambda h: h * torch.topk(h, 2, dim=-1).values.sum(-1, keepdim=True),
    "argmax": lambda h: h * torch.argmax(h, -1, keepdim=True).float(),
    "argmin": lambda h: h * torch.argmin(h, -1, keepdim=True).float(),
    "l2_normalised": lambda h: h / torch.linalg.vector_norm(h, 2, -1, keepdim=True),
    "l1_normalised": lambda h: h / torch.linalg.vector_norm(h, 1, -1, keepdim=True),
    "product": lambda h: h * h.prod(-1, keepdim=True),
    "amax": lambda h: h - h.amax(-1, keepdim=True),
    "amin": lambda h: h - h.amin(-1, keepdim=True),
    "mean_over_batch": lambda h: h - h.mean(0, keepdim=True),
    "sum_over_batch": lambda h: h * h.sum(0, keepdim=True),
    "tril": lambda h: torch.tril(h.unsqueeze(-1) * h.unsqueeze(-2)).sum(-1),
    "softmax": lambda h: torch.softmax(h, -1),
    "log_softmax": lambda h: F.log_softmax(h, -1),
    "numel": lambda h: h * h.numel(),
    "bitwise_and": lambda h: h * ((h > 0).long() & (h < 1).long()).float(),
    "bitwise_or": lambda h: h * ((h > 0).long() | (h < 1).long()).float(),
    "einsum": lambda h: torch.einsum("bi,bj->bi", h, h.abs()),
    "rms_norm": lambda h: F.rms_norm(h, (6,)),
    "tile": lambda h: h.repeat(1, 2)[:, :6],
    "gather_elements": lambda h: torch.gather(h, 1, torch.tensor([[5, 4, 3, 2, 1, 0]] * 4)),
    "index_select": lambda h: h[:, [0, 2, 4, 1, 3, 5]],
    "select": lambda h: h * h[:, 2:3],
    "split": lambda h: torch.cat(torch.split(h, [2, 4], 1)[::-1], 1),
    "flip": lambda h: torch.flip(h, [1]),
    "chunk_relu": lambda h: torch.cat([torch.relu(c) for c in h.chunk(2, 1)], 1),
    "pad_zero": lambda h: F.pad(h, (0, 2))[:, :6],
    "cast": lambda h: h.double().float(),
}
# Cases whose graphs differ between the exporters: exported with both.
BOTH = {
    "clamp_min_0",
    "softplus",
    "mish",
    "gelu_tanh",
    "index_select",
    "bitwise_and",
    "bitwise_or",
    "rms_norm",
    "numel",
    "tile",
    "flip",
}
ONLY_DYNAMO = {"bitwise_and", "bitwise_or", "rms_norm"}  # the TorchScript exporter refuses


class ConvNet(nn.Module):
    """conv → relu → pool → conv (groups) → pad → avg pool → flatten → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, padding=(0, 1), groups=2)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(torch.relu(self.c1(x)), 2)
        y = F.avg_pool2d(F.pad(torch.relu(self.c2(y)), (0, 0, 1, 1)), 2)
        return self.fc(torch.flatten(y, 1))


class Norms(nn.Module):
    """batch norm, instance norm, group norm and layer norm between convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x)))
        y = self.gn(self.c3(torch.relu(self.inorm(self.c2(y)))))
        y = F.adaptive_max_pool2d(torch.relu(y), 1).flatten(1)
        return self.fc(self.ln(y))


class Transposed(nn.Module):
    """a transposed convolution, nearest upsampling, a 1-D conv and pools."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(2, 4, 2, stride=2)
        self.c = nn.Conv2d(4, 3, 3, padding=1)
        self.t = nn.Conv1d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(torch.relu(self.up(x)), scale_factor=2.0, mode="nearest")
        y = torch.relu(self.c(y))
        y = F.avg_pool2d(y, 2).flatten(2)
        y = F.max_pool1d(torch.relu(self.t(y)), 2)
        return self.fc(y.mean(-1))


class Heads(nn.Module):
    """Attention by hand: q kᵀ over two heads (reshape, transpose, softmax), v → out."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, 2, 4).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        return self.o((scores @ v).transpose(1, 2).reshape(n, t, 8))


class Sdpa(Heads):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, 2, 4).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        return self.o(out.transpose(1, 2).reshape(n, t, 8))


class Embed(nn.Module):
    """An embedding, a residual MLP and an output projection. (Exporters write the
    transposed copy of a tied output projection as an initializer of its own, which then
    scales on its own: a symmetry the ONNX model has and the module does not.)"""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.up, self.down = nn.Linear(6, 12), nn.Linear(12, 6)
        self.head = nn.Linear(6, 10, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h)


class Dynamic(nn.Module):
    """Shapes computed in the graph from a dynamic batch (Shape, Gather, Concat, Reshape,
    Expand, ConstantOfShape, Range in the TorchScript export)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x.reshape(x.shape[0], -1)))
        positions = torch.arange(x.shape[0], dtype=torch.float32).unsqueeze(1)
        h = h + positions.expand(-1, 8) * 0.0
        return self.b(h.unsqueeze(1).squeeze(1))


def _act_case(name: str) -> Callable[[], tuple[nn.Module, tuple[Any, ...]]]:
    return lambda: (Act(ACTIVATIONS[name]), (torch.randn(4, 5),))


CASES: dict[str, Callable[[], tuple[nn.Module, tuple[Any, ...]]]] = {
    **{name: _act_case(name) for name in ACTIVATIONS},
    "conv": lambda: (ConvNet(), (torch.randn(2, 2, 8, 8),)),
    "norms": lambda: (Norms(), (torch.randn(2, 2, 6, 6),)),
    "transposed": lambda: (Transposed(), (torch.randn(2, 2, 4, 4),)),
    "heads": lambda: (Heads(), (torch.randn(2, 3, 8),)),
    "sdpa": lambda: (Sdpa(), (torch.randn(2, 3, 8),)),
    "embed": lambda: (Embed(), (torch.randint(0, 10, (2, 3)),)),
    "dynamic": lambda: (Dynamic(), (torch.randn(4, 2, 3),)),
}
BOTH |= {"conv", "norms", "transposed", "heads", "sdpa", "embed", "dynamic"}
DYNAMIC_AXES = {"dynamic": {"input": {0: "batch"}}}


def _exporters(name: str) -> list[str]:
    if name in ONLY_DYNAMO:
        return ["dynamo"]
    return ["torchscript", "dynamo"] if name in BOTH else ["torchscript"]


PARAMS = [(name, exporter) for name in CASES for exporter in _exporters(name)]


def _export_case(name: str, exporter: str, folder: Path) -> tuple[nn.Module, Any, Path]:
    module, args = CASES[name]()
    randomize(module, seed=len(name))
    path = folder / f"{name}_{exporter}.onnx"
    options: dict[str, Any] = {"input_names": ["input"]}
    if name in DYNAMIC_AXES:
        if exporter == "dynamo":
            options["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=2)},)
        else:
            options["dynamic_axes"] = DYNAMIC_AXES[name]
    if exporter == "dynamo" and name == "norms":
        options["optimize"] = False  # keep the batch norm (the optimiser folds it in)
    if exporter == "torchscript" and name == "norms":
        options["do_constant_folding"] = False
    export(module, args, path, exporter, **options)
    return module, args, path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    folder = tmp_path_factory.mktemp("onnx_ops")
    return {(name, exporter): _export_case(name, exporter, folder) for name, exporter in PARAMS}


@pytest.mark.parametrize(("name", "exporter"), PARAMS)
def test_onnx_symmetries_equal_the_engine_and_hold_in_onnxruntime(
    name: str, exporter: str, exported: dict[tuple[str, str], Any]
) -> None:
    module, args, path = exported[(name, exporter)]
    found = assert_same_structure(path, module, args)
    exact = [s for s in found.symmetries if s.exact]
    if exact:
        assert rescaled_change(path, exact) < ROUNDING
    approximate = [s for s in found.symmetries if not s.exact]  # batch norm's eps
    if approximate:
        assert rescaled_change(path, approximate) < 1e-3


def test_the_cases_cover_every_row(exported: dict[tuple[str, str], Any], tmp_path: Path) -> None:
    """Every ONNX op with a row appears in some case's graph (exported or built)."""
    seen: set[str] = set()
    for _, _, path in exported.values():
        seen |= op_types(path)
    for name in BUILT:
        seen |= op_types(_built(name, tmp_path)[2])
    assert set(OPS) <= seen, sorted(set(OPS) - seen)


# -- rows no exporter writes: graphs built with onnx.helper ------------------------------------


class TwoLinear(nn.Module):
    """The reference module of a built graph: a → (the op) → b."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(5, 6, bias=False), nn.Linear(6, 3, bias=False), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.fn(self.a(x)))


def _linear_graph(
    module: TwoLinear, nodes: list[onnx.NodeProto], extra: list[onnx.TensorProto], opset: int
) -> onnx.ModelProto:
    """x → MatMul(a.weightᵀ) → h → nodes → y → MatMul(b.weightᵀ) → out."""
    a = module.a.weight.detach().numpy().T.copy()
    b = module.b.weight.detach().numpy().T.copy()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"]),
            *nodes,
            helper.make_node("MatMul", ["y", "b"], ["out"]),
        ],
        "built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 3])],
        [numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b"), *extra],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _constant(name: str, value: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


# (the reference module's op, nodes from h to y, their initializers, opset)
BUILT: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], list[Any], list[Any], int]] = {
    "sum": (lambda h: h + h + h, [helper.make_node("Sum", ["h", "h", "h"], ["y"])], [], 13),
    "mean": (lambda h: h, [helper.make_node("Mean", ["h", "h"], ["y"])], [], 13),
    "size": (
        lambda h: h * 24,
        [
            helper.make_node("Size", ["h"], ["n"]),
            helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["h", "nf"], ["y"]),
        ],
        [],
        13,
    ),
    "dropout": (lambda h: h, [helper.make_node("Dropout", ["h"], ["y", "mask"])], [], 13),
    "identity": (lambda h: h, [helper.make_node("Identity", ["h"], ["y"])], [], 13),
    "cast_like": (
        lambda h: h,
        [helper.make_node("CastLike", ["h", "like"], ["y"])],
        [_constant("like", np.float32(0))],
        15,
    ),
    "sum_square": (
        lambda h: h / (h * h).sum(-1, keepdim=True),
        [
            helper.make_node("ReduceSumSquare", ["h"], ["s"], axes=[-1], keepdims=1),
            helper.make_node("Div", ["h", "s"], ["y"]),
        ],
        [],
        13,
    ),
    "upsample": (
        lambda h: h,
        [
            helper.make_node("Reshape", ["h", "shape4"], ["h4"]),
            helper.make_node("Upsample", ["h4", "scales"], ["u"], mode="nearest"),
            helper.make_node("ReduceMean", ["u"], ["y"], axes=[2, 3], keepdims=0),
        ],
        [
            _constant("scales", np.array([1, 1, 2, 2], np.float32)),
            _constant("shape4", np.array([4, 6, 1, 1], np.int64)),
        ],
        9,
    ),
    "global_pools": (
        lambda h: h,
        [
            helper.make_node("Reshape", ["h", "shape4"], ["h4"]),
            helper.make_node("GlobalAveragePool", ["h4"], ["p"]),
            helper.make_node("GlobalMaxPool", ["p"], ["q"]),
            helper.make_node("Reshape", ["q", "shape2"], ["y"]),
        ],
        [
            _constant("shape4", np.array([4, 6, 1, 1], np.int64)),
            _constant("shape2", np.array([4, 6], np.int64)),
        ],
        13,
    ),
    "softsign": (lambda h: h, [helper.make_node("Softsign", ["h"], ["y"])], [], 13),
    # one initializer read by two nodes: the hidden spaces it joins share one scale
    "shared_initializer": (
        lambda h: h,
        [
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "mid"], ["m"]),
            helper.make_node("Relu", ["m"], ["r2"]),
            helper.make_node("MatMul", ["r2", "mid"], ["m2"]),
            helper.make_node("Relu", ["m2"], ["y"]),
        ],
        [_constant("mid", np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32))],
        13,
    ),
    "group_normalization": (
        lambda h: h,
        [
            helper.make_node("Reshape", ["h", "shape4"], ["h4"]),
            helper.make_node("GroupNormalization", ["h4", "gain", "shift"], ["g"], num_groups=2),
            helper.make_node("Reshape", ["g", "shape2"], ["y"]),
        ],
        [
            _constant("shape4", np.array([4, 6, 1, 1], np.int64)),
            _constant("shape2", np.array([4, 6], np.int64)),
            _constant("gain", np.linspace(0.5, 1.5, 6).astype(np.float32)),
            _constant("shift", np.linspace(-1, 1, 6).astype(np.float32)),
        ],
        21,
    ),
    "attention": (
        lambda h: h,
        [
            helper.make_node("Reshape", ["h", "shape4"], ["q"]),
            helper.make_node("Attention", ["q", "q", "q"], ["a"]),
            helper.make_node("Reshape", ["a", "shape2"], ["y"]),
        ],
        [
            _constant("shape4", np.array([1, 1, 4, 6], np.int64)),
            _constant("shape2", np.array([4, 6], np.int64)),
        ],
        23,
    ),
    "rms_normalization": (
        lambda h: h,
        [
            helper.make_node("RMSNormalization", ["h", "gain"], ["y"], axis=-1),
        ],
        [_constant("gain", np.linspace(0.5, 1.5, 6).astype(np.float32))],
        23,
    ),
}
# the tensors of the symmetries the engine finds in each built graph
FREE = {"a", "b"}
BUILT_MEMBERS: dict[str, set[str]] = {
    "sum": FREE,
    "mean": FREE,
    "size": FREE,
    "dropout": FREE,
    "identity": FREE,
    "cast_like": FREE,
    "sum_square": set(),
    "upsample": FREE,
    "global_pools": FREE,
    "softsign": set(),
    "shared_initializer": {"a", "mid", "b"},
    "group_normalization": {"gain", "shift", "b"},
    "attention": set(),
    "rms_normalization": {"gain", "b"},
}


def _built(name: str, folder: Path) -> tuple[TwoLinear, tuple[Any, ...], Path]:
    fn, nodes, extra, opset = BUILT[name]
    module = randomize(TwoLinear(fn), seed=len(name))
    path = folder / f"built_{name}.onnx"
    onnx.save(_linear_graph(module, nodes, extra, opset), str(path))
    return module, (torch.randn(4, 5),), path


@pytest.mark.parametrize("name", sorted(BUILT))
def test_rows_no_exporter_writes(name: str, tmp_path: Path) -> None:
    module, _, path = _built(name, tmp_path)
    found = onnx_structure(path)
    members = {m.tensor for s in found.symmetries for m in s.members}
    assert members == BUILT_MEMBERS[name], found
    if found.symmetries:
        assert rescaled_change(path, found.symmetries) < ROUNDING
