"""`weissi trend`: how L2, its slack and WEISSI evolve over a training run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weissi_cli.cli.console import print_warnings, progress_bar, stderr_console, stdout_console
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import Json, Spec

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
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Draw the series over the steps to FILE.png or .svg."),
    ] = None,
) -> None:
    """One row per checkpoint of a training run: L2, its minimum over scale shifts, the
    slack between them, WEISSI, the imbalance and the largest layer norm.

    Example: weissi trend run/checkpoint-* --plot trend.png
    """
    from weissi_cli.api.trend import trend_checkpoints
    from weissi_cli.errors import UsageError
    from weissi_cli.report.common import to_json

    if output_format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {output_format!r}")
    if json_output:
        output_format = "json"
    if plot is not None:
        from weissi_cli.report.plot import PLOT_FORMATS, pyplot_or_error

        if plot.suffix.lower() not in PLOT_FORMATS:
            raise UsageError(f"{plot}: --plot writes .png or .svg files")
        pyplot_or_error()  # fail before reading the checkpoints when matplotlib is missing
    with progress_bar(output_format == "text"):
        report = trend_checkpoints(checkpoints, spec, lambda1, lambda2, order)
    if output_format == "json":
        typer.echo(to_json(report.to_dict()))
    elif output_format == "csv":
        from weissi_cli.report.trend import to_csv

        typer.echo(to_csv(report), nl=False)
    else:
        from weissi_cli.cli.render_trend import render_trend

        render_trend(report, stdout_console())
    if plot is not None:
        from weissi_cli.report.trend_plot import write_trend_plot

        write_trend_plot(report, plot)
        stderr_console().print(f"wrote {plot}")
    print_warnings(report.warnings)
