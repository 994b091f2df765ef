"""`weissi diff`: is B the same network as A (an export, a conversion, a rebalanced copy)?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weissi_cli.choices import Granularity as GranularityChoice
from weissi_cli.cli.console import (
    check_destinations,
    deliver,
    print_warnings,
    progress_bar,
    set_quiet,
)
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    ExampleDtype,
    ExampleShape,
    Force,
    Granularity,
    IncludeBias,
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
    output: Output = None,
    force: Force = False,
    quiet: Quiet = False,
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

    set_quiet(quiet)
    check_destinations([("--output", output)], force, protect=[first, second])
    with progress_bar():
        report = diff_checkpoints(
            first,
            second,
            structure_source(spec, model, example_shape, example_dtype),
            granularity,
            include_bias=include_bias,
        )
    text = to_json(report.to_dict()) if json_output else None

    def render(console: Console) -> None:
        from weissi_cli.cli.render import render_diff

        render_diff(report, console)

    notes = deliver(text, render, output, force, [first, second])
    print_warnings([*notes, *report.warnings])
    if not report.same_function:
        raise typer.Exit(1)
