"""`weissi graph`: the structure weissi finds, as a tree, JSON, or a spec file to pin."""

from __future__ import annotations

from typing import Annotated

import typer

from weissi_cli.cli.console import print_warnings, stdout_console
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    Checkpoint,
    ExampleDtype,
    ExampleShape,
    Json,
    ModelCode,
    Spec,
    structure_source,
)


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
) -> None:
    """Show the chains of layers and the tensors left out, with reasons.

    Example: weissi graph model.safetensors --emit-spec > spec.toml
    """
    from weissi_cli.api.graph import graph_checkpoint
    from weissi_cli.report.common import to_json

    if emit_spec and json_output:
        from weissi_cli.errors import UsageError

        raise UsageError("--emit-spec and --json both choose the output; pass one of them")
    report = graph_checkpoint(
        checkpoint, structure_source(spec, model, example_shape, example_dtype)
    )
    if emit_spec:
        typer.echo(report.spec, nl=False)
    elif json_output:
        typer.echo(to_json(report.to_dict()))
    else:
        from weissi_cli.cli.render import render_graph

        render_graph(report, stdout_console())
    print_warnings(report.warnings)
