"""Spec files at scale and at their limits: linear time in the number of layers, and
malformed TOML refused as bad input."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from weissi_cli.errors import InputError, StructureError
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, TensorInfo
from weissi_cli.structure.spec import structure_from_spec


class Described(Checkpoint):
    """A checkpoint of tensor descriptions only: the spec reader never reads values."""

    def __init__(self, infos: list[TensorInfo]) -> None:
        super().__init__()
        self.path, self.format, self.metadata, self.file_bytes = Path("m"), "safetensors", {}, 0
        self.tensors = tuple(infos)

    def read_raw(
        self, name: str, start: int, count: int, buffer: ReadBuffer | None = None
    ) -> npt.NDArray[np.generic]:
        raise AssertionError("a spec is checked against shapes, not values")


def long_chain(folder: Path, layers: int) -> tuple[Path, Described]:
    infos = []
    for index in range(layers):
        infos.append(TensorInfo(f"l{index}.weight", (4, 4), "float32"))
        infos.append(TensorInfo(f"l{index}.bias", (4,), "float32"))
    names = ", ".join(f'"l{index}"' for index in range(layers))
    path = folder / f"chain{layers}.toml"
    path.write_text(f"version = 1\n[[chain]]\nlayers = [{names}]\n")
    return path, Described(infos)


def cpu_seconds(work: Callable[[], object], runs: int = 2) -> float:
    """The least CPU time of this process over `runs` runs of `work`: CPU time, not wall
    time, so that other processes on a shared machine do not count, and the least, so that
    a garbage collection in one run does not either."""
    best = math.inf
    for _ in range(runs):
        gc.collect()
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def seconds_to_read(folder: Path, layers: int) -> float:
    path, checkpoint = long_chain(folder, layers)

    def read() -> None:
        structure = structure_from_spec(path, checkpoint)
        assert structure.chains[0].depth == layers

    return cpu_seconds(read)


@pytest.mark.slow
def test_a_chain_of_200000_layers_is_read_in_linear_time(tmp_path: Path) -> None:
    quarter = seconds_to_read(tmp_path, 50_000)
    full = seconds_to_read(tmp_path, 200_000)
    # Four times the layers: about four times the time (a quadratic check would take 16
    # times as long); the bound leaves room for a busy machine.
    assert full < 7 * quarter + 0.5, (quarter, full)
    assert full < 60


def test_many_chains_and_symmetries_are_read_in_linear_time(tmp_path: Path) -> None:
    def read(count: int) -> float:
        infos, lines = [], ["version = 1"]
        for index in range(count):
            infos += [TensorInfo(f"a{index}.weight", (4, 4), "float32")]
            infos += [TensorInfo(f"b{index}.weight", (4, 4), "float32")]
            lines += ["[[chain]]", f'layers = ["a{index}", "b{index}"]']
            lines += [
                "[[symmetry]]",
                "size = 4",
                f'members = [{{ tensor = "b{index}.weight", axis = 0, exponent = 1 }}]',
            ]
        path = tmp_path / f"many{count}.toml"
        path.write_text("\n".join(lines) + "\n")

        def parse() -> None:
            structure = structure_from_spec(path, Described(infos))
            assert len(structure.chains) == len(structure.symmetries) == count

        return cpu_seconds(parse)

    small, large = read(2_000), read(8_000)
    assert large < 7 * small + 0.5, (small, large)


def test_repeated_layers_and_ids_are_still_named(tmp_path: Path) -> None:
    path, checkpoint = long_chain(tmp_path, 3)
    path.write_text('version = 1\n[[chain]]\nlayers = ["l0", "l1", "l0", "l2", "l1"]\n')
    with pytest.raises(StructureError, match=r"layer\(s\) l0, l1 appear more than once"):
        structure_from_spec(path, checkpoint)
    path.write_text(
        'version = 1\n[[chain]]\nid = "x"\nlayers = ["l0"]\n[[chain]]\nid = "x"\nlayers = ["l1"]\n'
    )
    with pytest.raises(StructureError, match=r"chain id\(s\) x used twice"):
        structure_from_spec(path, checkpoint)


def test_an_unknown_layer_still_gets_a_suggestion(tmp_path: Path) -> None:
    path, checkpoint = long_chain(tmp_path, 3)
    path.write_text('version = 1\n[[chain]]\nlayers = ["l0", "l11"]\n')
    with pytest.raises(StructureError, match="did you mean l1"):
        structure_from_spec(path, checkpoint)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version = 1\nx = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
        ("version = 1\nx = " + "{a = " * 50_000 + "1" + "}" * 50_000 + "\n", "nested too deeply"),
        ("version = " + "9" * 4301 + "\n", "longer than 4300 digits"),
        ('version = 1\nx = "\\ud800"\n', "not valid TOML"),
    ],
    ids=["deep-array", "deep-inline-table", "long-integer", "surrogate-escape"],
)
def test_malformed_toml_is_bad_input(tmp_path: Path, text: str, fragment: str) -> None:
    path, checkpoint = long_chain(tmp_path, 2)
    path.write_text(text)
    with pytest.raises(InputError, match=fragment):
        structure_from_spec(path, checkpoint)
