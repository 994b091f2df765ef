"""Progress of long steps, reported to whoever listens (the CLI).

The library says what it is doing — a pass over checkpoint bytes (`Stage`, counted in bytes)
or a step of unknown length such as tracing or solving (`phase`) — and nothing more; drawing
is the CLI's job. Steps nest (a check of one checkpoint holds its reading pass): the listener
gets `start` and `stop` in stack order. A process-wide listener (not a context variable)
because the passes run on worker threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol


class Listener(Protocol):
    def start(self, label: str, total_bytes: int) -> None:
        """A step begins; `total_bytes` 0: its length is not known in advance."""

    def advance(self, nbytes: int) -> None:
        """The innermost step went `nbytes` further (called from any thread)."""

    def stop(self) -> None:
        """The innermost step ended."""


_listener: Listener | None = None
_lock = threading.Lock()


def listen(listener: Listener | None) -> None:
    """Install (or, with None, remove) the process-wide listener."""
    global _listener
    _listener = listener


class Stage:
    """One pass of `total_bytes`: `advance` from any thread; a no-op when nobody listens."""

    def __init__(self, label: str, total_bytes: int) -> None:
        self.listener = _listener
        if self.listener is not None:
            self.listener.start(label, total_bytes)

    def advance(self, nbytes: int) -> None:
        if self.listener is not None:
            with _lock:
                self.listener.advance(nbytes)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *_: object) -> None:
        if self.listener is not None:
            self.listener.stop()


@contextlib.contextmanager
def phase(label: str) -> Iterator[None]:
    """A step whose length is not known in advance (tracing a graph, solving for channel
    scales, running a model to verify it): shown with the time it has taken."""
    with Stage(label, 0):
        yield
