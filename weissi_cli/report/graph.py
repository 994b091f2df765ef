"""The `graph` payload: the discovered structure (schema weissi.graph/1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from weissi_cli.ir import Chain, Member, Structure, Symmetry
from weissi_cli.report.common import TOOL_VERSION, Source, unassigned_dict

SCHEMA = "weissi.graph/1"


@dataclass(frozen=True)
class GraphReport:
    """The structure `graph` found: chains, scale symmetries, tensors left out, and the spec
    file that pins it (weissi.graph/1)."""

    source: Source
    structure: Structure
    dtypes: dict[str, str]
    spec: str  # the structure as a spec file (what --emit-spec prints)
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The weissi.graph/1 JSON payload."""
        return {
            "schema": SCHEMA,
            "tool_version": TOOL_VERSION,
            "source": self.source.to_dict(),
            "origin": self.structure.origin,
            "chains": [self._chain(chain) for chain in self.structure.chains],
            "symmetries": [symmetry_dict(symmetry) for symmetry in self.structure.symmetries],
            "stops": [
                {"producers": list(stop.producers), "node": stop.node, "reason": stop.reason}
                for stop in self.structure.stops
            ],
            "unassigned": [unassigned_dict(entry) for entry in self.structure.unassigned],
            "notes": list(self.structure.notes),
            "refusals": list(self.structure.refusals),
            "warnings": list(self.warnings),
        }

    def _chain(self, chain: Chain) -> dict[str, Any]:
        return {
            "id": chain.id,
            "origin": chain.origin,
            "activation": chain.activation,
            "depth": chain.depth,
            "layers": [
                {
                    "name": layer.prefix,
                    "kind": layer.kind,
                    "weight": layer.weight,
                    "bias": layer.bias,
                    "shape": list(layer.shape),
                    "dtype": self.dtypes[layer.weight],
                }
                for layer in chain.layers
            ],
            "symmetries": [symmetry_dict(symmetry) for symmetry in chain.symmetries()],
            "notes": list(chain.notes),
            "slope": chain.slope if chain.activation == "leaky_relu" else None,
            "slopes": list(chain.slopes),
        }


def member_dict(member: Member) -> dict[str, Any]:
    return {
        "tensor": member.tensor,
        "axis": member.axis,
        "exponent": member.exponent,
        "block": member.block,
        "offset": member.offset,
    }


def symmetry_dict(symmetry: Symmetry) -> dict[str, Any]:
    return {
        "id": symmetry.id,
        "size": symmetry.size,
        "members": [member_dict(member) for member in symmetry.members],
        "tie": symmetry.tie,
        "exact": symmetry.exact,
        "origin": symmetry.origin,
        "note": symmetry.note,
        "kind": symmetry.kind,
        "block": symmetry.group,
        "guess": symmetry.guess or None,
    }
