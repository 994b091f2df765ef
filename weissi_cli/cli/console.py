"""Rich consoles: results to stdout; progress, warnings and errors to stderr.

Width comes from the terminal, or from COLUMNS when output is piped (Rich's rule).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from weissi_cli.progress import listen
from weissi_cli.report.printable import printable, printable_lines

if TYPE_CHECKING:
    from rich.console import Console

# Rich is imported when a console is first made, not with the CLI: `weissi --help` stays fast.


def stdout_console() -> Console:
    return _escaping_console()(highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    return _escaping_console()(stderr=True, highlight=False, soft_wrap=True)


@functools.cache
def _escaping_console() -> type[Console]:
    """A Console that escapes control characters in whatever it renders (Rich passes an
    escape sequence in a string through as it is), keeping its own styles and controls:
    the last guard behind the renderers, which escape names where they put them."""
    from rich.console import Console, ConsoleOptions, RenderableType
    from rich.segment import Segment

    class EscapingConsole(Console):
        def render(
            self, renderable: RenderableType, options: ConsoleOptions | None = None
        ) -> Iterator[Segment]:
            for segment in super().render(renderable, options):
                if segment.control is None and segment.text:
                    text = printable_lines(segment.text)
                    if text is not segment.text:
                        segment = Segment(text, segment.style)
                yield segment

    return EscapingConsole


def print_warnings(warnings: tuple[str, ...] | list[str]) -> None:
    if not warnings:
        return
    sys.stdout.flush()  # keep the result and the warnings in order on a shared terminal
    if not sys.stderr.isatty() and not os.environ.get("FORCE_COLOR"):
        # What Rich prints off a terminal, without loading Rich (60 ms of a CI run).
        sys.stderr.write("".join(f"warning: {printable(warning)}\n" for warning in warnings))
        sys.stderr.flush()
        return
    from rich.markup import escape

    console = stderr_console()
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(printable(warning))}")


# A pass shorter than this never shows a bar (no flicker on small models).
BAR_DELAY_SECONDS = 1.0


class _Bar:
    """A Rich progress bar on stderr that appears once a pass has run for a while."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None

    def start(self, label: str, total_bytes: int) -> None:
        self.label, self.total, self.done = label, total_bytes, 0
        self.began = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.progress is None and time.monotonic() - self.began > BAR_DELAY_SECONDS:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=stderr_console(),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total)
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress = None


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[None]:
    """A bar on stderr for long passes, unless output is for machines or stderr is not a
    terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield
        return
    listen(_Bar())
    try:
        yield
    finally:
        listen(None)
