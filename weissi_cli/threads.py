"""Keeping BLAS single-threaded while weissi runs its own reader threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread for the duration (when threadpoolctl is installed).

    weissi reduces and scales chunks on two threads of its own; a BLAS thread pool on top
    fights them for the cores and made the small per-chunk matmuls 3-15x slower here. The
    CLI also sets OPENBLAS_NUM_THREADS=1 before numpy loads, which needs no threadpoolctl.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
