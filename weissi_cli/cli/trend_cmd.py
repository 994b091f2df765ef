"""`weissi trend`: how L2, its slack and WEISSI evolve over a training run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weissi_cli.cli.console import (
    check_destinations,
    deliver,
    print_note,
    print_warnings,
    progress_bar,
    set_quiet,
)
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import Force, Json, Output, Plot, Quiet, Spec

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("text", "json", "csv")


@handle_errors
def trend(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoints of one run, in any format weissi reads: run/checkpoint-*/ "
            "folders, step_*.pt files, a run folder holding them, or a quoted glob.",
            show_default=False,
        ),
    ],
    spec: Spec = None,
    lambda1: Annotated[
        float, typer.Option("--lambda1", help="Weight λ1 of Σ ln‖W‖ in the WEISSI penalty.")
    ] = 1.0,
    lambda2: Annotated[
        float, typer.Option("--lambda2", help="Weight λ2 of Σ ‖W/‖W‖‖₁ in the WEISSI penalty.")
    ] = 1.0,
    order: Annotated[
        str,
        typer.Option(
            "--order",
            help="step: by the training step in each name (checkpoint-500, step_100, "
            "epoch=3-step=1200); given: as on the command line.",
        ),
    ] = "step",
    json_output: Json = False,
    output_format: Annotated[
        str, typer.Option("--format", help="text (default), json (weissi.trend/1) or csv.")
    ] = "text",
    output: Output = None,
    plot: Plot = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """One row per checkpoint of a training run: L2, its minimum over scale shifts, the
    slack between them, WEISSI, the imbalance and the largest layer norm.

    Example: weissi trend run/checkpoint-* --plot trend.png
    """
    from weissi_cli.api.trend import trend_checkpoints
    from weissi_cli.errors import UsageError
    from weissi_cli.report.common import to_json

    set_quiet(quiet)
    if output_format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {output_format!r}")
    if json_output:
        output_format = "json"
    if plot is not None:
        from weissi_cli.report.plot import PLOT_FORMATS, pyplot_or_error

        if plot.suffix.lower() not in PLOT_FORMATS:
            raise UsageError(f"{plot}: --plot writes .png or .svg files")
        pyplot_or_error()  # fail before reading the checkpoints when matplotlib is missing
    from weissi_cli.api.trend import expand_paths

    inputs = expand_paths(checkpoints)
    check_destinations([("--output", output), ("--plot", plot)], force, protect=inputs)
    with progress_bar():
        report = trend_checkpoints(checkpoints, spec, lambda1, lambda2, order)
    text: str | None = None
    if output_format == "json":
        text = to_json(report.to_dict())
    elif output_format == "csv":
        from weissi_cli.report.trend import to_csv

        text = to_csv(report)

    def render(console: Console) -> None:
        from weissi_cli.cli.render_trend import render_trend

        render_trend(report, console)

    notes = deliver(text, render, output, force, inputs)
    if plot is not None:
        from weissi_cli.report.trend_plot import write_trend_plot

        notes += write_trend_plot(report, plot, force, inputs)
        print_note(f"wrote {plot}")
    print_warnings([*notes, *report.warnings])
