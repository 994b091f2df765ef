"""`weissi diff`: is B the same network as A (an export, a conversion, a rebalanced copy)?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weissi_cli.choices import Granularity as GranularityChoice
from weissi_cli.cli.console import print_warnings, progress_bar, stdout_console
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    ExampleDtype,
    ExampleShape,
    Granularity,
    IncludeBias,
    Json,
    ModelCode,
    Spec,
    structure_source,
)


@handle_errors
def diff(
    first: Annotated[Path, typer.Argument(help="Checkpoint A.", show_default=False)],
    second: Annotated[Path, typer.Argument(help="Checkpoint B.", show_default=False)],
    spec: Spec = None,
    model: ModelCode = None,
    example_shape: ExampleShape = None,
    example_dtype: ExampleDtype = "float32",
    granularity: Granularity = GranularityChoice.LAYER,
    include_bias: IncludeBias = False,
    json_output: Json = False,
) -> None:
    """Compare two checkpoints raw and modulo scale symmetries.

    Verdicts: identical, equal up to rounding, equal up to scale shift (with the shifts),
    different (with the tensors that differ most). "Equal up to scale shift" is as good as
    the structure it stands on, which the report names: exact (a .pt2's graph, a registered
    architecture), declared (--spec) or assumed (names and shapes). Pass the --include-bias
    the rebalance used. Exit 0 when the function is the same, 1 when it differs, 2 on bad
    input. Works across formats (a .pt against its .safetensors).
    Example: weissi diff model.pt balanced.safetensors
    """
    from weissi_cli.api.diff import diff_checkpoints
    from weissi_cli.report.common import to_json

    with progress_bar(not json_output):
        report = diff_checkpoints(
            first,
            second,
            structure_source(spec, model, example_shape, example_dtype),
            granularity,
            include_bias=include_bias,
        )
    if json_output:
        typer.echo(to_json(report.to_dict()))
    else:
        from weissi_cli.cli.render import render_diff

        render_diff(report, stdout_console())
    print_warnings(report.warnings)
    if not report.same_function:
        raise typer.Exit(1)
