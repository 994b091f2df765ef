"""Where a checkpoint's structure comes from, as the user asked for it on the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StructureSource:
    """The structure options every command that reads structure shares.

    `spec`: a structure spec file (wins over everything). `model`: `FILE.py:NAME`, the
    model's own code, exported on inputs of `example_shapes` (`example_dtype`).
    `allow_approximate`: include symmetries that are exact only to first order across a
    smooth activation (GELU), which `rebalance` then measures with the model's own code.
    """

    spec: Path | None = None
    model: str | None = None
    example_shapes: tuple[tuple[int, ...], ...] = ()
    example_dtype: str = "float32"
    allow_approximate: bool = False

    @staticmethod
    def of(
        spec: str | os.PathLike[str] | StructureSource | None, allow_approximate: bool = False
    ) -> StructureSource:
        """A source from the `spec` argument of the library functions: a spec file's path, or
        a source as it is."""
        if isinstance(spec, StructureSource):
            return spec
        return StructureSource(
            spec=Path(spec) if spec is not None else None, allow_approximate=allow_approximate
        )
