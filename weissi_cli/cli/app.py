"""The `weissi` Typer application: one module per command, registered here."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from weissi_cli import __version__, interrupts, threads
from weissi_cli.cli.check_cmd import check
from weissi_cli.cli.diff_cmd import diff
from weissi_cli.cli.graph_cmd import graph
from weissi_cli.cli.inspect_cmd import inspect
from weissi_cli.cli.rebalance_cmd import rebalance
from weissi_cli.cli.trend_cmd import trend

COMMANDS: dict[str, Callable[..., None]] = {
    "inspect": inspect,
    "rebalance": rebalance,
    "graph": graph,
    "check": check,
    "diff": diff,
    "trend": trend,
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"weissi {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """weissi: inspect and rebalance the weight scale of trained checkpoints."""


def build_app(only: str | None = None) -> typer.Typer:
    """The application with every command, or with the one command `only` names.

    Typer turns every registered command into a click command (signatures, annotations,
    option objects) on each run, 15 ms for all five here; `main` registers only the
    command being run, as pip's command table does. Its parsing, help and errors are the
    same: the root group and that command's definition do not change.
    """
    built = typer.Typer(
        name="weissi",
        help="Inspect and rebalance the weight scale of trained checkpoints: per-layer "
        "norms, L2 vs the scale-shift-invariant WEISSI penalty, and functionally identical "
        "rebalancing.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
        pretty_exceptions_enable=False,
        # Plain click help: Rich-formatted help imports rich.markdown and markdown-it, which
        # alone cost ~0.15 s of every `weissi --help` (the start-up budget is 0.3 s).
        rich_markup_mode=None,
    )
    for name, command in COMMANDS.items():
        if only is None or name == only:
            built.command(name)(command)
    built.callback()(_root)
    return built


app = build_app()


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def _keep_freed_memory() -> None:
    """Let glibc reuse freed chunk-sized buffers instead of returning them to the kernel.

    numpy temporaries of a few MiB per chunk are above glibc's default mmap threshold, so
    each one would be a fresh mapping, page-faulted in and unmapped again; where numpy does
    the work (no compiled kernel) that is most of a pass's system time (see the performance
    page). Serving them from the heap (mmap threshold at its 32 MiB maximum, trimming only
    above 256 MiB) avoids it. Not glibc: nothing to do.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):
        return


def main() -> None:
    _keep_freed_memory()
    # weissi decides its own threads (two reader/writer threads over chunks); a BLAS thread
    # pool on top of them fights for the same 2 cores and made small matmuls 3-15x slower.
    # Set before numpy loads (the commands import it lazily); an explicit setting wins.
    variables = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    for variable in variables:
        os.environ.setdefault(variable, "1")
    if "numpy" not in sys.modules and all(os.environ[v] == "1" for v in variables):
        threads.blas_pinned = True
    requested = sys.argv[1] if len(sys.argv) > 1 else None
    interrupts.install()
    try:
        build_app(requested if requested in COMMANDS else None)()
    except SystemExit as exit:
        # Typer ends a run that KeyboardInterrupt (or Terminated, its SIGTERM form) stopped
        # with 130; every writer has removed its unfinished output on the way out.
        if exit.code == 130 and interrupts.received is not None:
            writing = sys.modules.get("weissi_cli.output_files")
            if writing is not None:
                writing.discard_unfinished()
            sys.stderr.write(
                f"error: interrupted by {interrupts.received.name}; unfinished output was removed\n"
            )
            raise SystemExit(interrupts.exit_code()) from None
        raise
