"""`torch.export` programs (`.pt2`): their parameters and buffers, and the program itself.

The archive is never given to `torch.export.load`, which unpickles parts of it (falling back
to `weights_only=False`) and runs code from them. `pt2_program` builds the program from the
archive's JSON and raw tensor bytes instead; its docstring says why nothing from the file
runs, under any command, including when verification runs the program.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from weissi_cli.io.pt2_program import read_program
from weissi_cli.io.torch_pickle import TensorDictCheckpoint

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram


class ExportedCheckpoint(TensorDictCheckpoint):
    """An exported program: parameters, buffers and lifted constants by their state-dict
    names, plus the program (its graph gives the structure, and it can be run)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.format = "torch.export"
        contents = read_program(path)
        # Built without example inputs, so that `.module()` never compiles the archive's
        # guard code; they are kept here and given to whoever runs the program.
        self.program = contents.program
        self._examples = contents.examples
        signature = self.program.graph_signature
        tensors: dict[str, torch.Tensor] = {}
        self.buffers: set[str] = set()
        for spec in signature.input_specs:
            target = getattr(spec, "target", None)
            if target is None:
                continue
            kind = spec.kind.name
            source = (
                self.program.state_dict
                if target in self.program.state_dict
                else self.program.constants
            )
            if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") and target in source:
                value = source[target]
                tensors[target] = value.detach()
                if kind != "PARAMETER":
                    self.buffers.add(target)
        self._set_tensors(tensors)
        self.file_bytes = path.stat().st_size
        self.metadata = {}

    def example_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The archive's example inputs (loaded with `weights_only=True`), or None."""
        if self._examples is None:
            return None
        args, kwargs = self._examples
        return tuple(args), dict(kwargs)

    def program_to_save(self) -> ExportedProgram:
        """A fresh copy of the program with its example inputs, for `torch.export.save`
        (which writes them back); not to be run: see the note in `__init__`."""
        contents = read_program(self.path)
        contents.program.example_inputs = contents.examples
        return contents.program
