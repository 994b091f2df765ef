"""What a verification found, and what it proves (its level)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from weissi_cli.stats import TensorStats

SEED = 0  # of every random probe and input verification draws

# What a verification proves, strongest first:
# - real_network: the real network (an exported program, the architecture's own code, a
#   traced model's module) was run on both checkpoints and gave the same outputs;
# - declared_structure: the rewrite leaves the declared structure's function unchanged (a
#   spec file, or names and shapes the user consented to): probes ran through that
#   structure, not through the real network;
# - values_only: every rewritten value is its original times the planned factor; nothing
#   about the function was run;
# - approximate: approximate symmetries were rebalanced; the change was measured, not
#   ruled out.
Level = Literal["real_network", "declared_structure", "values_only", "approximate"]
LEVELS: tuple[Level, ...] = ("real_network", "declared_structure", "values_only", "approximate")


@dataclass(frozen=True)
class ChainVerification:
    chain_id: str
    method: str  # "probe" | "structural" | "run" | "transformers"
    passed: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    bit_identical: bool | None
    detail: str
    after: dict[str, TensorStats] = field(default_factory=dict, compare=False, repr=False)
    # Σ over input-output paths of Π |w| (ReLU chains of linear layers), which no scale
    # symmetry changes: reported when asked for, from both files, in float64.
    path_norm_before: float | None = None
    path_norm_after: float | None = None
    # What it proves. A run of the real network covers the whole rewrite: whoever runs one
    # (exported programs, transformers, a traced module) sets "real_network".
    level: Level = "values_only"
    caveat: str = ""  # what this result leaves open (float16 subnormals, ...), one per line
    probes: int = 0  # inputs run through both versions


@dataclass(frozen=True)
class Verification:
    method: str
    passed: bool
    max_abs_diff: float | None
    max_rel_diff: float | None
    probes: int
    chains: tuple[ChainVerification, ...]
    level: Level = "values_only"
    caveats: tuple[str, ...] = ()  # what the user must still check, one line each

    @staticmethod
    def combine(results: list[ChainVerification], caveats: Sequence[str] = ()) -> Verification:
        """One verdict for a rewrite: `caveats` say what its level leaves to the user."""
        methods = sorted({result.method for result in results})
        abs_diffs = [r.max_abs_diff for r in results if r.max_abs_diff is not None]
        rel_diffs = [r.max_rel_diff for r in results if r.max_rel_diff is not None]
        own = [line for r in results for line in r.caveat.splitlines() if line]
        return Verification(
            method="+".join(methods) if methods else "none",
            passed=all(result.passed for result in results),
            max_abs_diff=max(abs_diffs) if abs_diffs else None,
            max_rel_diff=max(rel_diffs) if rel_diffs else None,
            probes=max((r.probes for r in results), default=0),
            chains=tuple(results),
            level=combined_level(results),
            caveats=tuple(dict.fromkeys([*caveats, *own])),
        )


def combined_level(results: Sequence[ChainVerification]) -> Level:
    """The level of a whole rewrite: approximate if anything was; else real_network when
    the real network ran (it computes everything the rewrite touched); else the weakest
    of the parts."""
    levels = {result.level for result in results}
    if "approximate" in levels:
        return "approximate"
    if "real_network" in levels:
        return "real_network"
    if "values_only" in levels or not levels:
        return "values_only"
    return "declared_structure"


def declared_level(*origins: str) -> Level:
    """What a value check shows for symmetries of these origins: that the function of a
    structure declared by a spec or consented to (a guess) is unchanged; for a graph's or
    an architecture's, which stand for the real network, only values until it runs."""
    if origins and all(origin in ("spec", "heuristic") for origin in origins):
        return "declared_structure"
    return "values_only"
