"""Mapping errors to a message on stderr and an exit code, inside each command."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from weissi_cli.cli.console import stderr_console
from weissi_cli.errors import WeissiError

P = ParamSpec("P")
R = TypeVar("R")

DEBUG_VARIABLE = "WEISSI_DEBUG"
# Exit code of an unexpected exception: a bug, never to be confused with 1 (a failed check)
# or 2 (bad input). 70 is EX_SOFTWARE.
BUG_EXIT_CODE = 70


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Known errors print `error: <message>` and exit with their code; bugs keep their
    traceback and exit with BUG_EXIT_CODE."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except WeissiError as error:
            from rich.markup import escape

            console = stderr_console()
            if os.environ.get(DEBUG_VARIABLE) == "1":
                console.print(escape(traceback.format_exc()), end="")
            console.print(f"[bold red]error:[/] {escape(str(error))}")
            if os.environ.get(DEBUG_VARIABLE) != "1":
                console.print(f"[dim](set {DEBUG_VARIABLE}=1 for the traceback)[/]")
            raise typer.Exit(error.exit_code) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:
            from rich.markup import escape

            console = stderr_console()
            console.print(escape(traceback.format_exc()), end="")
            console.print(
                f"[bold red]internal error:[/] {escape(type(error).__name__)}: {escape(str(error))}"
                " - this is a bug in weissi; please report it with the traceback above"
            )
            raise typer.Exit(BUG_EXIT_CODE) from None

    return wrapper
