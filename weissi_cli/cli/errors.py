"""Mapping errors to a message on stderr and an exit code, inside each command."""

from __future__ import annotations

import errno
import functools
import os
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from weissi_cli.cli.console import stderr_console
from weissi_cli.errors import UsageError, WeissiError
from weissi_cli.report.printable import printable

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
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:
            known = error if isinstance(error, WeissiError) else _known_os_error(error)
            if known is None:
                _report_bug(error)
                raise typer.Exit(BUG_EXIT_CODE) from None
            _report(known)
            raise typer.Exit(known.exit_code) from None

    return wrapper


def _known_os_error(error: Exception) -> WeissiError | None:
    """An OS refusal that only the path the user gave can cause, as bad usage: a name
    longer than the file system allows, wherever weissi met it (input or output)."""
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        name = error.filename if error.filename is not None else "a path"
        return UsageError(
            f"{name}: file name too long (each name in a path may have at most "
            f"{_name_max()} bytes here)"
        )
    return None


def _name_max() -> int:
    try:
        return os.pathconf(".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _report(error: WeissiError) -> None:
    from rich.markup import escape

    console = stderr_console()
    debug = os.environ.get(DEBUG_VARIABLE) == "1"
    if debug:
        console.print(escape(traceback.format_exc()), end="")
    console.print(f"[bold red]error:[/] {escape(printable(str(error)))}")
    if not debug:
        console.print(f"[dim](set {DEBUG_VARIABLE}=1 for the traceback)[/]")


def _report_bug(error: Exception) -> None:
    from rich.markup import escape

    console = stderr_console()
    console.print(escape(traceback.format_exc()), end="")
    console.print(
        f"[bold red]internal error:[/] {escape(type(error).__name__)}: "
        f"{escape(printable(str(error)))} - this is a bug in weissi; please report it with the "
        "traceback above"
    )
