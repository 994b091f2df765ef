"""Pieces shared by every payload: the source description and JSON serialisation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from weissi_cli import __version__
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.ir import Unassigned


@dataclass(frozen=True)
class Source:
    path: str
    format: str
    tensors: int
    parameters: int
    bytes: int

    @staticmethod
    def of(checkpoint: Checkpoint, given_path: str) -> Source:
        return Source(
            path=given_path,
            format=checkpoint.format,
            tensors=len(checkpoint.tensors),
            parameters=checkpoint.parameter_count,
            bytes=checkpoint.file_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "bytes": self.bytes,
        }


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/Inf: undefined numbers are null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def unassigned_dict(entry: Unassigned) -> dict[str, str]:
    return {"name": entry.name, "reason": entry.reason}


def to_json(payload: dict[str, Any]) -> str:
    """Stable JSON for machines, on one line: NaN is an error, never an output. (Indented
    output goes through json's pure-Python encoder: 0.13 s for a transformer's payload, ten
    times the C encoder; `jq .` indents it for people.)"""
    return json.dumps(payload, allow_nan=False)


TOOL_VERSION = __version__
