"""Sharded safetensors: `*.safetensors.index.json` and the shard files it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from weissi_cli.errors import InputError
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, natural_key, read_json_file
from weissi_cli.io.safetensors_file import SafetensorsCheckpoint


class ShardedCheckpoint(Checkpoint):
    """Several safetensors shards behind one index, presented as one checkpoint."""

    def __init__(self, index_path: Path) -> None:
        super().__init__()
        self.path = index_path
        self.format = "safetensors-sharded"
        self.index_metadata, weight_map = _read_index(index_path)
        self.shards: dict[str, SafetensorsCheckpoint] = {}
        self._shard_of: dict[str, str] = {}
        try:
            for shard_name in sorted(set(weight_map.values()), key=natural_key):
                shard_path = index_path.parent / shard_name
                try:
                    found = shard_path.is_file()
                except OSError as error:  # a name over the file system's limit, ...
                    raise InputError(
                        f"{index_path}: cannot open shard {shard_name!r} named by the index "
                        f"({error.strerror})"
                    ) from None
                if not found:
                    raise InputError(
                        f"{index_path}: shard {shard_name} named by the index is missing"
                    )
                self.shards[shard_name] = SafetensorsCheckpoint(shard_path)
            self._check_index(weight_map)
        except BaseException:
            self.close()
            raise
        self._shard_of = dict(weight_map)
        infos = [self.shards[shard].info(name) for name, shard in weight_map.items()]
        self.tensors = tuple(sorted(infos, key=lambda t: natural_key(t.name)))
        self.metadata = {}
        for shard in self.shards.values():
            self.metadata.update(shard.metadata)
        self.file_bytes = sum(shard.file_bytes for shard in self.shards.values())

    def _check_index(self, weight_map: dict[str, str]) -> None:
        for name, shard_name in weight_map.items():
            if name not in self.shards[shard_name]:
                raise InputError(
                    f"{self.path}: the index puts tensor {name!r} in {shard_name}, which does not "
                    "contain it"
                )
        for shard_name, shard in self.shards.items():
            for info in shard.tensors:
                if weight_map.get(info.name) != shard_name:
                    raise InputError(
                        f"{self.path}: shard {shard_name} holds tensor {info.name!r}, which the "
                        "index does not assign to it"
                    )

    def shard_of(self, name: str) -> str:
        return self._shard_of[name]

    def locate(self, name: str) -> tuple[int, int, Path] | None:
        return self.shards[self._shard_of[name]].locate(name)

    def read_raw(
        self, name: str, start: int, count: int, buffer: ReadBuffer | None = None
    ) -> npt.NDArray[np.generic]:
        return self.shards[self._shard_of[name]].read_raw(name, start, count, buffer)

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()


def _read_index(index_path: Path) -> tuple[dict[str, object], dict[str, str]]:
    index = read_json_file(index_path, "index")
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise InputError(f'{index_path}: a sharded index needs a "weight_map" object')
    weight_map = index["weight_map"]
    if not weight_map or not all(
        isinstance(name, str) and isinstance(shard, str) for name, shard in weight_map.items()
    ):
        raise InputError(f'{index_path}: "weight_map" must map tensor names to shard file names')
    for shard in set(weight_map.values()):
        if Path(shard).name != shard:
            raise InputError(
                f"{index_path}: shard name {shard!r} must be a file name in the same folder"
            )
    metadata = index.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InputError(f'{index_path}: "metadata" must be an object')
    return metadata, weight_map
