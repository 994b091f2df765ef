"""A model folder's other files (config, tokenizer, README): which travel with a rewritten
checkpoint, and links that are never followed out of the folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from weissi_cli import chunking
from weissi_cli.errors import InputError
from weissi_cli.output_files import STAGING_PREFIX, WEIGHT_SUFFIXES, describe


@dataclass(frozen=True)
class Companions:
    """What a model folder holds besides the checkpoint's own files."""

    copied: list[tuple[Path, Path]]  # (path relative to the folder, the file to read)
    weights: list[Path]  # other weight files, left out: a loader could pick them instead
    special: list[str]  # pipes, sockets, devices, each named and described: never opened


def companion_files(folder: Path, own: Iterable[Path]) -> Companions:
    """The files of `folder` besides the checkpoint's `own` files. Version-control folders
    are left out silently.

    A symbolic link is followed only to a regular file inside the folder (or, for a
    snapshot in the Hugging Face cache, to that model's blobs); any other link is refused
    (InputError): what it points to could be any file the user can read, or a device."""
    real_folder = folder.resolve()
    boundaries = [real_folder]
    if real_folder.parent.name == "snapshots":
        boundaries.append(real_folder.parent.parent / "blobs")
    checkpoint_files = {path.resolve() for path in own}
    copied: list[tuple[Path, Path]] = []
    weights: list[Path] = []
    special: list[str] = []
    for relative, status in _folder_entries(folder, Path()):
        path = folder / relative
        with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: a loop of links
            if path.resolve() in checkpoint_files:
                continue
        if path.name.lower().endswith(WEIGHT_SUFFIXES):
            weights.append(relative)
            continue
        source = path
        if stat.S_ISLNK(status.st_mode):
            source = _linked_file(path, boundaries)
            status = os.stat(source)
        if stat.S_ISREG(status.st_mode):
            copied.append((relative, source))
        else:
            special.append(f"{relative}: {describe(status.st_mode)}")
    return Companions(copied, weights, special)


def _folder_entries(folder: Path, relative: Path) -> list[tuple[Path, os.stat_result]]:
    """Everything below `folder / relative` that is not a folder (links to folders too), with
    its lstat, in name order; never through a link."""
    found = []
    with os.scandir(folder / relative) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not relative.parts and (
                entry.name in (".git", ".cache") or entry.name.startswith(STAGING_PREFIX)
            ):
                continue
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(status.st_mode):
                found += _folder_entries(folder, relative / entry.name)
            else:
                found.append((relative / entry.name, status))
    return found


def _linked_file(link: Path, boundaries: list[Path]) -> Path:
    """Where `link` leads, if that is inside one of `boundaries` and not a folder."""
    try:
        target = link.resolve()
        exists = target.exists()
    except (OSError, RuntimeError):  # a loop of links
        raise InputError(f"{link}: is a symbolic link that leads nowhere; remove it") from None
    if not exists:
        raise InputError(
            f"{link}: is a symbolic link to {target}, which does not exist; remove the link"
        )
    if not any(target.is_relative_to(boundary) for boundary in boundaries):
        raise InputError(
            f"{link}: is a symbolic link to {target}, outside the model folder; weissi copies "
            "no file from outside the folder it reads: replace the link with the file, or "
            "remove it"
        )
    if target.is_dir():
        raise InputError(
            f"{link}: is a symbolic link to a folder ({target}); replace it with the folder, "
            "or remove it"
        )
    return target


def copy_companions(copied: list[tuple[Path, Path]], folder: Path) -> None:
    """Copy each (relative path, file to read) into `folder`, durably."""
    for relative, source in copied:
        staged = folder / relative
        staged.parent.mkdir(parents=True, exist_ok=True)
        _copy_durably(source, staged)


def _copy_durably(source: Path, destination: Path) -> None:
    """Copy a regular file (never through a link, never from a pipe or device), with its
    permissions less the umask (as cp does), and fsync it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        reader = os.open(source, flags)
    except OSError as error:
        raise InputError(f"{source}: cannot read ({error.strerror})") from None
    with open(reader, "rb") as reading:
        status = os.fstat(reader)
        if not stat.S_ISREG(status.st_mode):
            raise InputError(f"{source}: became {describe(status.st_mode)} while weissi read it")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        writer = os.open(destination, flags, stat.S_IMODE(status.st_mode) & 0o777)
        with open(writer, "wb") as writing:
            shutil.copyfileobj(reading, writing, chunking.COPY_BYTES)
            writing.flush()
            os.fsync(writer)
