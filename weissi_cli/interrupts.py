"""Ctrl-C and SIGTERM interrupt weissi the same way, so every writer cleans up after either;
the signal that came decides the exit code (130 or 143)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt."""


# The signal that interrupted this process, once one has (set only by `install`'s handlers).
received: signal.Signals | None = None
# Inside `deferred()`: a signal is only recorded, and raised when the outermost one ends.
_deferring = 0
_pending = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global received, _pending
    received = signal.Signals(signum)
    if _deferring:
        _pending = True
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the duration (bookkeeping that must not stop half
    way: making a staging folder and its marker, a commit, a cleanup); one that came is
    raised at the end."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            _pending = False
            reraise_if_interrupted()


def install() -> None:
    """Raise KeyboardInterrupt on SIGINT and Terminated on SIGTERM, and remember which."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)


def reraise_if_interrupted() -> None:
    """Raise the interrupt again where a library turned it into an error of its own (torch's
    writers report an exception raised inside them as a RuntimeError)."""
    if received == signal.SIGTERM:
        raise Terminated()
    if received == signal.SIGINT:
        raise KeyboardInterrupt()


def exit_code() -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return 128 + (received or signal.SIGINT)
