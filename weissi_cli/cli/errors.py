"""Mapping typed errors to one line on stderr and an exit code, inside each command."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.markup import escape

from weissi_cli.cli.console import stderr_console
from weissi_cli.errors import WeissiError

P = ParamSpec("P")
R = TypeVar("R")

DEBUG_VARIABLE = "WEISSI_DEBUG"


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Known errors print `error: <message>` and exit with their code; bugs keep tracebacks."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except WeissiError as error:
            if os.environ.get(DEBUG_VARIABLE) == "1":
                raise
            console = stderr_console()
            console.print(f"[bold red]error:[/] {escape(str(error))}")
            console.print(f"[dim](set {DEBUG_VARIABLE}=1 for the traceback)[/]")
            raise typer.Exit(error.exit_code) from None

    return wrapper
