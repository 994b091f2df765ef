"""The `trend` payload (weissi.trend/1): one point of penalties per checkpoint of a run."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from weissi_cli.report.common import TOOL_VERSION, Source, finite_or_none

SCHEMA = "weissi.trend/1"


@dataclass(frozen=True)
class Step:
    """A training step read from a checkpoint's name, and its unit."""

    value: int
    unit: str  # "step" | "iteration" | "epoch"
    text: str  # the part of the name it was read from, e.g. "checkpoint-500"


@dataclass(frozen=True)
class ChainPoint:
    """One chain's penalties in one checkpoint (the numbers `inspect` reports for it)."""

    id: str
    origin: str
    depth: int
    l2_penalty: float | None
    min_l2_penalty: float | None
    l2_slack: float | None
    weissi_penalty: float | None
    imbalance: float | None
    problem: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "origin": self.origin,
            "depth": self.depth,
            "l2_penalty": finite_or_none(self.l2_penalty),
            "min_l2_penalty": finite_or_none(self.min_l2_penalty),
            "l2_slack": finite_or_none(self.l2_slack),
            "weissi_penalty": finite_or_none(self.weissi_penalty),
            "imbalance": finite_or_none(self.imbalance),
            "problem": self.problem,
        }


@dataclass(frozen=True)
class SymmetriesPoint:
    """The free symmetries (from a graph, a config or a spec) solved jointly, layer-wise."""

    count: int
    unbounded: int  # symmetries whose scale can shrink L2 without limit: left at 1
    l2_penalty: float
    min_l2_penalty: float
    spread: float | None  # largest / smallest optimal factor over the tensors they move

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "unbounded": self.unbounded,
            "l2_penalty": finite_or_none(self.l2_penalty),
            "min_l2_penalty": finite_or_none(self.min_l2_penalty),
            "l2_slack": finite_or_none(max(self.l2_penalty - self.min_l2_penalty, 0.0)),
            "spread": finite_or_none(self.spread),
        }


@dataclass(frozen=True)
class TrendPoint:
    """One checkpoint's totals over its penalised tensors (every float parameter with two or
    more dimensions): L2, its minimum over the scale shifts weissi found, the slack between
    them, WEISSI, the worst imbalance, and the largest norm."""

    source: Source
    step: Step | None
    structure: str  # where the structure came from: heuristic, graph, config:<type>, spec
    assumed: bool
    penalised: int  # how many tensors the totals cover
    l2_penalty: float | None
    min_l2_penalty: float | None
    l2_slack: float | None
    log_norm_sum: float | None
    l1_direction_sum: float | None
    weissi_penalty: float | None
    imbalance: float | None
    max_norm: float | None
    max_norm_tensor: str | None
    chains: tuple[ChainPoint, ...]
    symmetries: SymmetriesPoint | None
    problems: tuple[str, ...]

    @property
    def slack_share(self) -> float | None:
        """The slack as a fraction of L2."""
        if self.l2_slack is None or not self.l2_penalty:
            return None
        return self.l2_slack / self.l2_penalty

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict(),
            "step": self.step.value if self.step else None,
            "step_unit": self.step.unit if self.step else None,
            "step_text": self.step.text if self.step else None,
            "structure": self.structure,
            "assumed": self.assumed,
            "penalised_tensors": self.penalised,
            "l2_penalty": finite_or_none(self.l2_penalty),
            "min_l2_penalty": finite_or_none(self.min_l2_penalty),
            "l2_slack": finite_or_none(self.l2_slack),
            "slack_share": finite_or_none(self.slack_share),
            "log_norm_sum": finite_or_none(self.log_norm_sum),
            "l1_direction_sum": finite_or_none(self.l1_direction_sum),
            "weissi_penalty": finite_or_none(self.weissi_penalty),
            "imbalance": finite_or_none(self.imbalance),
            "max_norm": finite_or_none(self.max_norm),
            "max_norm_tensor": self.max_norm_tensor,
            "chains": [chain.to_dict() for chain in self.chains],
            "symmetries": self.symmetries.to_dict() if self.symmetries else None,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class TrendSettings:
    """The penalty and order `trend` used: λ1, λ2, how the checkpoints were ordered, the spec
    file."""

    lambda1: float
    lambda2: float
    order: str  # "step" | "given"
    spec: str | None

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON."""
        return {
            "lambda1": self.lambda1,
            "lambda2": self.lambda2,
            "order": self.order,
            "spec": self.spec,
            "include_bias": False,
        }


@dataclass(frozen=True)
class TrendReport:
    """The points in training order; `x_axis` says what they are plotted against: the
    parsed step's unit when every point has one and they increase, else "index"."""

    settings: TrendSettings
    points: tuple[TrendPoint, ...]
    x_axis: str  # "step" | "iteration" | "epoch" | "index"
    warnings: tuple[str, ...]

    def x_values(self) -> list[int]:
        """The x axis of the series: the steps, or the positions when the steps cannot order
        them."""
        if self.x_axis == "index":
            return list(range(len(self.points)))
        return [point.step.value for point in self.points if point.step is not None]

    def to_dict(self) -> dict[str, Any]:
        """The weissi.trend/1 JSON payload."""
        return {
            "schema": SCHEMA,
            "tool_version": TOOL_VERSION,
            "settings": self.settings.to_dict(),
            "x_axis": self.x_axis,
            "checkpoints": [point.to_dict() for point in self.points],
            "warnings": list(self.warnings),
        }


CSV_COLUMNS = (
    "step",
    "step_unit",
    "path",
    "format",
    "l2_penalty",
    "min_l2_penalty",
    "l2_slack",
    "slack_share",
    "weissi_penalty",
    "log_norm_sum",
    "l1_direction_sum",
    "imbalance",
    "max_norm",
    "max_norm_tensor",
    "penalised_tensors",
    "structure",
    "problems",
)


def to_csv(report: TrendReport) -> str:
    """One row per checkpoint, in training order; undefined numbers are empty cells and
    numbers are written in full (repr) so they read back exactly."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for point in report.points:
        record = point.to_dict()
        cells: dict[str, Any] = {
            **record,
            "path": point.source.path,
            "format": point.source.format,
            "problems": "; ".join(point.problems),
        }
        writer.writerow(["" if cells[key] is None else _cell(cells[key]) for key in CSV_COLUMNS])
    return out.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
