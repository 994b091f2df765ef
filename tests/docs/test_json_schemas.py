"""The JSON schemas page documents exactly the top-level keys of every real payload."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from weissi_cli.api.check import check_checkpoint
from weissi_cli.api.diff import diff_checkpoints
from weissi_cli.api.graph import graph_checkpoint
from weissi_cli.api.inspect import inspect_checkpoint
from weissi_cli.api.rebalance import rebalance_checkpoint
from weissi_cli.api.trend import trend_checkpoints
from weissi_cli.config import CheckSettings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "json.md"
KEY = re.compile(r"`([a-z_]+)(?:\[\])?`")


def documented_top_level_keys() -> dict[str, set[str]]:
    """Per `## \\`weissi.X/1\\`` section, the keys in the first column of its first table."""
    sections: dict[str, set[str]] = {}
    for part in PAGE.read_text(encoding="utf-8").split("\n## `")[1:]:
        schema = part.split("`", 1)[0]
        rows = []
        for line in part.splitlines()[1:]:
            if line.startswith("|"):
                rows.append(line)
            elif rows:
                break
        keys = set()
        for row in rows[2:]:  # after the header and the separator
            keys.update(KEY.findall(row.split("|")[1]))
        sections[schema] = keys
    return sections


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    samples = Path(__file__).resolve().parents[2] / "sample_checkpoints"
    mlp = samples / "mlp_digits.safetensors"
    work = tmp_path_factory.mktemp("payloads")
    run = work / "run"
    run.mkdir()
    shutil.copy(mlp, run / "step_0.safetensors")
    shutil.copy(samples / "mlp_digits_shifted.safetensors", run / "step_100.safetensors")
    rebalanced = rebalance_checkpoint(mlp, work / "out.safetensors", assume_relu=True)
    return {
        "weissi.inspect/1": inspect_checkpoint(mlp).to_dict(),
        "weissi.rebalance/1": rebalanced.to_dict(),
        "weissi.graph/1": graph_checkpoint(mlp).to_dict(),
        "weissi.check/1": check_checkpoint(mlp, CheckSettings(max_imbalance=10.0)).to_dict(),
        "weissi.diff/1": diff_checkpoints(mlp, run / "step_100.safetensors").to_dict(),
        "weissi.trend/1": trend_checkpoints([run]).to_dict(),
    }


def test_every_schema_is_documented(payloads: dict[str, dict[str, Any]]) -> None:
    assert sorted(documented_top_level_keys()) == sorted(payloads)


@pytest.mark.parametrize(
    "schema",
    [
        "weissi.inspect/1",
        "weissi.rebalance/1",
        "weissi.graph/1",
        "weissi.check/1",
        "weissi.diff/1",
        "weissi.trend/1",
    ],
)
def test_the_documented_top_level_keys_are_the_payload_keys(
    schema: str, payloads: dict[str, dict[str, Any]]
) -> None:
    payload = payloads[schema]
    assert payload["schema"] == schema
    assert documented_top_level_keys()[schema] == set(payload)
