"""`diff_checkpoints`: equal bytes are skipped, equal values in other bytes are still equal,
and a transformer folder against its rebalanced copy is equal up to a scale shift."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.hf_models import build, save
from weissi_cli.api.diff import diff_checkpoints
from weissi_cli.api.rebalance import rebalance_checkpoint

WIDTH = 3000  # rows wider than a block's 2^19 elements / 200: several blocks per tensor


def mlp(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "net.0.weight": rng.standard_normal((400, 64)).astype(np.float32),
        "net.0.bias": rng.standard_normal(400).astype(np.float32),
        "net.2.weight": rng.standard_normal((WIDTH, 400)).astype(np.float32),
        "net.2.bias": rng.standard_normal(WIDTH).astype(np.float32),
    }


def test_a_byte_copy_is_identical(tmp_path: Path) -> None:
    save_file(mlp(0), str(tmp_path / "a.safetensors"))
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    report = diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.verdict == "identical"
    assert all(t.bitwise_equal and t.max_abs_diff == 0.0 for t in report.tensors)
    assert {t.name for t in report.tensors} == set(mlp(0))


def test_equal_values_in_other_bytes_are_still_equal(tmp_path: Path) -> None:
    """-0.0 against +0.0 and one NaN against another payload: the bytes differ, the values
    compare equal, as they did before bytes were compared first."""
    first = mlp(1)
    first["net.2.weight"][5, 7] = 0.0
    first["net.2.weight"][2000, 3] = np.nan
    second = {name: value.copy() for name, value in first.items()}
    second["net.2.weight"][5, 7] = -0.0
    second["net.2.weight"].view(np.uint32)[2000, 3] = 0x7FC00001  # another quiet NaN
    assert second["net.2.weight"].tobytes() != first["net.2.weight"].tobytes()
    save_file(first, str(tmp_path / "a.safetensors"))
    save_file(second, str(tmp_path / "b.safetensors"))
    report = diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.verdict == "identical"
    assert all(t.bitwise_equal for t in report.tensors)


def test_one_changed_value_is_found_among_equal_blocks(tmp_path: Path) -> None:
    first = mlp(2)
    second = {name: value.copy() for name, value in first.items()}
    second["net.2.weight"][WIDTH - 1, 399] += 0.5  # the last block of the tensor
    save_file(first, str(tmp_path / "a.safetensors"))
    save_file(second, str(tmp_path / "b.safetensors"))
    report = diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.verdict == "different"
    changed = {t.name: t for t in report.tensors}
    assert not changed["net.2.weight"].bitwise_equal
    assert changed["net.2.weight"].max_abs_diff == pytest.approx(0.5, rel=1e-6)
    assert all(t.bitwise_equal for name, t in changed.items() if name != "net.2.weight")


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_a_transformer_and_its_rebalanced_copy(tmp_path: Path, granularity: str) -> None:
    source = save(build("llama"), tmp_path / "in")
    rebalance_checkpoint(source, tmp_path / "out", granularity=granularity)
    itself = diff_checkpoints(source, source, granularity=granularity)
    assert itself.verdict == "identical"
    report = diff_checkpoints(source, tmp_path / "out", granularity=granularity)
    assert report.verdict == "equal up to scale shift"
    assert report.structure.level == "exact"
    assert report.qualifier == ""
    moved = [t for t in report.tensors if not t.bitwise_equal]
    assert moved  # the rebalanced projections
    assert all(t.canonical_rel_diff is not None for t in moved)
    assert max(t.canonical_rel_diff or 0.0 for t in moved) <= report.tolerance


def test_a_rewrite_with_biases_in_its_penalty_is_compared_with_the_same_penalty(
    samples: Path, tmp_path: Path
) -> None:
    """Per channel, the canonical form is the optimum of a penalty: a rewrite that put the
    biases in it is equal up to scale shift only under that same penalty."""
    source = samples / "mlp_digits.safetensors"
    output = tmp_path / "out.safetensors"
    rebalance_checkpoint(source, output, assume_relu=True, include_bias=True, granularity="channel")
    other = diff_checkpoints(source, output, granularity="channel")
    same = diff_checkpoints(source, output, granularity="channel", include_bias=True)
    assert other.verdict == "different"
    assert same.verdict == "equal up to scale shift"
    assert same.to_dict()["settings"]["include_bias"] is True


def test_scale_shift_on_a_guessed_structure_says_what_it_stands_on(
    samples: Path, tmp_path: Path
) -> None:
    source = samples / "mlp_digits.safetensors"
    output = tmp_path / "out.safetensors"
    rebalance_checkpoint(source, output, assume_relu=True)
    report = diff_checkpoints(source, output)
    assert report.verdict == "equal up to scale shift"
    assert report.structure.level == "assumed"
    assert report.structure.compared
    assert report.qualifier.startswith("assumed structure, guessed from names and shapes")
    spec = tmp_path / "spec.toml"
    spec.write_text('version = 2\n[[chain]]\nlayers = ["net.0", "net.2", "net.4"]\n')
    declared = diff_checkpoints(source, output, spec=spec)
    assert declared.structure.level == "declared"
    assert declared.to_dict()["structure"]["description"] == f"declared by {spec}"


def test_a_guessed_structure_that_cannot_place_a_head_is_not_compared_on(tmp_path: Path) -> None:
    """B rescales a trunk as the name-order chain would, leaving the second head that reads
    the trunk unscaled: a broken rewrite, which the guess would call a scale shift."""
    rng = np.random.default_rng(3)
    first = {
        "trunk.0.weight": rng.standard_normal((8, 6)).astype(np.float32),
        "trunk.1.weight": rng.standard_normal((5, 8)).astype(np.float32),
        "trunk.2.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "trunk.3.weight": rng.standard_normal((4, 5)).astype(np.float32),
    }
    second = dict(first)
    second["trunk.1.weight"] = first["trunk.1.weight"] * np.float32(2.0)
    second["trunk.2.weight"] = first["trunk.2.weight"] * np.float32(0.5)
    save_file(first, str(tmp_path / "a.safetensors"))
    save_file(second, str(tmp_path / "b.safetensors"))
    report = diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.verdict == "different"
    assert not report.structure.compared
    assert any("trunk.3.weight takes 5 inputs" in r for r in report.structure.refusals)
    assert any("not compared up to scale shift" in w for w in report.warnings)
