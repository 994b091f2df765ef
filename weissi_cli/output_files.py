"""Files and folders weissi writes: checked, staged privately, committed by one rename.

Everything is first written into a staging folder `.weissi-tmp-<pid>-<random>` (mode 0700)
in the destination's own folder, under the destination's own name, then put in place by one
rename that replaces nothing without --force: a kill leaves the destination as it was or
complete. The staging folder's marker file names the process, so a later run recognises a
killed run's leftovers and removes them (or finishes a folder swap the kill interrupted).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import shlex
import shutil
import socket
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from weissi_cli import interrupts
from weissi_cli.errors import OutputError

STAGING_PREFIX = ".weissi-tmp-"
MARKER = "weissi-staging.json"
MARKER_KIND = "weissi staging folder"

# Files that hold weights in some format. A report is never written over one of the input's,
# and a folder that holds one is a model folder, which --force may replace whole.
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pt2",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".index.json",
)

# Called with each commit step's name and the destination, for fault injection in tests:
# "staged" (everything written and on disk), "aside" (the old folder moved into the staging
# folder, where RENAME_EXCHANGE is missing), "placed" (the output at its name), "synced"
# (the rename on disk), "emptied" (the staging folder holds only its marker, removed next).
step_hook: Callable[[str, Path], None] | None = None


def _step(name: str, destination: Path) -> None:
    if step_hook is not None:
        step_hook(name, destination)


# --- renames -------------------------------------------------------------------------------

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# What renameat2 answers where the kernel, the C library or the file system lacks a flag.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


@functools.cache
def _libc_renameat2() -> Callable[..., int] | None:
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    path, directory = ctypes.c_char_p, ctypes.c_int
    function.argtypes = (directory, path, directory, path, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


def renameat2(source: Path, target: Path, flags: int) -> None:
    """Linux's renameat2: OSError(ENOSYS) where the C library does not have it."""
    function = _libc_renameat2()
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(source))
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) != 0:
        import ctypes

        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(source), None, str(target))


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target` unless something exists there (FileExistsError): atomic
    through RENAME_NOREPLACE, or for a file through link() where that flag is missing."""
    try:
        renameat2(source, target, RENAME_NOREPLACE)
        return
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
    if not source.is_dir():
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as error:
            if error.errno not in (*_UNSUPPORTED, errno.EPERM, errno.EMLINK):
                raise
        else:
            os.unlink(source)
            return
    # No atomic way on this file system: a folder renamed onto an existing one replaces it
    # only when it is empty (ENOTEMPTY otherwise), so nothing can be lost there; for a file
    # the check and the rename are two steps.
    if os.path.lexists(target) and not (source.is_dir() and is_empty_folder(target)):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folders(top: Path) -> None:
    """fsync `top` and every folder below it (the files' own fsyncs do not cover their
    names)."""
    for folder, _, _ in os.walk(top):
        fsync_directory(Path(folder))


# --- what is at a path ---------------------------------------------------------------------


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def is_empty_folder(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def describe(mode: int) -> str:
    """What a file of this mode is, in words."""
    kinds = (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((words for test, words in kinds if test(mode)), "a file")


def _kept_mode(status: os.stat_result) -> int:
    """The permissions of a replaced file, carried to its replacement (set-id bits aside)."""
    return stat.S_IMODE(status.st_mode) & 0o1777


def output_error(path: Path, error: OSError) -> OutputError:
    """An OSError met while writing `path`, as one sentence."""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "the operation is not permitted",
        errno.ENAMETOOLONG: "a name is longer than the file system allows",
        errno.ENOENT: "its folder does not exist",
        errno.ENOTDIR: "a part of its path is a file, not a folder",
        errno.EXDEV: "it is on another file system than its folder (a mount point)",
        errno.EBUSY: "it is in use (a mount point)",
    }
    reason = reasons.get(error.errno or 0, error.strerror or str(error))
    return OutputError(f"{path}: cannot write ({reason}); nothing was written")


def check_name(path: Path) -> None:
    """Refuse a destination without a name of its own, or one too long for its folder."""
    if path.name in ("", ".", ".."):
        raise OutputError(f"{path}: name the file or folder to write, not {path.name or path}")
    length = len(os.fsencode(path.name))
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    if length > limit:
        raise OutputError(
            f"{path}: the name is {length} bytes long, and this file system allows {limit}; "
            "choose a shorter name"
        )


def check_parent(path: Path) -> None:
    """The folder `path` goes into must exist."""
    try:
        status = os.stat(path.parent)
    except FileNotFoundError:
        raise OutputError(f"{path}: folder {path.parent} does not exist") from None
    except NotADirectoryError:
        raise OutputError(f"{path}: a part of {path.parent} is a file, not a folder") from None
    except OSError as error:
        raise output_error(path, error) from None
    if not stat.S_ISDIR(status.st_mode):
        raise OutputError(f"{path}: {path.parent} is a file, not a folder")


def refuse_link(path: Path, status: os.stat_result | None) -> None:
    if status is not None and stat.S_ISLNK(status.st_mode):
        raise OutputError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); weissi never writes through "
            "links: name the file itself, or remove the link"
        )


def check_file_destination(path: Path, force: bool, protect: Iterable[Path] = ()) -> None:
    """Where a file may be written: a new name, or with `force` an existing regular file
    that is none of `protect` (the inputs being read); never a link, a folder or a device."""
    check_name(path)
    check_parent(path)
    status = _lstat(path)
    refuse_link(path, status)
    if status is None:
        return
    if stat.S_ISDIR(status.st_mode):
        raise OutputError(f"{path}: is a folder; name a file")
    if not stat.S_ISREG(status.st_mode):
        raise OutputError(
            f"{path}: is {describe(status.st_mode)}, not a file; weissi writes only to "
            "regular files"
        )
    for protected in protect:
        if _protected(path, protected):
            raise OutputError(
                f"{path}: is the checkpoint being read ({protected}); name another file"
            )
    if not force:
        raise OutputError(f"{path}: already exists; pass --force to overwrite it")


def _protected(path: Path, protected: Path) -> bool:
    """`path` is the input `protected`, or a weight file of the folder it is (or is in,
    for a sharded index)."""
    with contextlib.suppress(OSError):
        if protected.is_file() and os.path.samefile(path, protected):
            return True
        folder = protected if protected.is_dir() else protected.parent
        if (
            protected.is_dir() or protected.name.endswith(".index.json")
        ) and path.name.lower().endswith(WEIGHT_SUFFIXES):
            return path.resolve().parent == folder.resolve()
    return False


def holds_a_model(folder: Path) -> bool:
    """A folder that --force may replace whole: empty, or holding weight files."""
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries]
    return not names or any(name.lower().endswith(WEIGHT_SUFFIXES) for name in names)


# --- staging and commit --------------------------------------------------------------------


class Staging:
    """A private folder beside `destination` holding its new content, `item` (a file or a
    folder under the destination's own name), until `commit` puts it in place."""

    def __init__(self, destination: Path, folder: bool) -> None:
        self.destination = destination
        self.folder = folder
        self._aside: Path | None = None
        with interrupts.deferred():  # never a staging folder without its marker
            self.root = _new_staging_root(destination.parent)
            self.item = self.root / "new" / destination.name
            try:
                _write_marker(self.root, destination.name)
                os.mkdir(self.root / "new", 0o700)
                # Created with the final permissions (0666 or 0777 less the umask): the
                # staging folder's 0700 keeps them private until the rename.
                if folder:
                    os.mkdir(self.item, 0o777)
                else:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(os.open(self.item, flags, 0o666))
            except BaseException:
                self.discard()
                raise
            _unfinished.add(self)

    def commit(self, force: bool) -> None:
        """Put the item in place: with `force` replacing what is there (a folder in one
        exchange), else only where nothing is, checked by the rename itself. OutputError
        when something is in the way; the staging folder is gone either way. Ctrl-C and
        SIGTERM wait until the commit is done."""
        with interrupts.deferred():
            self._commit(force)

    def _commit(self, force: bool) -> None:
        _unfinished.discard(self)
        try:
            if self.folder:
                _fsync_folders(self.item)
            fsync_directory(self.item.parent)
            _step("staged", self.destination)
            if self.folder:
                self._place_folder(force)
            else:
                self._place_file(force)
        except FileExistsError:
            self.discard()
            hint = "" if force else "; pass --force to replace it"
            raise OutputError(
                f"{self.destination}: was created while weissi was writing and is left as it "
                f"is{hint}"
            ) from None
        except OSError as error:
            self.discard()
            if error.errno == errno.ENOTEMPTY:
                raise OutputError(
                    f"{self.destination}: was filled while weissi was writing and is left as "
                    "it is; pass --force to replace it"
                ) from None
            raise output_error(self.destination, error) from None
        except BaseException:
            self.discard()
            raise
        _step("placed", self.destination)
        try:
            fsync_directory(self.destination.parent)
        except OSError as error:
            self._remove()
            raise OutputError(
                f"{self.destination}: is written, but its folder could not be flushed to disk "
                f"({error.strerror}); a power loss could still lose it"
            ) from None
        _step("synced", self.destination)
        self._remove()

    def _remove(self) -> None:
        """Remove the staging folder after a commit (what stays is removed by the next run)."""
        with contextlib.suppress(OSError):
            _empty(self.root)
            _step("emptied", self.destination)
            remove_tree(self.root)

    def discard(self) -> None:
        """Remove the staging folder, first moving back a folder set aside for a swap."""
        with interrupts.deferred():
            _unfinished.discard(self)
            self._discard()

    def _discard(self) -> None:
        if self._aside is not None:
            aside, self._aside = self._aside, None
            try:
                if not os.path.lexists(self.destination):
                    os.rename(aside, self.destination)
            except OSError as error:
                raise OutputError(
                    f"{self.destination}: could not put the old folder back ({error.strerror}); "
                    f"it is kept at {aside}: mv {shlex.quote(str(aside))} "
                    f"{shlex.quote(str(self.destination))}"
                ) from None
        with contextlib.suppress(OSError):  # what stays is removed by the next run
            remove_tree(self.root)

    def _place_file(self, force: bool) -> None:
        if not force:
            rename_noreplace(self.item, self.destination)
            return
        status = _lstat(self.destination)
        if status is not None and stat.S_ISREG(status.st_mode):
            os.chmod(self.item, _kept_mode(status))
        # Replaces the name: a link that appeared there is replaced, never written through.
        os.replace(self.item, self.destination)

    def _place_folder(self, force: bool) -> None:
        status = _lstat(self.destination)
        if status is None:
            try:
                rename_noreplace(self.item, self.destination)
                return
            except FileExistsError:
                if not force:
                    raise
                status = os.lstat(self.destination)
        if not stat.S_ISDIR(status.st_mode):
            raise FileExistsError(errno.EEXIST, "not a folder", str(self.destination))
        os.chmod(self.item, _kept_mode(status))
        if force:
            _carry_modes(self.destination, self.item)
            self._swap()
        else:
            os.rename(self.item, self.destination)  # replaces an empty folder, nothing else

    def _swap(self) -> None:
        """Exchange the staged folder with the destination in one rename; where the file
        system cannot, move the old folder into the staging folder first (a kill between the
        two renames is completed by the next run: see `clean_leftovers`)."""
        try:
            renameat2(self.item, self.destination, RENAME_EXCHANGE)
            return
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                raise
        aside = self.root / "old" / self.destination.name
        os.mkdir(aside.parent, 0o700)
        os.rename(self.destination, aside)
        self._aside = aside
        fsync_directory(self.destination.parent)
        _step("aside", self.destination)
        os.rename(self.item, self.destination)
        self._aside = None


# The staging folders of this process not yet committed or discarded.
_unfinished: set[Staging] = set()


def discard_unfinished() -> None:
    """Discard every staging folder of this process still open: what an interrupt that
    arrived between two statements of a writer would otherwise leave behind."""
    for staging in list(_unfinished):
        with contextlib.suppress(OSError, OutputError):
            staging.discard()


def _carry_modes(old: Path, new: Path) -> None:
    """Give each staged file the permissions of the file it replaces."""
    for folder, _, names in os.walk(new):
        for name in names:
            staged = Path(folder, name)
            status = _lstat(old / staged.relative_to(new))
            if status is not None and stat.S_ISREG(status.st_mode):
                os.chmod(staged, _kept_mode(status))


def _new_staging_root(parent: Path) -> Path:
    while True:
        root = parent / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            continue
        return root


def _write_marker(root: Path, destination: str) -> None:
    marker = {
        "kind": MARKER_KIND,
        "pid": os.getpid(),
        "started": start_time(os.getpid()),
        "host": socket.gethostname(),
        "destination": destination,
    }
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(root / MARKER, flags, 0o600)
    try:
        os.write(descriptor, json.dumps(marker).encode("utf-8", "surrogateescape"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_tree(root: Path) -> None:
    """Remove a staging folder, its marker last: a removal cut short leaves a folder that is
    still recognised as weissi's (and removed by the next run)."""
    if os.path.lexists(root):
        _empty(root)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / MARKER)
        os.rmdir(root)


def _empty(root: Path) -> None:
    """Remove everything in a staging folder but its marker."""
    with os.scandir(root) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=_writable_and_retry)
            elif entry.name != MARKER:
                os.unlink(entry.path)


def _writable_and_retry(function: Callable[..., object], name: str, _: object) -> None:
    """rmtree's error handler: a swapped-out folder may lack the write permission its
    removal needs (mode 0555); grant it and try again."""
    with contextlib.suppress(OSError):
        os.chmod(Path(name).parent, 0o700)
        if os.path.isdir(name) and not os.path.islink(name):
            os.chmod(name, 0o700)
        function(name)


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot, Linux), to tell it from a later
    process that reuses its id."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
