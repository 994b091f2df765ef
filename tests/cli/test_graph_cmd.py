"""`weissi graph` through the CLI: the tree, JSON, and the emitted spec."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result

from tests.cli.conftest import assert_golden


def test_tree_matches_golden(run: Callable[..., Result], workdir: Path) -> None:
    result = run("graph", "cnn_digits.safetensors")
    assert result.exit_code == 0
    assert_golden("graph_cnn_digits.txt", result.stdout)


def test_emitted_spec_matches_golden_and_reads_back(
    run: Callable[..., Result], workdir: Path
) -> None:
    result = run("graph", "cnn_digits.pt", "--emit-spec")
    assert result.exit_code == 0
    assert_golden("spec_cnn_digits.toml", result.stdout)
    (workdir / "spec.toml").write_text(result.stdout)
    pinned = run("graph", "cnn_digits.safetensors", "--spec", "spec.toml", "--json")
    assert pinned.exit_code == 0
    chain = json.loads(pinned.stdout)["chains"][0]
    assert [layer["name"] for layer in chain["layers"]] == [
        "features.0",
        "features.2",
        "classifier",
    ]
    assert chain["origin"] == "spec"
    assert chain["symmetries"][1]["members"][-1] == {
        "tensor": "classifier.weight",
        "axis": 1,
        "exponent": -1,
        "block": 64,
        "offset": 0,
    }
    assert pinned.stderr == ""  # no assumption to warn about


def test_json_schema(run: Callable[..., Result], workdir: Path) -> None:
    result = run("graph", "mlp_digits.safetensors", "--json")
    payload = json.loads(result.stdout)
    assert payload["schema"] == "weissi.graph/1"
    assert payload["origin"] == "heuristic"
    assert payload["chains"][0]["depth"] == 3
    assert payload["warnings"][0].startswith("structure inferred from tensor names and shapes")


def test_emit_spec_and_json_together_is_a_usage_error(
    run: Callable[..., Result], workdir: Path
) -> None:
    result = run("graph", "mlp_digits.pt", "--emit-spec", "--json")
    assert result.exit_code == 2
    assert "--emit-spec and --json" in result.stderr


def test_unknown_spec_layer(run: Callable[..., Result], workdir: Path) -> None:
    (workdir / "spec.toml").write_text('version = 1\n[[chain]]\nlayers = ["net.0", "net.9"]\n')
    result = run("graph", "mlp_digits.pt", "--spec", "spec.toml")
    assert result.exit_code == 2
    assert "unknown layer 'net.9'" in result.stderr
