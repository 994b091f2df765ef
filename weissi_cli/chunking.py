"""How much every streamed pass handles at once, decided here and nowhere else, and the one
rule that cuts a tensor into pieces of whole rows.

The sizes keep each thread's working set in the CPU's caches (a chunk, its decoded copy and
numpy's temporaries: a few MiB) while making each call long enough that Python's overhead
per chunk does not show. Tests shrink them to exercise many pieces: modules read them from
here at call time.
"""

from __future__ import annotations

# Values numpy decodes and reduces at once: the statistics' chunks and the verifier's
# blocks, with their float32 and float64 temporaries.
NUMPY_ELEMENTS = 1 << 19
# Values a writer thread scales at once: the raw chunk and its float64 product.
SCALE_ELEMENTS = 1 << 18
# Values one kernel call reads from a file itself (in cache-sized pieces), per thread task:
# the statistics, the value check and the comparison of two files.
KERNEL_TASK_ELEMENTS = 1 << 21
# Values one kernel call compares, per thread task, reading both files of `diff`: whole
# blocks, enough that a task's Python call is noise, few enough that two threads share a
# tensor's tasks evenly.
COMPARE_TASK_ELEMENTS = 1 << 22
# Values whose exponent-table lookups headroom makes at once.
HEADROOM_ELEMENTS = 1 << 20
# Bytes copied at once: untouched tensors, companion files, archive members.
COPY_BYTES = 1 << 20


def row_pieces(numel: int, row_width: int | None, per_piece: int) -> list[tuple[int, int]]:
    """(first element, count) of the pieces of a tensor of `numel` values: whole rows of
    `row_width` values, as many as fit in `per_piece` but at least one; any cut of
    `per_piece` values when `row_width` is None."""
    step = per_piece
    if row_width is not None:
        width = max(row_width, 1)
        step = max(1, per_piece // width) * width
    return [(start, min(step, numel - start)) for start in range(0, numel, step)]
