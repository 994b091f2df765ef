"""The picture of a `trend` payload: L2, its minimum and the slack, WEISSI, and the imbalance
over a run's steps (matplotlib, the optional extra `weissi-cli[plot]`)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from weissi_cli.errors import UsageError
from weissi_cli.report.plot import PLOT_FORMATS, pyplot_or_error
from weissi_cli.report.trend import TrendReport
from weissi_cli.report_files import write_report_file

# A y range wider than this ratio is drawn on a log scale.
LOG_ABOVE_RATIO = 20.0
# The smallest y range of the WEISSI panel, relative to its values.
MIN_RELATIVE_RANGE = 0.02


def render_trend_plot(report: TrendReport, fmt: str = "png") -> bytes:
    """Three panels over the steps: L2, min L2 and slack (log scale: they span decades and
    are positive); WEISSI (linear: its log terms may be negative); imbalance and the largest
    norm (log scale when they span more than LOG_ABOVE_RATIO)."""
    pyplot = pyplot_or_error()
    from matplotlib.ticker import MaxNLocator

    x = report.x_values()
    figure, axes = pyplot.subplots(3, 1, figsize=(8, 8.4), sharex=True)
    penalties, weissi, scale = axes

    def series(attribute: str) -> list[float]:
        return [_value(getattr(point, attribute)) for point in report.points]

    penalties.plot(x, series("l2_penalty"), marker="o", color="#4c72b0", label="L2")
    penalties.plot(
        x,
        series("min_l2_penalty"),
        marker="o",
        color="#55a868",
        label="min L2 over scale shifts",
    )
    penalties.plot(
        x,
        series("l2_slack"),
        marker="o",
        linestyle="--",
        color="#c44e52",
        label="slack = L2 − min",
    )
    _maybe_log(penalties, [*series("l2_penalty"), *series("l2_slack")], force=True)
    penalties.set_ylabel("Σ ‖W‖²")
    penalties.set_title("L2 penalty and the part a rescaling removes", fontsize=10)
    penalties.legend(fontsize=8)

    weissi_values = series("weissi_penalty")
    weissi.plot(x, weissi_values, marker="o", color="#8172b2", label="WEISSI")
    weissi.set_ylabel("WEISSI")
    _at_least_relative_range(weissi, weissi_values)
    settings = report.settings
    weissi.set_title(
        f"WEISSI = {settings.lambda1:g}·Σ ln‖W‖ + {settings.lambda2:g}·Σ ‖W/‖W‖‖₁ "
        "(unchanged by any scale shift)",
        fontsize=10,
    )

    imbalance = series("imbalance")
    largest = series("max_norm")
    scale.plot(x, imbalance, marker="o", color="#dd8452", label="imbalance (max/min layer norm)")
    scale.plot(x, largest, marker="o", color="#937860", label="largest ‖W‖")
    _maybe_log(scale, [*imbalance, *largest])
    scale.set_title("scale across layers", fontsize=10)
    scale.legend(fontsize=8)
    scale.set_xlabel("checkpoint (order given)" if report.x_axis == "index" else report.x_axis)
    scale.xaxis.set_major_locator(MaxNLocator(integer=True))

    for axis in axes:
        axis.grid(True, which="major", alpha=0.3)
        _plain_ticks(axis)
    figure.suptitle(_title(report), fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=110)
    pyplot.close(figure)
    return buffer.getvalue()


def _at_least_relative_range(axis: Any, values: list[float]) -> None:
    """A series that rounding alone moves (WEISSI under a pure scale shift) is drawn flat:
    the y range spans at least MIN_RELATIVE_RANGE of its magnitude."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    middle, least = (low + high) / 2, MIN_RELATIVE_RANGE * max(abs(low), abs(high), 1e-12)
    if high - low < least:
        axis.set_ylim(middle - least / 2, middle + least / 2)


def _plain_ticks(axis: Any) -> None:
    """Plain numbers on the y axis (no offset, no 6×10¹); on a log scale, ticks at 1, 2, 3
    and 5 of each decade below two decades, at 1, 2 and 5 below three, else one a decade."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter, ScalarFormatter

    if axis.get_yscale() == "log":
        low, high = axis.get_ylim()
        if high < 100 * low:
            axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        elif high < 1000 * low:
            axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(NullFormatter())
    else:
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axis.yaxis.set_major_formatter(formatter)


def _title(report: TrendReport) -> str:
    """The folder the checkpoints share (as given), and how many there are."""
    count = f"{len(report.points)} checkpoint{'s' if len(report.points) != 1 else ''}"
    paths = [point.source.path for point in report.points]
    try:
        common = os.path.commonpath(paths)
    except ValueError:  # absolute and relative paths mixed
        return count
    if not common or len(paths) == 1:
        return f"{paths[0]}" if len(paths) == 1 else count
    return f"{common}: {count}"


def _value(value: float | None) -> float:
    return math.nan if value is None else value


def _maybe_log(axis: Any, values: list[float], force: bool = False) -> None:
    """Log scale when asked (a zero, e.g. no slack at all, is then left out of the line) or
    when positive values span more than LOG_ABOVE_RATIO."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    if not positive:
        return
    if force or (
        len(positive) == sum(1 for v in values if math.isfinite(v))
        and max(positive) / min(positive) > LOG_ABOVE_RATIO
    ):
        axis.set_yscale("log")


def write_trend_plot(
    report: TrendReport, path: Path, force: bool = False, protect: Iterable[Path] = ()
) -> list[str]:
    """Render to `path` (.png or .svg), written as every report file is (atomically, never
    through a link, an existing file only with `force`, never one of `protect`); returns
    the writer's notes."""
    suffix = path.suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"{path}: --plot writes .png or .svg files")
    data = render_trend_plot(report, suffix.lstrip("."))
    return write_report_file(path, data, force, protect)
