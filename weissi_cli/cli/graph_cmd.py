"""`weissi graph`: the structure weissi finds, as a tree, JSON, or a spec file to pin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from weissi_cli.cli.console import (
    check_destinations,
    deliver,
    print_warnings,
    progress_bar,
    set_quiet,
)
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    Checkpoint,
    ExampleDtype,
    ExampleShape,
    Force,
    Json,
    ModelCode,
    Output,
    Quiet,
    Spec,
    structure_source,
)

if TYPE_CHECKING:
    from rich.console import Console


@handle_errors
def graph(
    checkpoint: Checkpoint,
    spec: Spec = None,
    model: ModelCode = None,
    example_shape: ExampleShape = None,
    example_dtype: ExampleDtype = "float32",
    emit_spec: Annotated[
        bool,
        typer.Option(
            "--emit-spec", help="Print the structure as a spec file (TOML) to review and pin."
        ),
    ] = False,
    json_output: Json = False,
    output: Output = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Show the chains of layers and the tensors left out, with reasons.

    Example: weissi graph model.safetensors --emit-spec > spec.toml
    """
    from weissi_cli.api.graph import graph_checkpoint
    from weissi_cli.report.common import to_json

    set_quiet(quiet)
    if emit_spec and json_output:
        from weissi_cli.errors import UsageError

        raise UsageError("--emit-spec and --json both choose the output; pass one of them")
    check_destinations([("--output", output)], force, protect=[checkpoint])
    with progress_bar():
        report = graph_checkpoint(
            checkpoint, structure_source(spec, model, example_shape, example_dtype)
        )
    text = report.spec if emit_spec else to_json(report.to_dict()) if json_output else None

    def render(console: Console) -> None:
        from weissi_cli.cli.render import render_graph

        render_graph(report, console)

    notes = deliver(text, render, output, force, [checkpoint])
    print_warnings([*notes, *report.warnings])
