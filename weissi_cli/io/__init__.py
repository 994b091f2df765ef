"""Opening checkpoints of every supported format behind one interface."""

from __future__ import annotations

from pathlib import Path

from weissi_cli.errors import InputError
from weissi_cli.io.checkpoint import Checkpoint, TensorInfo, check_names

__all__ = ["Checkpoint", "TensorInfo", "detect_format", "open_checkpoint"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
EXPORT_SUFFIX = ".pt2"
INDEX_SUFFIX = ".safetensors.index.json"
ONNX_SUFFIX = ".onnx"


def detect_format(path: Path) -> tuple[str, Path]:
    """The format of `path` and the file to open (a folder resolves to its index or file)."""
    try:
        found = path.exists()
    except OSError as error:  # a name over the file system's limit (ENAMETOOLONG), ...
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    if not found:
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
        if len(indexes) == 1:
            return "safetensors-sharded", indexes[0]
        if len(indexes) > 1:
            names = ", ".join(index.name for index in indexes)
            raise InputError(f"{path}: several sharded indexes ({names}); name the one to use")
        singles = sorted(path.glob("*.safetensors"))
        if len(singles) == 1:
            return "safetensors", singles[0]
        models = sorted(path.glob(f"*{ONNX_SUFFIX}"))
        if not singles and len(models) == 1:
            return "onnx", models[0]
        if not singles and len(models) > 1:
            names = ", ".join(model.name for model in models)
            raise InputError(f"{path}: several ONNX models ({names}); name the one to use")
        raise InputError(
            f"{path}: a folder needs one *{INDEX_SUFFIX}, exactly one .safetensors file or "
            f"exactly one {ONNX_SUFFIX} model (found {len(singles)} .safetensors files)"
        )
    name = path.name.lower()
    if name.endswith(INDEX_SUFFIX):
        return "safetensors-sharded", path
    if name.endswith(".safetensors"):
        return "safetensors", path
    if name.endswith(EXPORT_SUFFIX):
        return "torch.export", path
    if name.endswith(TORCH_SUFFIXES):
        return "torch", path
    if name.endswith(ONNX_SUFFIX):
        return "onnx", path
    raise InputError(
        f"{path}: unknown checkpoint format; weissi reads .safetensors, a sharded "
        f"*{INDEX_SUFFIX} (or its folder), torch pickles ({', '.join(TORCH_SUFFIXES)}), "
        f"torch.export programs ({EXPORT_SUFFIX}) and ONNX models ({ONNX_SUFFIX}, or a folder "
        "holding one with its external data)"
    )


def open_checkpoint(path: Path) -> Checkpoint:
    """Open a checkpoint for lazy reading; the caller closes it."""
    checkpoint = _open(path)
    try:
        check_names(checkpoint.path, (info.name for info in checkpoint.tensors))
    except BaseException:
        checkpoint.close()
        raise
    return checkpoint


def _open(path: Path) -> Checkpoint:
    file_format, target = detect_format(path)
    if not target.is_file():  # a FIFO or device would block or mislead the readers
        raise InputError(f"{target}: not a regular file")
    if file_format == "safetensors":
        from weissi_cli.io.safetensors_file import SafetensorsCheckpoint

        return SafetensorsCheckpoint(target)
    if file_format == "safetensors-sharded":
        from weissi_cli.io.sharded import ShardedCheckpoint

        return ShardedCheckpoint(target)
    if file_format == "torch.export":
        from weissi_cli.io.exported import ExportedCheckpoint

        return ExportedCheckpoint(target)
    if file_format == "onnx":
        from weissi_cli.io.onnx_file import OnnxCheckpoint

        return OnnxCheckpoint(target)
    from weissi_cli.io.torch_pickle import TorchCheckpoint

    return TorchCheckpoint(target)
