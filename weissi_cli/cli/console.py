"""Rich consoles: results to stdout; progress, warnings and errors to stderr.

Width comes from the terminal, or from COLUMNS when output is piped (Rich's rule).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

# Rich is imported when a console is first made, not with the CLI: `weissi --help` stays fast.


def stdout_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_warnings(warnings: tuple[str, ...] | list[str]) -> None:
    from rich.markup import escape

    sys.stdout.flush()  # keep the result and the warnings in order on a shared terminal
    console = stderr_console()
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
