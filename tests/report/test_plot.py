"""inspect's pictures: a heatmap of blocks by projection for transformers of 2, 32 and 100
layers (built by transformers from a LLaMA config), bars for chains; no two labels overlap."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from weissi_cli.api import inspect_checkpoint
from weissi_cli.report.plot import MAX_ROW_LABELS, block_grid, render_plot, report_figure

pytest.importorskip("matplotlib")

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
               "lm_head")  # fmt: skip


def overlapping_labels(figure: Any) -> list[tuple[str, str]]:
    """Pairs of visible texts (tick labels, titles, axis labels) that overlap. Slanted tick
    labels of one axis are compared as the parallel strips they are (their boxes, which
    are upright, overlap long before their letters do); everything else by its box."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    found: list[tuple[str, str]] = []
    texts = []
    for axis in figure.axes:
        for ticks, limits, along in (
            (axis.get_xticklabels(), axis.get_xlim(), 0),
            (axis.get_yticklabels(), axis.get_ylim(), 1),
        ):
            low, high = sorted(limits)
            shown = [
                t
                for t in ticks
                if t.get_visible() and t.get_text() and low <= t.get_position()[along] <= high
            ]  # a tick outside the view is not drawn
            texts += shown
            found += _crowded(shown, figure.dpi)
        texts += [t for t in (axis.title, axis.xaxis.label, axis.yaxis.label) if t.get_text()]
    if figure._suptitle is not None:
        texts.append(figure._suptitle)
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        slanted_pair = (
            a.get_rotation() % 180 not in (0, 90) and a.get_rotation() == b.get_rotation()
        )
        if not slanted_pair and box_a.overlaps(box_b) and box_a.width and box_b.width:
            found.append((a.get_text(), b.get_text()))
    return found


def _crowded(labels: list[Any], dpi: float) -> list[tuple[str, str]]:
    """Neighbouring labels of one axis closer than their text needs: a line's height across
    slanted or upright labels, half their widths for level labels along a horizontal axis."""
    found = []
    line = dpi / 72 * 1.1
    for a, b in itertools.pairwise(labels):
        start = a.get_transform().transform(a.get_position())
        end = b.get_transform().transform(b.get_position())
        dx, dy = abs(end[0] - start[0]), abs(end[1] - start[1])
        rotation = a.get_rotation() % 180
        if rotation == 0 and dx >= dy:  # level labels side by side
            room, needed = dx, (a.get_window_extent().width + b.get_window_extent().width) / 2
        elif rotation == 0:  # level labels one above the other
            room, needed = dy, line * a.get_fontsize()
        else:  # slanted or upright labels side by side: their strips' distance
            room, needed = dx * math.sin(math.radians(rotation)), line * a.get_fontsize()
        if room < needed:
            found.append((a.get_text(), b.get_text()))
    return found


@pytest.mark.parametrize("layers", [2, 32, 100])
def test_a_transformer_gets_a_heatmap_whose_labels_never_overlap(
    llama_folders: dict[int, Path], layers: int
) -> None:
    import matplotlib.pyplot as pyplot

    report = inspect_checkpoint(llama_folders[layers])
    grid = block_grid(report)
    assert grid is not None
    assert grid.blocks == (*(f"model.layers.{i}" for i in range(layers)), "head")
    assert grid.projections == PROJECTIONS
    drawn = report_figure(report)
    try:
        assert overlapping_labels(drawn) == []
        heat = drawn.axes[0]
        rows = [label.get_text() for label in heat.get_yticklabels()]
        assert len(rows) <= MAX_ROW_LABELS + 1
        assert rows[0] == "0"
        assert rows[-1] == "head"
        if layers <= MAX_ROW_LABELS:
            assert rows == [*map(str, range(layers)), "head"]
        assert [t.get_text() for t in heat.get_xticklabels()] == list(PROJECTIONS)
        assert [a.get_title() for a in drawn.axes[:4]] == [
            "‖W‖ now", "‖W‖ after", "γ* = after / now", "imbalance per block",
        ]  # fmt: skip
        width, height = drawn.get_size_inches()
        assert width < 16
        assert height <= 24
    finally:
        pyplot.close(drawn)


def test_the_heatmap_shows_the_reports_numbers(llama_folders: dict[int, Path]) -> None:
    report = inspect_checkpoint(llama_folders[2])
    grid = block_grid(report)
    assert grid is not None
    assert report.group is not None
    norms = {row.name: row.fro_norm for row in report.tensors}
    after = report.group.layer.tensor_l2_after
    q = PROJECTIONS.index("q_proj")
    assert grid.now[1][q] == norms["model.layers.1.self_attn.q_proj.weight"]
    assert grid.after[1][q] == pytest.approx(
        math.sqrt(after["model.layers.1.self_attn.q_proj.weight"])
    )
    assert math.isnan(grid.now[2][q])  # the head has no q_proj
    down = PROJECTIONS.index("down_proj")
    imbalance = grid.imbalance(grid.now)[0]
    finite = [v for v in grid.now[0] if math.isfinite(v)]
    assert imbalance == pytest.approx(max(finite) / min(finite))
    assert grid.now[0][down] > 0
    # rebalancing lowers each block's imbalance (the optimum evens the norms it can move)
    assert sum(grid.imbalance(grid.after)[:2]) < sum(grid.imbalance(grid.now)[:2])


def test_chains_keep_their_bars() -> None:
    import matplotlib.pyplot as pyplot

    report = inspect_checkpoint(SAMPLES / "mlp_digits.safetensors")
    assert block_grid(report) is None
    drawn = report_figure(report)
    try:
        assert [t.get_text() for t in drawn.axes[0].get_xticklabels()] == [
            "net.0", "net.2", "net.4",
        ]  # fmt: skip
        assert overlapping_labels(drawn) == []
    finally:
        pyplot.close(drawn)
    assert render_plot(report, "png").startswith(b"\x89PNG")
    assert b"<svg" in render_plot(report, "svg")[:400]


def test_a_long_chain_labels_every_few_layers(tmp_path: Path) -> None:
    import matplotlib.pyplot as pyplot
    import torch

    from tests.helpers import mlp_state, write_safetensors

    path = write_safetensors(
        tmp_path / "deep.safetensors", mlp_state(sizes=(8,) * 81, dtype=torch.float32)
    )
    drawn = report_figure(inspect_checkpoint(path))
    try:
        labels = [t.get_text() for t in drawn.axes[0].get_xticklabels()]
        assert 20 <= len(labels) <= 41
        assert labels[0] == "net.0"
        assert labels[-1] == "net.158"
        assert overlapping_labels(drawn) == []
    finally:
        pyplot.close(drawn)


def test_the_overlap_check_sees_crowded_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every label of an 80-layer chain, unthinned, overlaps its neighbours: the check
    above would say so."""
    import matplotlib.pyplot as pyplot
    import torch

    import weissi_cli.report.plot as plot
    from tests.helpers import mlp_state, write_safetensors

    monkeypatch.setattr(plot, "MAX_BAR_LABELS", 1000)
    path = write_safetensors(
        tmp_path / "deep.safetensors", mlp_state(sizes=(8,) * 81, dtype=torch.float32)
    )
    drawn = report_figure(inspect_checkpoint(path))
    try:
        assert len(overlapping_labels(drawn)) > 40
    finally:
        pyplot.close(drawn)
