"""What a torch file is before torch reads it, and where its zip archive keeps each storage.

`torch.load` takes TorchScript archives, export programs and any pickle for a checkpoint and
fails with advice to turn its safety off; weissi names what the file is instead. The storage
records located here let a checkpoint be read with `pread`, which reports a file that shrank
as an error, where a memory map of it would kill the process with SIGBUS.
"""

from __future__ import annotations

import pickletools
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from weissi_cli.errors import InputError

# torch.save's legacy (non-zip) format opens with this number, pickled as a LONG1.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class Archive:
    """A torch zip archive as zipfile reads it: its record names and stored data records."""

    names: tuple[str, ...]
    records: dict[int, int]  # data offset in the file -> size, of every uncompressed data/N
    byteorder: str | None  # the `byteorder` record, if any


def read_archive(handle: BinaryIO) -> Archive | None:
    """The records of a zip archive, or None if zipfile cannot read it (torch's own reader
    may still: the caller then lets torch load the file whole)."""
    try:
        with zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
            names = tuple(info.filename for info in infos)
            records: dict[int, int] = {}
            byteorder = None
            for info in infos:
                parts = info.filename.split("/")
                if parts[1:] == ["byteorder"] and info.file_size <= 16:
                    byteorder = archive.read(info).decode("ascii", "replace")
                if len(parts) == 3 and parts[1] == "data" and parts[2].isdigit():
                    if info.compress_type != zipfile.ZIP_STORED:
                        return None
                    handle.seek(info.header_offset)
                    signature, name_length, extra_length = _LOCAL_HEADER.unpack(
                        handle.read(_LOCAL_HEADER.size)
                    )
                    if signature != _LOCAL_SIGNATURE:
                        return None
                    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
                    records[start] = info.file_size
    except Exception:  # noqa: BLE001 - zipfile raises many types on malformed archives
        return None
    return Archive(names, records, byteorder)


def native_byte_order(archive: Archive) -> bool:
    """Whether the storages' bytes are in this machine's order (torch swaps them otherwise)."""
    return archive.byteorder is None or archive.byteorder == sys.byteorder


def refuse_other_archives(path: Path, names: tuple[str, ...]) -> None:
    """Refuse zip archives that torch.save did not write as a state dict, naming them."""
    members = {name.split("/", 1)[1] for name in names if "/" in name}
    if "constants.pkl" in members or any(name.startswith("code/") for name in members):
        raise InputError(torchscript_message(path))
    if "archive_format" in members or "models/model.json" in members:
        raise InputError(
            f"{path}: a torch.export program (saved by torch.export.save), not a state dict; "
            "name the file *.pt2 and weissi reads it as one"
        )


def torchscript_message(path: Path) -> str:
    return (
        f"{path}: a TorchScript archive (saved by torch.jit.save): weissi reads state dicts; "
        "if you trust the file, extract its state dict with "
        "torch.save(torch.jit.load(PATH).state_dict(), 'weights.pt') and pass that"
    )


def refuse_other_pickles(path: Path, head: bytes) -> None:
    """Refuse a pickle that torch's weights-only loader cannot read, naming what it is: one
    written by pickle.dump (it does not open with torch's legacy magic number), or a legacy
    torch.save with pickle protocol 4 or above (whose framing that loader does not take)."""
    if not head.startswith(b"\x80") or len(head) < 2:
        return  # not a binary pickle at all: torch's error says what it is
    protocol = head[1]
    try:
        for opcode, argument, _ in pickletools.genops(head):
            if opcode.name in ("PROTO", "FRAME"):
                continue
            torch_save = opcode.name == "LONG1" and argument == LEGACY_MAGIC
            break
        else:
            return
    except Exception:  # noqa: BLE001 - a cut or corrupt opening: torch's error says more
        return
    if not torch_save:
        raise InputError(
            f"{path}: a Python pickle (protocol {protocol}) written by pickle.dump, not a "
            "checkpoint saved by torch.save; weissi reads state dicts saved with torch.save or "
            "as safetensors: if you trust the file, load it where it was made and save the "
            "state dict with torch.save(state_dict, 'weights.pt')"
        )
    if protocol >= 4:
        raise InputError(
            f"{path}: a legacy torch.save file with pickle protocol {protocol}, which torch's "
            "safe loader cannot read; if you trust the file, load it where it was made and save "
            "it again with torch.save's default format (protocol 2, a zip archive)"
        )
