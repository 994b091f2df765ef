"""Rich rendering of the `trend` payload: one row per checkpoint, then first → last."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from weissi_cli.api.trend import checkpoint_stem
from weissi_cli.cli.render import number, origin_label

if TYPE_CHECKING:
    from weissi_cli.report.trend import TrendPoint, TrendReport

LEGEND = (
    "slack = L2 − min L2: what moving scale between layers removes (same function)\n"
    "imbalance = largest / smallest layer norm of a chain · share = slack / L2"
)


def render_trend(report: TrendReport, console: Console) -> None:
    points = report.points
    folder, names = _short_names([point.source.path for point in points])
    formats = ", ".join(dict.fromkeys(point.source.format for point in points))
    order = "ordered by step" if report.settings.order == "step" else "in the order given"
    console.print(
        Text.assemble(
            (folder or "", "bold"),
            " · " if folder else "",
            f"{len(points)} checkpoint{'s' if len(points) != 1 else ''} · {formats} · {order}",
        )
    )
    structures = list(dict.fromkeys((p.structure, p.assumed) for p in points))
    line = Text(
        f"λ1 = {number(report.settings.lambda1)}, λ2 = {number(report.settings.lambda2)}, "
        "penalties over weights (2+ dims) · structure ",
        style="dim",
    )
    for index, (origin, _) in enumerate(structures):
        line.append_text(Text(", ") if index else Text())
        line.append_text(origin_label(origin))
    console.print(line)
    console.print()
    console.print(_table(report, names))
    if len(points) > 1:
        console.print(_change(report))
    console.print(Text(LEGEND, style="dim"))


def _table(report: TrendReport, names: list[str]) -> Table:
    # Collapsed padding: nine columns fit 80 characters with a checkpoint name of 14.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    x_label = "#" if report.x_axis == "index" else report.x_axis
    table.add_column(x_label, justify="right", no_wrap=True)
    for title in ("L2", "min L2", "slack", "share", "WEISSI", "imbal.", "max ‖W‖"):
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("checkpoint", overflow="ellipsis", no_wrap=True, min_width=8)
    for index, (point, name) in enumerate(zip(report.points, names, strict=True)):
        share = point.slack_share
        table.add_row(
            _x(report, point, index),
            compact(point.l2_penalty),
            compact(point.min_l2_penalty),
            compact(point.l2_slack),
            f"{100 * share:.1f}%" if share is not None else "—",
            compact(point.weissi_penalty),
            f"{compact(point.imbalance, 3)}×" if point.imbalance is not None else "—",
            compact(point.max_norm),
            Text(name, style="red") if point.problems else escape(name),
        )
    return table


def compact(value: float | None, digits: int = 4) -> str:
    """`digits` significant digits in at most 6 characters, so a row fits 80 columns at any
    scale: 206.6, 30940, 3.09e6, 1.2e-5."""
    if value is None or math.isnan(value):
        return number(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return number(value, digits)
    if 1e4 <= abs(value) < 1e6:
        return f"{value:.0f}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _x(report: TrendReport, point: TrendPoint, index: int) -> str:
    if report.x_axis != "index":
        return str(point.step.value) if point.step else "—"
    return str(index + 1)


def _change(report: TrendReport) -> Text:
    """First → last, two quantities a line (each line well under 80 characters)."""
    first, last = report.points[0], report.points[-1]
    if report.x_axis == "index":
        span = f"checkpoint 1 → {len(report.points)}"
    else:
        span = f"{report.x_axis} {_x(report, first, 0)} → {_x(report, last, 0)}"
    lines = [
        [
            ("L2", first.l2_penalty, last.l2_penalty, ""),
            ("slack", first.l2_slack, last.l2_slack, ""),
        ],
        [
            ("WEISSI", first.weissi_penalty, last.weissi_penalty, ""),
            ("imbalance", first.imbalance, last.imbalance, "×"),
        ],
    ]
    text = Text(f"  {span}")
    for line in lines:
        text.append("\n    ")
        for index, (label, before, after, unit) in enumerate(line):
            digits = 3 if unit else 4
            if index:
                text.append(" · ")
            text.append(f"{label} {compact(before, digits)}{unit if before is not None else ''} → ")
            text.append(
                f"{compact(after, digits)}{unit if after is not None else ''}", style="bold"
            )
    return text


def _short_names(paths: list[str]) -> tuple[str | None, list[str]]:
    """The folder the checkpoints share, and each path below it (the whole path when they
    share none, or there is only one), without a checkpoint suffix they all share."""
    if len(paths) < 2:
        return None, paths
    try:
        common = os.path.commonpath(paths)
    except ValueError:  # absolute and relative paths mixed
        return None, paths
    if not common or common in paths:
        return None, paths
    names = [os.path.relpath(path, common) for path in paths]
    # One suffix for all (the format line names it) is dropped: step_1020, not step_1020.saf…
    suffixes = {name[len(checkpoint_stem(name)) :] for name in names}
    if len(suffixes) == 1 and (suffix := suffixes.pop()):
        names = [name.removesuffix(suffix) for name in names]
    return common + os.sep, names
