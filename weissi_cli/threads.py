"""weissi's own threads over chunks, and keeping BLAS out of their way."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
S = TypeVar("S")


# Set by the CLI when it pinned BLAS to one thread through the environment before numpy
# loaded: threadpoolctl (8 ms to import and scan the loaded libraries) has nothing to do.
blas_pinned = False


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread for the duration (when threadpoolctl is installed).

    weissi reduces and scales chunks on two threads of its own; a BLAS thread pool on top
    fights them for the cores and made the small per-chunk matmuls 3-15x slower here. The
    CLI also sets OPENBLAS_NUM_THREADS=1 before numpy loads, which needs no threadpoolctl.
    """
    if blas_pinned:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def run_round_robin(
    items: Sequence[T],
    make_state: Callable[[], S],
    work: Callable[[T, S], None],
    threads: int = 2,
    alongside: Callable[[], None] | None = None,
    finish: Callable[[S], None] | None = None,
) -> None:
    """`work(item, state)` over `items` round-robin on `threads` threads, each with its own
    `state` (buffers), then `finish(state)`; `alongside` runs on the calling thread
    meanwhile. numpy, preadv and pwrite release the GIL, so two threads use both cores.
    The first error stops every thread and is raised here."""
    count = max(1, min(threads, len(items)))
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            state = make_state()
            try:
                for item in items[offset::count]:
                    if errors:
                        return
                    work(item, state)
            finally:
                if finish is not None:
                    finish(state)
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)

    if count == 1 and alongside is None:
        run(0)
    else:
        pool = [threading.Thread(target=run, args=(offset,)) for offset in range(count)]
        for thread in pool:
            thread.start()
        try:
            if alongside is not None:
                alongside()
        finally:
            for thread in pool:
                thread.join()
    if errors:
        raise errors[0]
