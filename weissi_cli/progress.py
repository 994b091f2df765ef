"""Progress of long passes over checkpoint bytes, reported to whoever listens (the CLI).

The library only counts bytes; drawing a bar is the CLI's job. A process-wide listener
(not a context variable) because the passes run on worker threads.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Listener(Protocol):
    def start(self, label: str, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def stop(self) -> None: ...


_listener: Listener | None = None
_lock = threading.Lock()


def listen(listener: Listener | None) -> None:
    """Install (or, with None, remove) the process-wide listener."""
    global _listener
    _listener = listener


class Stage:
    """One pass: `advance` from any thread; a no-op when nobody listens."""

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
