"""examples/weissi_vs_l2.py end to end in its quick form: it must finish and leave
checkpoints `weissi trend` reads; what it measures is a result, not something to assert."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from weissi_cli.cli.app import app
from weissi_cli.penalty import l2_slack, weissi_penalty

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "weissi_vs_l2.py"


def load_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("weissi_vs_l2", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "weissi_vs_l2", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_ends_with_finite_numbers_and_readable_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(monkeypatch)
    out = tmp_path / "runs"
    results = example.main(["--quick", "--out", str(out), "--json", str(tmp_path / "r.json")])
    methods = [*example.METHODS, *example.ABLATIONS]
    assert [row["method"] for row in results["summary"]] == methods
    for run in results["runs"]:
        numbers = [run["test_accuracy"], *run["fgsm_accuracy"].values(), *run["final"].values()]
        assert all(math.isfinite(value) for value in numbers), run
    assert json.loads((tmp_path / "r.json").read_text())["quick"] is True

    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    for method in methods:
        folder = out / method / "seed0"
        result = runner.invoke(app, ["trend", str(folder), "--json"])
        assert result.exit_code == 0, result.stderr
        points = json.loads(result.stdout)["checkpoints"]
        steps = [point["step"] for point in points]
        assert steps[0] == 0
        assert steps == sorted(steps)
        assert len(steps) == len(list(folder.glob("step_*.safetensors"))) >= 3
        assert all(point["problems"] == [] for point in points)

    # The final numbers are weissi's own, and the penalty module agrees with them.
    import torch
    from safetensors.torch import load_file

    run = next(r for r in results["runs"] if r["method"] == "weissi")
    last = max(Path(run["checkpoints"]).glob("step_*.safetensors"), key=lambda p: int(p.stem[5:]))
    model = example.make_model()
    model.load_state_dict(load_file(str(last)))
    with torch.no_grad():
        assert float(weissi_penalty(model)) == pytest.approx(
            run["final"]["weissi_penalty"], rel=1e-6
        )
        assert float(l2_slack(model)) == pytest.approx(run["final"]["l2_slack"], rel=1e-4)
