"""Writing a report file (JSON, Markdown, JUnit, a plot) atomically beside the user's files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from weissi_cli.output_files import Staging, check_file_destination, output_error
from weissi_cli.output_leftovers import clean_leftovers


def write_report_file(
    path: Path, data: bytes, force: bool, protect: Iterable[Path] = ()
) -> list[str]:
    """Write `data` to `path` atomically: never over an existing file without `force`, never
    over an input in `protect`, never through a link. Notes on leftovers of killed runs
    cleaned up on the way."""
    check_file_destination(path, force, protect)
    notes = clean_leftovers(path.parent)
    try:
        staging = Staging(path, folder=False)
        try:
            with open(staging.item, "wb") as handle:  # this run's own file, in its own folder
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            staging.discard()
            raise
    except OSError as error:
        raise output_error(path, error) from None
    staging.commit(force)
    return notes
