"""Pictures of an inspect report: per-layer norms before and after rebalancing (matplotlib,
the optional extra `weissi-cli[plot]`)."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from weissi_cli.errors import UsageError
from weissi_cli.output_files import write_report_file
from weissi_cli.report.inspect import InspectReport

PLOT_FORMATS = (".png", ".svg")


def pyplot_or_error() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise UsageError(
            "plots need matplotlib: pip install 'weissi-cli[plot]' (or pip install matplotlib)"
        ) from None
    return pyplot


def render_plot(report: InspectReport, fmt: str = "png") -> bytes:
    """One panel per chain: each layer's norm now and after rebalancing (log scale), with the
    geometric mean G as a line. Without chains, one panel of every weight's norm."""
    pyplot = pyplot_or_error()
    chains = [a for a in report.chains if a.problem is None]
    panels = max(len(chains), 1)
    figure, axes = pyplot.subplots(panels, 1, figsize=(8, 3.2 * panels), squeeze=False)
    if chains:
        for axis, analysis in zip(axes[:, 0], chains, strict=True):
            names = [layer.layer.prefix for layer in analysis.layers]
            now = [layer.fro_norm for layer in analysis.layers]
            after = [layer.rebalanced_norm or math.nan for layer in analysis.layers]
            positions = range(len(names))
            axis.bar([p - 0.2 for p in positions], now, width=0.4, label="now", color="#4c72b0")
            axis.bar(
                [p + 0.2 for p in positions],
                after,
                width=0.4,
                label="after rebalancing",
                color="#55a868",
            )
            if analysis.geometric_mean:
                axis.axhline(
                    analysis.geometric_mean,
                    color="#c44e52",
                    linestyle="--",
                    label="geometric mean G",
                )
            axis.set_yscale("log")
            axis.set_xticks(list(positions), names, rotation=30, ha="right", fontsize=8)
            axis.set_ylabel("‖W‖ (Frobenius)")
            axis.set_title(
                f"{analysis.chain.id}: L2 {analysis.l2_penalty:.4g} → "
                f"{analysis.min_l2_penalty:.4g}, "
                f"imbalance {analysis.imbalance:.3g}×",
                fontsize=10,
            )
            axis.legend(fontsize=8)
    else:
        axis = axes[0, 0]
        rows = [row for row in report.tensors if row.fro_norm and len(row.shape) >= 2]
        axis.bar(range(len(rows)), [row.fro_norm for row in rows], color="#4c72b0")
        axis.set_yscale("log")
        axis.set_xticks(
            range(len(rows)), [row.name for row in rows], rotation=60, ha="right", fontsize=7
        )
        axis.set_ylabel("‖W‖ (Frobenius)")
        axis.set_title("weight norms (no chains: see the report's symmetry table)", fontsize=10)
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    for axis in axes[:, 0]:
        low, high = axis.get_ylim()
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        # label the minor ticks only when less than a decade is shown (else they crowd)
        minor = FormatStrFormatter("%g") if high < 10 * low else NullFormatter()
        axis.yaxis.set_minor_formatter(minor)
        axis.tick_params(axis="y", which="minor", labelsize=7)
    figure.suptitle(Path(report.source.path).name, fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=110)
    pyplot.close(figure)
    return buffer.getvalue()


def write_plot(
    report: InspectReport, path: Path, force: bool = False, protect: Iterable[Path] = ()
) -> list[str]:
    """Draw the report to `path` (its suffix says the format), written as every report file
    is (see output_files.write_report_file, whose notes are returned)."""
    suffix = path.suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"{path}: --plot writes .png or .svg files")
    return write_report_file(path, render_plot(report, suffix.lstrip(".")), force, protect)
