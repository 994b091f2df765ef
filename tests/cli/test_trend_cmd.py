"""`weissi trend` through the CLI: tables at 80 and 120 columns, JSON, CSV, the plot, errors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner, Result

from tests.cli.conftest import assert_golden
from weissi_cli.cli.app import app

# Steps and the power-of-two factor moved from net.2 into net.0 by then (exact in float32,
# so the numbers, and the golden files, do not depend on rounding).
RUN = {0: 1.0, 250: 2.0, 500: 4.0, 1000: 8.0, 2000: 16.0}


@pytest.fixture
def run_folder(workdir: Path) -> Path:
    """run/checkpoint-<step>/model.safetensors: the sample MLP drifting by a scale shift."""
    state = load_file(str(workdir / "mlp_digits.safetensors"))
    for step, factor in RUN.items():
        moved = dict(state)
        moved["net.0.weight"] = state["net.0.weight"] * factor
        moved["net.0.bias"] = state["net.0.bias"] * factor
        moved["net.2.weight"] = state["net.2.weight"] / factor
        folder = workdir / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(moved, str(folder / "model.safetensors"))
    return workdir / "run"


def invoke_at(width: int, *args: str) -> Result:
    runner = CliRunner(
        env={"COLUMNS": str(width), "NO_COLOR": "1", "TERM": "dumb", "WEISSI_DEBUG": None}
    )
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("width", [80, 120])
def test_table_matches_golden(run_folder: Path, width: int) -> None:
    # Given out of order: the steps in the names put them right.
    paths = [f"run/checkpoint-{step}" for step in (1000, 0, 2000, 500, 250)]
    result = invoke_at(width, "trend", *paths)
    assert result.exit_code == 0, result.stderr
    assert_golden(f"trend_run_{width}.txt", result.stdout)
    assert all(len(line) <= width for line in result.stdout.splitlines())
    assert "warning: structure inferred from tensor names and shapes" in result.stderr
    assert result.stderr.count("warning: structure inferred") == 1  # once, not per checkpoint


def test_rows_follow_the_steps_and_the_slack_grows(
    run: Callable[..., Result], run_folder: Path
) -> None:
    result = run("trend", "run")
    rows = [line.split() for line in result.stdout.splitlines() if line[:5].strip().isdigit()]
    assert [int(row[0]) for row in rows] == list(RUN)
    weissi = {row[5] for row in rows}
    assert weissi == {"107.5"}  # a scale shift leaves WEISSI where it was
    assert {row[2] for row in rows} == {"164.5"}  # and the minimum over shifts
    slacks = [float(row[3]) for row in rows]
    assert slacks == sorted(slacks)


def test_json_is_the_payload_alone(run: Callable[..., Result], run_folder: Path) -> None:
    result = run("trend", "run/checkpoint-*", "--json", "--lambda2", "0.5")  # a quoted glob
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["schema"] == "weissi.trend/1"
    assert payload["settings"] == {
        "lambda1": 1.0,
        "lambda2": 0.5,
        "order": "step",
        "spec": None,
        "include_bias": False,
    }
    assert payload["x_axis"] == "step"
    points = payload["checkpoints"]
    assert [p["step"] for p in points] == list(RUN)
    assert [p["source"]["path"] for p in points] == [f"run/checkpoint-{s}" for s in RUN]
    first = points[0]
    assert first["l2_penalty"] == pytest.approx(206.5899048, rel=1e-9)
    assert first["min_l2_penalty"] == pytest.approx(164.5149411, rel=1e-9)
    assert first["weissi_penalty"] == pytest.approx(6.006583657 + 0.5 * 101.4751511, rel=1e-9)
    assert first["chains"][0]["id"] == "chain0"
    assert first["max_norm_tensor"] == "net.0.weight"
    assert len(result.stdout.splitlines()) == 1  # one JSON document, nothing else
    assert payload["warnings"][0].startswith("structure inferred from tensor names")
    assert "warning: structure inferred" in result.stderr


def test_csv_rows_equal_the_json_numbers(run: Callable[..., Result], run_folder: Path) -> None:
    table = run("trend", "run", "--format", "csv")
    payload = json.loads(run("trend", "run", "--json").stdout)
    assert table.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert len(rows) == len(RUN)
    for row, point in zip(rows, payload["checkpoints"], strict=True):
        assert int(row["step"]) == point["step"]
        for key in ("l2_penalty", "min_l2_penalty", "l2_slack", "weissi_penalty", "imbalance"):
            assert float(row[key]) == point[key]  # written in full: read back exactly
        assert row["problems"] == ""


def test_plot_is_written(run: Callable[..., Result], run_folder: Path, workdir: Path) -> None:
    result = run("trend", "run", "--plot", "trend.png")
    assert result.exit_code == 0
    assert (workdir / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote trend.png" in result.stderr
    svg = run("trend", "run", "--json", "--plot", "trend.svg")
    assert json.loads(svg.stdout)["schema"] == "weissi.trend/1"
    assert (workdir / "trend.svg").read_text().lstrip().startswith("<?xml")


def test_order_given_keeps_the_command_line(run: Callable[..., Result], run_folder: Path) -> None:
    result = run("trend", "run/checkpoint-500", "run/checkpoint-0", "--order", "given", "--json")
    payload = json.loads(result.stdout)
    assert [p["step"] for p in payload["checkpoints"]] == [500, 0]
    assert payload["x_axis"] == "index"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "--format", "xml"), "--format must be one of text, json, csv"),
        (("run", "--order", "time"), "--order must be one of step, given"),
        (("run", "--plot", "trend.gif"), "trend.gif: --plot writes .png or .svg files"),
        (("absent/checkpoint-*",), "absent/checkpoint-*: no file or folder matches"),
        (("mlp_digits.pt", "mlp_digits.safetensors"), "mlp_digits.pt: no training step"),
        (("run/checkpoint-0", "run/checkpoint-0"), "both name step 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    run: Callable[..., Result], run_folder: Path, args: tuple[str, ...], message: str
) -> None:
    result = run("trend", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_shows_an_example(run: Callable[..., Result]) -> None:
    result = run("trend", "--help")
    assert result.exit_code == 0
    assert "Example: weissi trend run/checkpoint-* --plot trend.png" in result.stdout
