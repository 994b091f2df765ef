"""Helpers for the ONNX tests: export a module with either exporter, read the structure
weissi finds in the ONNX file, name its members by the module's own parameters, and run
the model in ONNX Runtime before and after a rescaling."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime
import torch

from tests.exported_models import member_factors
from tests.structure.engine_helpers import channels, engine_structure
from weissi_cli.io import open_checkpoint
from weissi_cli.ir import Member, Structure, Symmetry
from weissi_cli.structure import discover

EXPORTERS = ("torchscript", "dynamo")


def randomize(module: torch.nn.Module, seed: int = 0, spread: bool = False) -> torch.nn.Module:
    """Distinct random parameters (exporters share equal initializers, such as the zero
    biases of a fresh model), positive running variances; with `spread`, the scales of
    successive weight matrices alternate between 0.25 and 4 (an imbalance to remove)."""
    generator = torch.Generator().manual_seed(seed)
    weights = 0
    with torch.no_grad():
        for name, value in module.state_dict().items():
            if not value.is_floating_point():
                continue
            size = 0.5
            if spread and value.dim() >= 2:
                size = 4.0 if weights % 2 else 0.25
                weights += 1
            fresh = torch.randn(value.shape, generator=generator, dtype=torch.float64) * size
            if name.endswith("running_var"):
                fresh = fresh.abs() + 0.5
            value.copy_(fresh.to(value.dtype))
    return module.eval()


def export(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    path: Path,
    exporter: str = "torchscript",
    **options: Any,
) -> Path:
    """`torch.onnx.export` quietly (the exporters warn and print progress)."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=exporter == "dynamo", **options)
    return path


def onnx_structure(path: Path) -> Structure:
    with open_checkpoint(path) as checkpoint:
        return discover(checkpoint)


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def name_map(path: Path, module: torch.nn.Module, rtol: float = 0.0) -> dict[str, tuple[str, bool]]:
    """ONNX initializer -> (the module's tensor with the same values, transposed?). With
    `rtol` > 0 values may differ by rounding (batch norm folded into a convolution)."""
    state = {n: v.detach().double().numpy() for n, v in module.state_dict().items()}
    found: dict[str, tuple[str, bool]] = {}
    for initializer in onnx.load(str(path)).graph.initializer:
        value = onnx.numpy_helper.to_array(initializer).astype(np.float64)
        if value.size <= 1 or not np.issubdtype(value.dtype, np.floating):
            continue
        for name, tensor in state.items():
            for transposed, candidate in ((False, tensor), (True, tensor.T)):
                if candidate.shape == value.shape and _same(candidate, value, rtol):
                    found.setdefault(initializer.name, (name, transposed))
    return found


def _same(a: np.ndarray, b: np.ndarray, rtol: float) -> bool:
    return bool(np.array_equal(a, b) if rtol == 0 else np.allclose(a, b, rtol=rtol, atol=1e-7))


def renamed(
    symmetries: Iterable[Symmetry], names: Mapping[str, tuple[str, bool]]
) -> list[Symmetry]:
    """Symmetries of the ONNX file with members named by the module's tensors."""
    result = []
    for symmetry in symmetries:
        members = []
        for member in symmetry.members:
            name, transposed = names[member.tensor]
            axis = 1 - member.axis if transposed and member.axis in (0, 1) else member.axis
            members.append(Member(name, axis, member.exponent, member.block, member.offset))
        result.append(replace(symmetry, members=tuple(members)))
    return result


def assert_same_structure(
    path: Path,
    module: torch.nn.Module,
    args: tuple[Any, ...],
    reference: torch.nn.Module | None = None,
    rtol: float = 0.0,
) -> Structure:
    """The symmetries weissi finds in the ONNX file are the engine's symmetries of the
    module (`reference`: an equivalent module, such as one with batch norms folded)."""
    reference = reference if reference is not None else module
    found = onnx_structure(path)
    names = name_map(path, reference, rtol)
    expected = engine_structure(reference, args)
    assert channels(renamed(found.symmetries, names)) == channels(expected.symmetries)
    return found


def random_feeds(path: Path, seed: int = 0, count: int = 3) -> list[dict[str, np.ndarray]]:
    """Inputs for the model: normal floats, integers in {0, 1}; symbolic sizes 3."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for argument in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 3 for d in argument.shape]
            if argument.type == "tensor(float)":
                feed[argument.name] = generator.standard_normal(shape).astype(np.float32)
            elif argument.type == "tensor(double)":
                feed[argument.name] = generator.standard_normal(shape)
            else:
                feed[argument.name] = generator.integers(0, 2, shape).astype(np.int64)
        feeds.append(feed)
    return feeds


def run(model: onnx.ModelProto | Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    outputs = [
        np.concatenate([np.asarray(o, np.float64).ravel() for o in session.run(None, f)])
        for f in feeds
    ]
    return np.concatenate(outputs)


def rescaled_change(path: Path, symmetries: Iterable[Symmetry], seed: int = 0) -> float:
    """The largest output change, relative to the largest output, in ONNX Runtime after
    scaling every symmetry by random positive factors (e^N(0, 1))."""
    symmetries = list(symmetries)
    model = onnx.load(str(path))
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    shapes = {name: tuple(value.shape) for name, value in arrays.items()}
    generator = np.random.default_rng(seed)
    scales = {s.id: np.exp(generator.standard_normal(s.size)) for s in symmetries}
    factors = member_factors(symmetries, scales, shapes)
    scaled = onnx.load(str(path))
    for initializer in scaled.graph.initializer:
        if initializer.name in factors:
            value = arrays[initializer.name]
            new = (value.astype(np.float64) * factors[initializer.name].numpy()).astype(value.dtype)
            initializer.CopyFrom(onnx.numpy_helper.from_array(new, initializer.name))
    feeds = random_feeds(path)
    before, after = run(model, feeds), run(scaled, feeds)
    return float(np.max(np.abs(after - before)) / np.max(np.abs(before)))


def large_mlp(
    folder: Path, hidden: int = 32768, width: int = 8192, seed: int = 0, wide: bool = False
) -> Path:
    """A ReLU MLP `width → hidden → width → 16` whose two large matrices (1 GiB each at the
    default sizes, 2.1 GB in all) are external data in one file, written in pieces so that
    the generator never holds a matrix; the layers' scales differ by 16x. `wide`: one
    hidden layer twice as wide instead, `width → 2·hidden → 16` (each matrix then scales
    along one axis only)."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    shapes = {"w1": (width, hidden), "w2": (hidden, width), "w3": (width, 16)}
    if wide:
        shapes = {"w1": (width, 2 * hidden), "w3": (2 * hidden, 16)}
    sizes = {"w1": 0.01, "w2": 0.16, "w3": 0.01}
    initializers = []
    offset = 0
    with open(folder / "model.onnx.data", "wb") as data:
        for name, shape in shapes.items():
            rows_per_piece = max(1, (1 << 24) // shape[1])
            for row in range(0, shape[0], rows_per_piece):
                rows = min(rows_per_piece, shape[0] - row)
                piece = generator.standard_normal((rows, shape[1]), dtype=np.float32)
                piece *= np.float32(sizes[name])
                data.write(piece.tobytes())
            length = shape[0] * shape[1] * 4
            tensor = onnx.TensorProto(name=name, dims=list(shape), data_type=TensorProto_FLOAT)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (
                ("location", "model.onnx.data"),
                ("offset", offset),
                ("length", length),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            initializers.append(tensor)
            offset += length
    helper = onnx.helper
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w3"], ["y"]),
    ]
    if wide:
        nodes = [nodes[0], nodes[1], helper.make_node("MatMul", ["r1", "w3"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto_FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto_FLOAT, ["batch", 16])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


TensorProto_FLOAT = onnx.TensorProto.FLOAT


def rebalanced(
    path: Path, output: Path, scales: str, include_bias: bool = False
) -> tuple[Any, dict[str, np.ndarray]]:
    """Rebalance `path` into `output` and check it end to end: written, L2 lowered, verified
    by running the real network, and ONNX Runtime's outputs unchanged (within 1e-5 of the
    largest output; bit-identical with pow2 scales). Returns the report and the rescaled
    initializers' factors (new / old, element by element)."""
    import json

    from weissi_cli.api import rebalance_checkpoint

    report = rebalance_checkpoint(path, output, scales=scales, include_bias=include_bias)
    assert report.written, report.warnings
    assert report.group is not None
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    assert report.verification.passed
    assert report.verification.level == "real_network"
    feeds = random_feeds(path, seed=7)
    before, after = run(path, feeds), run(output, feeds)
    if scales == "pow2":
        assert np.array_equal(before, after)
    else:
        assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
    written = onnx.load(str(output))
    record = json.loads({p.key: p.value for p in written.metadata_props}["weissi"])
    old = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    new = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
    assert set(old) == set(new)
    for name in set(old) - set(record["scales"]):
        assert np.array_equal(old[name], new[name]), name
    factors = {
        name: new[name].astype(np.float64) / np.where(old[name] == 0, 1, old[name])
        for name in record["scales"]
    }
    assert all(not np.allclose(f, 1) for f in factors.values())
    return report, factors
