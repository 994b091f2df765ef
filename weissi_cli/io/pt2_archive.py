"""Bounded reading of a `.pt2` zip archive: members inflated in chunks, never past their
declared size, and never more in total than the archive's own size allows.

A zip member declares its uncompressed size, and deflate can expand ~1000-fold, so a small
file can hold gigabytes. The whole directory is therefore checked when the archive is
opened, before any byte is inflated: stored members must be as large in the file as they
claim; members may not share bytes (overlapping entries let one compressed block count many
times); a compressed member may expand at most `MAX_RATIO` times (with a little slack for
tiny members); and all members together may declare at most `MAX_RATIO` times the file plus
`SMALL_BUDGET`. A zip bomb is refused there, not inflated. A member that inflates past its
declared size is cut off at that size and refused.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from weissi_cli import chunking
from weissi_cli.errors import InputError, UnsafePickleError

MAX_RATIO = 100  # deflate reaches ~1030:1 on zeros; real weights compress far less
MEMBER_SLACK = 64 << 10  # a tiny member (a config, a version string) may compress better
SMALL_BUDGET = 16 << 20  # what any archive may inflate, however small the file
JSON_CAP = 256 << 20  # a program or a config larger than this is not one torch wrote
MAX_JSON_DEPTH = 64  # torch writes ~10 levels, plus ~8 per nested subgraph
LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


class Pt2Archive:
    """An open `.pt2` zip, its members named relative to the archive's one top folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file: io.BufferedReader = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror})") from None
        try:
            self._zip = zipfile.ZipFile(self._file)
            self.file_bytes = path.stat().st_size
            self._members = self._index(self._zip.infolist())
        except zipfile.BadZipFile as error:
            self.close()
            raise InputError(
                f"{path}: not a readable torch.export archive ({error}); truncated or corrupt?"
            ) from None
        except (OSError, ValueError, struct.error, EOFError) as error:
            self.close()
            raise InputError(
                f"{path}: not a readable torch.export archive ({type(error).__name__}: "
                f"{error}); truncated or corrupt?"
            ) from None
        except InputError:
            self.close()
            raise

    def _index(self, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
        """Members by their name below the top folder, after the checks that need no
        inflating: one top folder, unique names, known compression, honest stored sizes, no
        shared bytes, and the size limits of the module docstring."""
        if not infos:
            raise InputError(f"{self.path}: an empty zip, not a torch.export archive")
        root = infos[0].filename.split("/", 1)[0]
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            top, _, name = info.filename.partition("/")
            if top != root or not name:
                raise InputError(
                    f"{self.path}: not a torch.export archive: {info.filename!r} is outside the "
                    f"archive's folder {root!r}"
                )
            if name in members:
                raise InputError(
                    f"{self.path}: refused: the archive lists {info.filename!r} twice, and "
                    "readers may disagree on which copy counts"
                )
            members[name] = info
        self.root = root
        for info in infos:
            if info.flag_bits & 0x1:
                raise InputError(f"{self.path}: refused: {info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise InputError(
                    f"{self.path}: refused: {info.filename} uses zip compression method "
                    f"{info.compress_type}; torch.export writes members stored or deflated"
                )
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise InputError(
                    f"{self.path}: corrupt torch.export archive: {info.filename} is stored "
                    f"uncompressed but declares {info.file_size} bytes in {info.compress_size}"
                )
        spans = sorted(infos, key=lambda info: info.header_offset)
        end_of_data = getattr(self._zip, "start_dir", self.file_bytes)
        for info, following in zip(spans, [*spans[1:], None], strict=True):
            limit = following.header_offset if following is not None else end_of_data
            end = info.header_offset + LOCAL_HEADER + len(info.orig_filename) + info.compress_size
            if info.header_offset < 0 or end > limit:
                raise InputError(
                    f"{self.path}: refused: the data of {info.filename} overlaps "
                    f"{following.filename if following is not None else 'the zip directory'} "
                    "(overlapping members are how small zips inflate to gigabytes)"
                )
        for info in infos:
            if info.file_size > MAX_RATIO * info.compress_size + MEMBER_SLACK:
                raise InputError(
                    f"{self.path}: refused: {info.filename} would inflate "
                    f"{info.compress_size:,} bytes to {info.file_size:,} (more than "
                    f"{MAX_RATIO}x: a zip bomb?); nothing was inflated"
                )
        declared = sum(info.file_size for info in infos)
        if declared > MAX_RATIO * self.file_bytes + SMALL_BUDGET:
            raise InputError(
                f"{self.path}: refused: the archive's members declare {declared:,} bytes, more "
                f"than {MAX_RATIO}x its size (a zip bomb?); nothing was inflated"
            )
        return members

    def has(self, name: str) -> bool:
        return name in self._members

    def names(self) -> list[str]:
        return list(self._members)

    def member(self, name: str) -> str:
        """The member's full name in the zip, for messages."""
        return f"{self.root}/{name}"

    def size(self, name: str) -> int:
        """The uncompressed size the archive declares for `name`."""
        return self._members[name].file_size

    def read(self, name: str, cap: int | None = None) -> bytearray:
        """The member's bytes, inflated in chunks up to its declared size (which the
        directory checks bounded); refused before inflating when it declares over `cap`."""
        info = self._members[name]
        declared = info.file_size
        if cap is not None and declared > cap:
            raise InputError(
                f"{self.path}: refused: {self.member(name)} declares {declared:,} bytes, more "
                f"than the {cap:,} such a member can hold; nothing was inflated"
            )
        data = bytearray(declared)
        view = memoryview(data)
        if info.compress_type == zipfile.ZIP_STORED:
            self._read_stored(info, view)
            return data
        filled = 0
        try:
            with self._zip.open(info) as stream:
                while filled < declared:
                    chunk = stream.read(min(chunking.COPY_BYTES, declared - filled))
                    if not chunk:
                        break
                    view[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
                extra = stream.read(1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
            raise InputError(
                f"{self.path}: corrupt torch.export archive: {self.member(name)} cannot be "
                f"read ({type(error).__name__}: {error}); truncated?"
            ) from None
        if filled != declared or extra:
            raise InputError(
                f"{self.path}: corrupt torch.export archive: {self.member(name)} holds "
                f"{'more' if extra else 'fewer'} bytes than the {declared:,} it declares"
            )
        return data

    def _read_stored(self, info: zipfile.ZipInfo, view: memoryview) -> None:
        """A stored member straight from the file into `view`: one copy, and no CRC (torch
        does not check it either; the CRC pass would double the time to read a model)."""
        where = f"{self.path}: corrupt torch.export archive: {info.filename}"
        self._file.seek(info.header_offset)
        header = self._file.read(LOCAL_HEADER)
        if len(header) < LOCAL_HEADER or header[:4] != b"PK\x03\x04":
            raise InputError(f"{where} has no local header where the directory says")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        name = self._file.read(name_length)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if name != info.orig_filename.encode(encoding, "replace"):
            raise InputError(f"{where} is named differently in its local header")
        self._file.seek(info.header_offset + LOCAL_HEADER + name_length + extra_length)
        filled = 0
        while filled < len(view):
            got = self._file.readinto(view[filled : filled + chunking.COPY_BYTES])
            if not got:
                raise InputError(f"{where} ends early (truncated?)")
            filled += got

    def read_text(self, name: str, cap: int = JSON_CAP) -> str:
        try:
            return self.read(name, cap).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                f"{self.path}: refused: {self.member(name)} is not UTF-8 text (byte "
                f"{error.start}); a torch.export archive writes its configs as UTF-8 JSON"
            ) from None

    def read_json(self, name: str) -> Any:
        """A JSON member, parsed with its nesting bounded (torch's readers recurse)."""
        text = self.read_text(name)
        try:
            value = json.loads(text)
        except RecursionError:
            raise InputError(
                f"{self.path}: refused: {self.member(name)} nests deeper than "
                f"{MAX_JSON_DEPTH} levels"
            ) from None
        except json.JSONDecodeError as error:
            raise InputError(
                f"{self.path}: corrupt torch.export archive: {self.member(name)} is not valid "
                f"JSON ({error})"
            ) from None
        except ValueError:  # Python refuses integer literals over 4300 digits
            raise InputError(
                f"{self.path}: refused: {self.member(name)} holds an integer literal too long "
                "to read"
            ) from None
        if json_depth(value) > MAX_JSON_DEPTH:
            raise InputError(
                f"{self.path}: refused: {self.member(name)} nests deeper than "
                f"{MAX_JSON_DEPTH} levels"
            )
        return value

    def close(self) -> None:
        zip_file = getattr(self, "_zip", None)
        if zip_file is not None:
            zip_file.close()
        self._file.close()


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (without recursing)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            items: Any = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in items)
    return deepest


def check_torch_zip(data: bytearray, what: str, path: Path) -> None:
    """Refuse a torch.save zip (an archive's example inputs) unless every record is stored
    within its bytes: torch's own reader allocates whatever a record declares."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            infos = inner.infolist()
            total = 0
            end_of_data = getattr(inner, "start_dir", len(data))
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    raise InputError(
                        f"{path}: refused: {what} holds a compressed record {info.filename!r}; "
                        "torch.save stores its records uncompressed"
                    )
                if info.header_offset + LOCAL_HEADER + info.compress_size > end_of_data:
                    raise InputError(
                        f"{path}: refused: {what} declares a record {info.filename!r} larger "
                        "than the bytes that hold it"
                    )
                total += info.file_size
            if total > len(data):
                raise InputError(
                    f"{path}: refused: {what} declares {total:,} bytes of records in "
                    f"{len(data):,} (overlapping records?)"
                )
    except zipfile.BadZipFile:
        raise UnsafePickleError(
            f"{path}: refused to load: {what} is not in torch.save's zip format (a bare "
            "pickle?); weissi loads example inputs only from torch.save archives, with "
            "weights_only, and nothing in it was run"
        ) from None
    except (OSError, ValueError, struct.error, EOFError) as error:
        raise InputError(f"{path}: refused: {what} is a corrupt zip ({error})") from None
