"""Verification of a rewritten ONNX model with ONNX Runtime: both models run on the same
random inputs, shaped from the graph's input types, and every output compared."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from weissi_cli.io.onnx_model import OnnxModel
from weissi_cli.structure.onnx_graph import SYMBOLIC_SIZES
from weissi_cli.verification import SEED, ChainVerification
from weissi_cli.verify_outputs import OutputChange, float16_caveat

PROBES = 4
INSTALL = "pip install 'weissi-cli[onnx]'"
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def onnxruntime_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except ValueError:  # a module entry set to None: imports of it are blocked
        return False


def not_run(reason: str) -> ChainVerification:
    return ChainVerification(
        "onnxruntime",
        "onnxruntime",
        True,
        None,
        None,
        None,
        f"not run: {reason}",
        level="values_only",
        caveat=f"{reason}, so the model was not run on the files: {INSTALL} to run both "
        "models in ONNX Runtime",
    )


def private_bytes(model: OnnxModel) -> int:
    """The initializer bytes ONNX Runtime copies into its own memory: those inside the model
    file, and external data at offsets it cannot map (not page-aligned). The rest it maps
    from the data files, where they cost no private memory."""
    return sum(
        initializer.nbytes
        for initializer in model.initializers
        if initializer.storage != "external" or initializer.offset % mmap.ALLOCATIONGRANULARITY
    )


def run_onnx(
    original: Path, rewritten: Path, power_of_two: bool = False, nbytes: int = 0
) -> ChainVerification:
    """Run both models in ONNX Runtime on PROBES random inputs and compare every output
    (ints in {0, 1} for integer inputs, such as token ids and masks). The models run one
    after the other, so one is in memory at a time; `nbytes`: what one of them copies into
    memory (`private_bytes`), which must fit in the memory available."""
    if not onnxruntime_available():
        return not_run("onnxruntime is not installed")
    from weissi_cli.api.rebalance import fits_in_memory

    if not fits_in_memory(nbytes, copies=2):
        return not_run(
            f"{original.name} needs {nbytes / 2**30:.1f} GiB of memory in ONNX Runtime, more "
            "than this machine has available"
        )
    import onnxruntime

    try:
        first = _session(onnxruntime, original)
        generator = np.random.default_rng(SEED)
        sizes: dict[str, int] = {}
        feeds = [_inputs(first, generator, sizes) for _ in range(PROBES)]
        before = [first.run(None, feed) for feed in feeds]
    except Exception as error:  # the runtime cannot run the input model at all
        return not_run(f"ONNX Runtime cannot run {original.name} ({_first_line(error)})")
    del first
    try:
        second = _session(onnxruntime, rewritten)
    except Exception as error:
        return ChainVerification(
            "onnxruntime",
            "onnxruntime",
            False,
            None,
            None,
            None,
            f"ONNX Runtime cannot load the written model ({_first_line(error)})",
            level="real_network",
        )
    change = OutputChange()
    for feed, outputs in zip(feeds, before, strict=True):
        after = second.run(None, feed)
        for old, new in zip(outputs, after, strict=True):
            old, new = np.asarray(old), np.asarray(new)
            if not np.issubdtype(old.dtype, np.floating) or old.size == 0:
                if not np.array_equal(old, new):
                    change.mismatch()
                continue
            change.add(old.astype(np.float64), new.astype(np.float64), str(old.dtype))
    shapes = "; ".join(
        f"{name} {'x'.join(map(str, value.shape))}" for name, value in feeds[0].items()
    )
    caveat = ""
    if power_of_two and change.dtype == "float16":
        caveat = float16_caveat(change.worst_abs, change.worst_rel, None, "these inputs")
    return change.verification(
        "onnxruntime",
        "onnxruntime",
        f"ran both models in ONNX Runtime {onnxruntime.__version__} on {PROBES} random "
        f"inputs ({shapes}): {change.outcome()}",
        PROBES,
        caveat,
    )


def _session(onnxruntime: Any, path: Path) -> Any:
    """A CPU session whose weights stay in the files: without prepacking (which copies every
    MatMul and Gemm weight into a layout of ONNX Runtime's own), page-aligned external data
    is mapped, not read into memory. Both models run with the same options."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(session: Any, generator: np.random.Generator, sizes: dict[str, int]) -> dict[str, Any]:
    """Random inputs of the session's input types; a symbolic dimension gets the size the
    structure front-end gave it (the same name, the same size in every input)."""
    feed: dict[str, Any] = {}
    for argument in session.get_inputs():
        dtype = ORT_TYPES.get(argument.type)
        if dtype is None:
            raise ValueError(f"input {argument.name} of type {argument.type}")
        shape = []
        for dim in argument.shape:
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
                continue
            key = dim if isinstance(dim, str) and dim else f"?{len(sizes)}"
            if key not in sizes:
                sizes[key] = SYMBOLIC_SIZES[len(sizes) % len(SYMBOLIC_SIZES)]
            shape.append(sizes[key])
        if np.issubdtype(dtype, np.floating):
            feed[argument.name] = generator.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feed[argument.name] = generator.integers(0, 2, shape).astype(np.bool_)
        else:
            feed[argument.name] = generator.integers(0, 2, shape).astype(dtype)
    return feed


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
