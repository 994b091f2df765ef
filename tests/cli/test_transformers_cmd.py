"""The commands on a Hugging Face model folder: the trained sample LLaMA."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from tests.cli.conftest import assert_golden

pytest.importorskip("transformers")


@pytest.fixture
def model(tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(samples / "tiny_llama_chars", tmp_path / "tiny_llama_chars")
    monkeypatch.chdir(tmp_path)
    return Path("tiny_llama_chars")


def test_inspect_shows_each_kind_per_block(run: Callable[..., Result], model: Path) -> None:
    result = run("inspect", str(model), "--granularity", "channel")
    assert result.exit_code == 0, result.stderr
    assert_golden("inspect_tiny_llama.txt", result.stdout)


def test_graph_lists_the_config_symmetries(run: Callable[..., Result], model: Path) -> None:
    result = run("graph", str(model), "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["origin"] == "config:llama"
    kinds = {symmetry["kind"] for symmetry in payload["symmetries"]}
    assert kinds == {"norm→qkv", "q↔k", "v→o", "norm→mlp", "up→down", "norm→lm_head"}
    assert payload["notes"][0].startswith("the residual stream and the embeddings")


def test_rebalance_folder_verified_by_transformers(run: Callable[..., Result], model: Path) -> None:
    result = run(
        "rebalance", str(model), "-o", "balanced", "--verify-with", "transformers", "--json"
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["verification"]["passed"] is True
    assert "transformers" in payload["verification"]["method"]
    assert payload["verification"]["max_rel_diff"] <= 1e-5
    assert sorted(p.name for p in Path("balanced").iterdir()) == sorted(
        p.name for p in model.iterdir()
    )
    assert result.stderr == ""  # transformers' progress bars stay quiet


def test_rebalance_folder_into_a_file_is_refused(run: Callable[..., Result], model: Path) -> None:
    Path("taken").write_text("x")
    result = run("rebalance", str(model), "-o", "taken")
    assert result.exit_code == 2
    assert "is written to a folder" in result.stderr


def test_verify_with_something_else_is_bad_usage(run: Callable[..., Result], model: Path) -> None:
    result = run("rebalance", str(model), "-o", "out", "--verify-with", "onnx")
    assert result.exit_code == 2
    assert "'onnx' is not one of 'transformers', 'none'" in result.stderr
