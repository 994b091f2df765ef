"""Rich consoles: results to stdout; progress, warnings and errors to stderr.

Width comes from the terminal, or from COLUMNS when output is piped (Rich's rule).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
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


# --quiet: no progress and no warnings or notes on stderr (errors are always printed).
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence progress, warnings and notes for this run (each command sets it first)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def print_note(text: str) -> None:
    """A line for people on stderr (`wrote FILE`), unless --quiet."""
    if _quiet:
        return
    sys.stdout.flush()
    sys.stderr.write(printable(text) + "\n")
    sys.stderr.flush()


def print_warnings(warnings: tuple[str, ...] | list[str]) -> None:
    if not warnings or _quiet:
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


# Steps shorter than this never show progress (no flicker on small models).
BAR_DELAY_SECONDS = 1.0


class _Display:
    """Progress on stderr for the steps the library reports, shown once the outermost step
    has run for BAR_DELAY_SECONDS: one line with the nested labels (`checking model ›
    reading`), a bar with bytes and speed for a pass over bytes, the time taken for a step
    of unknown length."""

    def __init__(self) -> None:
        self.steps: list[list[Any]] = []  # [label, total bytes (0: unknown), bytes done]
        self.progress: Any = None
        self.task: Any = None
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()

    def start(self, label: str, total_bytes: int) -> None:
        with self.lock:
            self.steps.append([label, total_bytes, 0])
            if len(self.steps) == 1:
                self.timer = threading.Timer(BAR_DELAY_SECONDS, self._show)
                self.timer.daemon = True
                self.timer.start()
            self._update()

    def advance(self, nbytes: int) -> None:
        with self.lock:
            if self.steps:
                self.steps[-1][2] += nbytes
                self._update()

    def stop(self) -> None:
        with self.lock:
            if self.steps:
                self.steps.pop()
            if self.steps:
                self._update()
                return
            if self.timer is not None:
                self.timer.cancel()
            if self.progress is not None:
                self.progress.stop()
            self.progress = self.task = self.timer = None

    def close(self) -> None:
        with self.lock:
            self.steps.clear()
        self.stop()

    def _show(self) -> None:
        with self.lock:
            if not self.steps or self.progress is not None:
                return
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                _BytesColumn(),
                TimeElapsedColumn(),
                console=stderr_console(),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("", total=None)
            self._update()

    def _update(self) -> None:
        if self.progress is None or not self.steps:
            return
        label = " › ".join(printable(step[0]) for step in self.steps)
        _, total, done = self.steps[-1]
        self.progress.update(
            self.task, description=label, total=total or None, completed=done if total else 0
        )


@functools.cache
def _bytes_column_type() -> type[Any]:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class BytesColumn(ProgressColumn):
        """`1.2/4.0 GiB` for a pass of known size, nothing for a step of unknown length."""

        def render(self, task: Any) -> Text:
            if task.total is None:
                return Text("")
            return Text(f"{_size(task.completed)}/{_size(task.total)}", style="dim")

    return BytesColumn


def _BytesColumn() -> Any:
    return _bytes_column_type()()


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[None]:
    """Progress on stderr for the steps that take more than a second — whatever stdout
    carries (JSON included: only stdout is for machines) — unless --quiet, `enabled` is
    False, or stderr is not a terminal."""
    if not (enabled and not _quiet and sys.stderr.isatty()):
        yield
        return
    display = _Display()
    listen(display)
    try:
        yield
    finally:
        listen(None)
        display.close()


def emit(text: str, output: Path | None, force: bool, protect: Sequence[Path]) -> list[str]:
    """`text` on stdout, or written to `output` (atomically; an existing file only with
    --force, never one of the inputs in `protect`). Returns the writer's notes."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return []
    from weissi_cli.report_files import write_report_file

    notes = write_report_file(output, text.encode("utf-8"), force, protect)
    print_note(f"wrote {output}")
    return notes


def check_destinations(
    destinations: Sequence[tuple[str, Path | None]], force: bool, protect: Sequence[Path]
) -> None:
    """Refuse, before any work, output files that cannot be written, that would replace an
    input, or that two options name: (option, path) pairs, None for options not given."""
    if all(path is None for _, path in destinations):
        return  # nothing to write: the output modules need not load
    from weissi_cli.errors import UsageError
    from weissi_cli.output_files import check_file_destination

    seen: dict[str, str] = {}
    for option, path in destinations:
        if path is None:
            continue
        check_file_destination(path, force, protect)
        key = os.path.abspath(path)
        if key in seen:
            raise UsageError(f"{path}: both {seen[key]} and {option} name this file; name two")
        seen[key] = option


# Text reports written to a file are laid out for this width (a terminal's is its own).
FILE_WIDTH = 100


def rendered_text(render: Callable[[Console], None]) -> str:
    """What `render` prints, as plain text (no colour) laid out FILE_WIDTH wide."""
    import io

    buffer = io.StringIO()
    console = _escaping_console()(
        file=buffer, width=FILE_WIDTH, color_system=None, highlight=False, soft_wrap=False
    )
    render(console)
    return buffer.getvalue()


def deliver(
    text: str | None,
    render: Callable[[Console], None],
    output: Path | None,
    force: bool,
    protect: Sequence[Path],
) -> list[str]:
    """A command's result: `text` (a machine format) or the rendered tables, on stdout or
    into `output`. Returns the writer's notes."""
    if text is None and output is None:
        render(stdout_console())
        return []
    if text is None:
        text = rendered_text(render)
    return emit(text, output, force, protect)
