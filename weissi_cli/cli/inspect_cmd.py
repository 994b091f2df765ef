"""`weissi inspect`: per-layer norms, L2 vs WEISSI penalty, and the optimal rebalancing."""

from __future__ import annotations

from typing import Annotated

import typer

from weissi_cli.cli.console import print_warnings, stdout_console
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import Checkpoint, Granularity, IncludeBias, Json, Spec


@handle_errors
def inspect(
    checkpoint: Checkpoint,
    spec: Spec = None,
    lambda1: Annotated[
        float, typer.Option("--lambda1", help="Weight λ1 of Σ ln‖W‖ in the WEISSI penalty.")
    ] = 1.0,
    lambda2: Annotated[
        float, typer.Option("--lambda2", help="Weight λ2 of Σ ‖W/‖W‖‖₁ in the WEISSI penalty.")
    ] = 1.0,
    include_bias: IncludeBias = False,
    granularity: Granularity = "layer",
    json_output: Json = False,
) -> None:
    """Report how the weight scale is spread across layers.

    Example: weissi inspect model.safetensors --json | jq '.chains[0].l2_slack'
    """
    from weissi_cli.api.inspect import inspect_checkpoint
    from weissi_cli.report.common import to_json

    report = inspect_checkpoint(
        checkpoint, spec, lambda1, lambda2, include_bias, granularity=granularity
    )
    if json_output:
        typer.echo(to_json(report.to_dict()))
    else:
        from weissi_cli.cli.render import render_inspect

        render_inspect(report, stdout_console())
    print_warnings(report.warnings)
