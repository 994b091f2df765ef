"""The `weissi` Typer application: one module per command, registered here."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from weissi_cli import __version__
from weissi_cli.cli.check_cmd import check
from weissi_cli.cli.diff_cmd import diff
from weissi_cli.cli.graph_cmd import graph
from weissi_cli.cli.inspect_cmd import inspect
from weissi_cli.cli.rebalance_cmd import rebalance

app = typer.Typer(
    name="weissi",
    help="Inspect and rebalance the weight scale of trained checkpoints: per-layer norms, "
    "L2 vs the scale-shift-invariant WEISSI penalty, and functionally identical rebalancing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: Rich-formatted help imports rich.markdown and markdown-it, which
    # alone cost ~0.15 s of every `weissi --help` (the start-up budget is 0.3 s).
    rich_markup_mode=None,
)
app.command()(inspect)
app.command()(rebalance)
app.command()(graph)
app.command()(check)
app.command()(diff)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"weissi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """weissi: inspect and rebalance the weight scale of trained checkpoints."""


def main() -> None:
    # weissi decides its own threads (two reader/writer threads over chunks); a BLAS thread
    # pool on top of them fights for the same 2 cores and made small matmuls 3-15x slower.
    # Set before numpy loads (the commands import it lazily); an explicit setting wins.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    app()
