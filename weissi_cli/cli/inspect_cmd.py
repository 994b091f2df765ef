"""`weissi inspect`: per-layer norms, L2 vs WEISSI penalty, and the optimal rebalancing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from weissi_cli.choices import Granularity as GranularityChoice
from weissi_cli.cli.console import (
    check_destinations,
    deliver,
    print_note,
    print_warnings,
    progress_bar,
    set_quiet,
)
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    AllowApproximate,
    Checkpoint,
    ExampleDtype,
    ExampleShape,
    Force,
    Granularity,
    IncludeBias,
    Json,
    ModelCode,
    Output,
    Plot,
    Quiet,
    Spec,
    structure_source,
)

if TYPE_CHECKING:
    from rich.console import Console


@handle_errors
def inspect(
    checkpoint: Checkpoint,
    spec: Spec = None,
    model: ModelCode = None,
    example_shape: ExampleShape = None,
    example_dtype: ExampleDtype = "float32",
    lambda1: Annotated[
        float, typer.Option("--lambda1", help="Weight λ1 of Σ ln‖W‖ in the WEISSI penalty.")
    ] = 1.0,
    lambda2: Annotated[
        float, typer.Option("--lambda2", help="Weight λ2 of Σ ‖W/‖W‖‖₁ in the WEISSI penalty.")
    ] = 1.0,
    include_bias: IncludeBias = False,
    granularity: Granularity = GranularityChoice.LAYER,
    allow_approximate: AllowApproximate = False,
    json_output: Json = False,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="text (default), json, markdown, or html (self-contained, plot inlined).",
        ),
    ] = "text",
    output: Output = None,
    plot: Plot = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Report how the weight scale is spread across layers.

    --plot draws each chain's layer norms before and after rebalancing, or for a model of
    repeated blocks (a transformer) a heatmap of blocks by projection.

    Example: weissi inspect model.safetensors --json | jq '.chains[0].l2_slack'
    """
    from weissi_cli.api.inspect import inspect_checkpoint
    from weissi_cli.errors import UsageError
    from weissi_cli.report.common import to_json

    set_quiet(quiet)
    formats = ("text", "json", "markdown", "html")
    if output_format not in formats:
        raise UsageError(f"--format must be one of {', '.join(formats)}, not {output_format!r}")
    if json_output:
        output_format = "json"
    if plot is not None:
        from weissi_cli.report.plot import PLOT_FORMATS, pyplot_or_error

        if plot.suffix.lower() not in PLOT_FORMATS:
            raise UsageError(f"{plot}: --plot writes .png or .svg files")
        # Fail before the pass over the checkpoint when matplotlib is missing.
        pyplot_or_error()
    check_destinations([("--output", output), ("--plot", plot)], force, protect=[checkpoint])
    with progress_bar():
        report = inspect_checkpoint(
            checkpoint,
            structure_source(spec, model, example_shape, example_dtype, allow_approximate),
            lambda1,
            lambda2,
            include_bias,
            granularity=granularity,
            allow_approximate=allow_approximate,
        )
    text: str | None = None
    if output_format == "json":
        text = to_json(report.to_dict())
    elif output_format in ("markdown", "html"):
        from weissi_cli.report.documents import to_html, to_markdown

        text = to_markdown(report) if output_format == "markdown" else to_html(report)

    def render(console: Console) -> None:
        from weissi_cli.cli.render import render_inspect

        render_inspect(report, console)

    notes = deliver(text, render, output, force, [checkpoint])
    if plot is not None:
        from weissi_cli.report.plot import write_plot

        notes += write_plot(report, plot, force, protect=[checkpoint])
        print_note(f"wrote {plot}")
    print_warnings([*notes, *report.warnings])
