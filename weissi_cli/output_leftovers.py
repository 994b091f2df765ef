"""Cleaning up what killed weissi runs left beside an output: their staging folders, and a
folder swap a kill interrupted between its two renames."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
from pathlib import Path

from weissi_cli.output_files import (
    MARKER,
    MARKER_KIND,
    STAGING_PREFIX,
    fsync_directory,
    is_empty_folder,
    remove_tree,
    start_time,
)


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # another user's process
    except (OSError, OverflowError, ValueError):
        return False
    now = start_time(pid)
    return started is None or now is None or now == started


def _read_marker(root: Path) -> dict[str, object] | None:
    """The marker of a staging folder, if it is one weissi wrote (never through a link)."""
    try:
        with open(os.open(root / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as file:
            marker = json.loads(file.read(1 << 16).decode("utf-8", "surrogateescape"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("kind") != MARKER_KIND:
        return None
    name = marker.get("destination")
    pid = marker.get("pid")
    if (
        not isinstance(pid, int)
        or pid <= 0
        or not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
    ):
        return None
    return marker


def staging_folders(parent: Path) -> list[Path]:
    """The folders in `parent` named like weissi's staging folders."""
    try:
        with os.scandir(parent) as entries:
            return sorted(
                Path(entry.path)
                for entry in entries
                if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False)
            )
    except OSError:
        return []


def clean_leftovers(parent: Path) -> list[str]:
    """Remove what killed weissi runs left in `parent`, finishing a folder swap that a kill
    interrupted between its two renames. Notes on what was done, and on staging folders
    that may not be removed from here (another host's, or without a marker), each with the
    command that removes it."""
    notes = []
    for root in staging_folders(parent):
        marker = _read_marker(root)
        remove = f"rm -rf {shlex.quote(str(root))}"
        if marker is None:
            if is_empty_folder(root):  # killed between making it and writing the marker
                with contextlib.suppress(OSError):
                    root.rmdir()
                continue
            notes.append(
                f"{root}: named like a weissi staging folder but has no marker; if no weissi "
                f"run is writing there, remove it: {remove}"
            )
            continue
        pid = int(marker["pid"])  # type: ignore[call-overload]
        if marker.get("host") != socket.gethostname():
            notes.append(
                f"{root}: left by a weissi run on {marker.get('host')} (process {pid}); once "
                f"that run is over, remove it: {remove}"
            )
            continue
        started = marker.get("started")
        if _alive(pid, started if isinstance(started, int) else None):
            continue  # a running weissi is writing there
        try:
            note = _finish_swap(root, parent / str(marker["destination"]))
            remove_tree(root)
        except OSError as error:
            notes.append(
                f"{root}: left by a killed weissi run, and cannot be removed "
                f"({error.strerror}); remove it: {remove}"
            )
            continue
        notes.append(note or f"removed {root}, left by a killed weissi run")
    return notes


def _finish_swap(root: Path, destination: Path) -> str | None:
    """A swap killed between moving the old folder aside and moving the new one in: the new
    folder is complete (it was staged and verified before), so it goes in place; without it,
    the old one goes back."""
    old = root / "old" / destination.name
    new = root / "new" / destination.name
    if not os.path.lexists(old) or os.path.lexists(destination):
        return None
    if os.path.isdir(new) and not os.path.islink(new):
        os.rename(new, destination)
        done = f"{destination}: finished replacing it, which a killed weissi run had begun"
    else:
        os.rename(old, destination)
        done = f"{destination}: put back the folder a killed weissi run had moved aside"
    fsync_directory(destination.parent)
    return done
