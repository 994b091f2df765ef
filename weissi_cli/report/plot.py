"""Pictures of an inspect report (matplotlib, the optional extra `weissi-cli[plot]`): for a
model of repeated blocks (a transformer) a heatmap of blocks by projection — norms now and
after rebalancing, the factor γ* and each block's imbalance; for chains of layers, bars of
each layer's norm now and after."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weissi_cli.errors import UsageError
from weissi_cli.report.inspect import InspectReport
from weissi_cli.report.printable import printable as _printable
from weissi_cli.report.symmetries import SymmetryGroup
from weissi_cli.report_files import write_report_file

PLOT_FORMATS = (".png", ".svg")
# At most this many tick labels on an axis: more would overlap at the font sizes used.
MAX_ROW_LABELS = 40
MAX_BAR_LABELS = 40
SLANTED_LABELS = 12  # more bar labels than this stand upright
BLUE, GREEN, RED = "#4c72b0", "#55a868", "#c44e52"
DPI = 110
MISSING = "#eeeeee"  # a block without that projection


def printable(text: str) -> str:
    """A name from the file as matplotlib shows it: control characters escaped, and `$`
    escaped too (matplotlib reads text between two as mathematics)."""
    return _printable(text).replace("$", r"\$")


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


@dataclass(frozen=True)
class BlockGrid:
    """A model's penalised tensors arranged by block (rows) and projection (columns): the
    norms now and at the layer-wise optimum, NaN where a block has no such projection."""

    blocks: tuple[str, ...]
    projections: tuple[str, ...]
    now: tuple[tuple[float, ...], ...]
    after: tuple[tuple[float, ...], ...]

    def imbalance(self, values: tuple[tuple[float, ...], ...]) -> list[float]:
        """Per block, its largest over its smallest projection norm (NaN without two)."""
        found = []
        for row in values:
            norms = [v for v in row if math.isfinite(v) and v > 0]
            found.append(max(norms) / min(norms) if len(norms) > 1 else math.nan)
        return found


def block_grid(report: InspectReport) -> BlockGrid | None:
    """The grid of a report whose symmetries come in blocks (see SymmetryGroup.kinds);
    None for any other structure."""
    group = report.group
    if group is None:
        return None
    kinds = group.kinds()
    if not kinds:
        return None
    tensors: dict[str, dict[str, str]] = {}  # block -> projection -> tensor
    for row in kinds:
        for name in row.tensors:
            tensors.setdefault(row.group, {})[_projection(row.group, name)] = name
    projections = _ordered_projections(tensors)
    now_norms = {row.name: row.fro_norm for row in report.tensors}
    after_norms = _after(group)
    now, after = [], []
    for block in tensors:
        names = [tensors[block].get(projection) for projection in projections]
        now.append(tuple(_norm(now_norms.get(n)) if n else math.nan for n in names))
        after.append(
            tuple(_norm(after_norms.get(n, now_norms.get(n))) if n else math.nan for n in names)
        )
    short = tuple(printable(name) for name in _short_names(projections))
    return BlockGrid(tuple(printable(b) for b in tensors), short, tuple(now), tuple(after))


def _projection(block: str, tensor: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` in block `model.layers.3`: `self_attn.q_proj`."""
    name = tensor.removesuffix(".weight")
    if name.startswith(block + "."):
        name = name[len(block) + 1 :]
    return name


def _ordered_projections(tensors: dict[str, dict[str, str]]) -> list[str]:
    """Every projection, in the order the blocks first name them."""
    return list(dict.fromkeys(p for block in tensors.values() for p in block))


def _short_names(projections: list[str]) -> tuple[str, ...]:
    """The last part of each name where that is unique (`q_proj`), the whole name where not."""
    last = [p.rsplit(".", 1)[-1] for p in projections]
    return tuple(
        short if last.count(short) == 1 else full
        for short, full in zip(last, projections, strict=True)
    )


def _after(group: SymmetryGroup) -> dict[str, float]:
    solution = group.channel or group.layer
    return {name: math.sqrt(max(l2, 0.0)) for name, l2 in solution.tensor_l2_after.items()}


def _norm(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) and value > 0 else math.nan


def _block_labels(blocks: tuple[str, ...]) -> list[str]:
    """`model.layers.12` -> `12` when the blocks share a prefix; other groups as they are."""
    numbered = [b.rsplit(".", 1) for b in blocks]
    prefixes = {parts[0] for parts in numbered if len(parts) == 2 and parts[1].isdigit()}
    if len(prefixes) != 1:
        return list(blocks)
    prefix = prefixes.pop()
    return [b[len(prefix) + 1 :] if b.startswith(prefix + ".") else b for b in blocks]


def heatmap_figure(report: InspectReport, grid: BlockGrid) -> Any:
    """Blocks down; across: log10 ‖W‖ now and after rebalancing (one colour scale), γ* =
    after/now (log2, white at 1), and each block's imbalance now and after."""
    pyplot = pyplot_or_error()
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    rows, columns = len(grid.blocks), len(grid.projections)
    now = np.array(grid.now, dtype=float)
    after = np.array(grid.after, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_now, log_after = np.log10(now), np.log10(after)
        gamma = np.log2(after / now)
    finite = np.concatenate([log_now[np.isfinite(log_now)], log_after[np.isfinite(log_after)]])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    reach = float(np.nanmax(np.abs(gamma))) if np.isfinite(gamma).any() else 1.0
    reach = max(reach, 0.1)

    height = min(max(3.6, 0.16 * rows + 2.2), 24.0)
    width = 3 * max(2.2, 0.42 * columns + 0.9) + 2.6
    figure, axes = pyplot.subplots(
        1, 4, figsize=(width, height), sharey=True, layout="constrained",
        gridspec_kw={"width_ratios": [columns, columns, columns, max(columns * 0.7, 2.5)]},
    )  # fmt: skip
    colormap = pyplot.get_cmap("viridis").with_extremes(bad=MISSING)
    diverging = pyplot.get_cmap("RdBu_r").with_extremes(bad=MISSING)
    panels = (
        (axes[0], log_now, colormap, {"vmin": low, "vmax": high}, "‖W‖ now", "log10 ‖W‖"),
        (axes[1], log_after, colormap, {"vmin": low, "vmax": high}, "‖W‖ after", "log10 ‖W‖"),
        (
            axes[2],
            gamma,
            diverging,
            {"norm": TwoSlopeNorm(0.0, -reach, reach)},
            "γ* = after / now",
            "log2 γ*",
        ),
    )
    for axis, values, cmap, scale, title, unit in panels:
        masked = np.ma.masked_invalid(values)
        image = axis.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest", **scale)
        axis.set_title(title, fontsize=10)
        axis.set_xticks(range(columns), grid.projections, rotation=90, fontsize=8)
        bar = figure.colorbar(image, ax=axis, orientation="horizontal", fraction=0.05, pad=0.01)
        bar.set_label(unit, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    labels = _block_labels(grid.blocks)
    shown = _thinned(rows, MAX_ROW_LABELS)
    axes[0].set_yticks(shown, [labels[i] for i in shown], fontsize=7)
    prefix = _common_prefix(grid.blocks)
    axes[0].set_ylabel(f"block ({prefix}N)" if prefix else "block", fontsize=9)

    imbalance = axes[3]
    positions = np.arange(rows)
    imbalance.plot(grid.imbalance(grid.now), positions, "o-", color=BLUE, ms=3, lw=1,
                   label="now")  # fmt: skip
    imbalance.plot(grid.imbalance(grid.after), positions, "o-", color=GREEN, ms=3, lw=1,
                   label="after")  # fmt: skip
    imbalance.set_xscale("log")
    imbalance.set_title("imbalance per block", fontsize=10)
    imbalance.set_xlabel("max ‖W‖ / min ‖W‖", fontsize=8)
    imbalance.tick_params(axis="x", labelsize=7)
    imbalance.grid(True, axis="x", which="both", alpha=0.3)
    imbalance.legend(fontsize=7, loc="lower right")
    imbalance.set_ylim(rows - 0.5, -0.5)  # block 0 at the top, as in the heatmaps

    group = report.group
    assert group is not None
    optimum = (group.channel or group.layer).l2_after
    numbered = sum(1 for label in labels if label.isdigit())
    others = [label for label in labels if not label.isdigit()]
    blocks = f"{numbered} blocks" + "".join(f" + {label}" for label in others[:2])
    figure.suptitle(
        f"{printable(Path(report.source.path).name)}: {blocks} · {columns} projections · "
        f"L2 {group.l2_penalty:.4g} → {optimum:.4g} after rebalancing",
        fontsize=11,
    )
    return figure


def _thinned(count: int, most: int) -> list[int]:
    """Every k-th of `count` positions so that at most `most` are labelled, the last one
    always (it is often the odd group out, like a model's head)."""
    step = max(1, math.ceil(count / most))
    shown = list(range(0, count, step))
    if shown and shown[-1] != count - 1:
        if count - 1 - shown[-1] < step:
            shown[-1] = count - 1
        else:
            shown.append(count - 1)
    return shown


def _common_prefix(blocks: tuple[str, ...]) -> str:
    labels = _block_labels(blocks)
    for block, label in zip(blocks, labels, strict=True):
        if block != label:
            return block[: len(block) - len(label)]
    return ""


def render_plot(report: InspectReport, fmt: str = "png") -> bytes:
    """The report's picture as PNG or SVG bytes (see `report_figure`)."""
    pyplot = pyplot_or_error()
    buffer = io.BytesIO()
    drawn = report_figure(report)
    drawn.savefig(buffer, format=fmt, dpi=DPI)
    pyplot.close(drawn)
    return buffer.getvalue()


def report_figure(report: InspectReport) -> Any:
    """The heatmap for a model of repeated blocks; otherwise the bars of its chains."""
    grid = block_grid(report)
    if grid is not None:
        return heatmap_figure(report, grid)
    return bars_figure(report)


def bars_figure(report: InspectReport) -> Any:
    """One panel per chain with each layer's norm now and after rebalancing (log scale) and
    the geometric mean G as a line; without chains, one panel of every weight's norm."""
    pyplot = pyplot_or_error()
    chains = [a for a in report.chains if a.problem is None]
    panels = max(len(chains), 1)
    longest = max((len(a.layers) for a in chains), default=len(report.tensors))
    width = min(max(8.0, 0.12 * min(longest, 200)), 24.0)
    figure, axes = pyplot.subplots(
        panels, 1, figsize=(width, 3.4 * panels), squeeze=False, layout="constrained"
    )
    if chains:
        for axis, analysis in zip(axes[:, 0], chains, strict=True):
            names = [printable(layer.layer.prefix) for layer in analysis.layers]
            now = [layer.fro_norm for layer in analysis.layers]
            after = [layer.rebalanced_norm or math.nan for layer in analysis.layers]
            positions = range(len(names))
            axis.bar([p - 0.2 for p in positions], now, width=0.4, label="now", color=BLUE)
            axis.bar(
                [p + 0.2 for p in positions], after, width=0.4, label="after rebalancing",
                color=GREEN,
            )  # fmt: skip
            if analysis.geometric_mean:
                axis.axhline(
                    analysis.geometric_mean, color=RED, linestyle="--", label="geometric mean G"
                )
            axis.set_yscale("log")
            _bar_labels(axis, names, rotation=30, fontsize=8)
            axis.set_ylabel("‖W‖ (Frobenius)")
            axis.set_title(
                f"{printable(analysis.chain.id)}: L2 {analysis.l2_penalty:.4g} → "
                f"{analysis.min_l2_penalty:.4g}, imbalance {analysis.imbalance:.3g}×",
                fontsize=10,
            )
            axis.legend(fontsize=8)
    else:
        axis = axes[0, 0]
        rows = [row for row in report.tensors if row.fro_norm and len(row.shape) >= 2]
        axis.bar(range(len(rows)), [row.fro_norm for row in rows], color=BLUE)
        axis.set_yscale("log")
        _bar_labels(axis, [printable(row.name) for row in rows], rotation=60, fontsize=7)
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
    figure.suptitle(printable(Path(report.source.path).name), fontsize=11)
    return figure


def _bar_labels(axis: Any, names: list[str], rotation: int, fontsize: int) -> None:
    """Every bar's name, or every k-th one where all of them would overlap."""
    shown = _thinned(len(names), MAX_BAR_LABELS)
    if len(shown) > SLANTED_LABELS:
        rotation = 90  # upright labels take the least room along the axis
    axis.set_xticks(shown, [names[i] for i in shown], rotation=rotation, ha="right",
                    fontsize=fontsize)  # fmt: skip


def write_plot(
    report: InspectReport, path: Path, force: bool = False, protect: Iterable[Path] = ()
) -> list[str]:
    """Draw the report to `path` (its suffix says the format), written as every report file
    is (see report_files.write_report_file, whose notes are returned)."""
    suffix = path.suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"{path}: --plot writes .png or .svg files")
    return write_report_file(path, render_plot(report, suffix.lstrip(".")), force, protect)
