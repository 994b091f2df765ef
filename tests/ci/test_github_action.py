"""The GitHub Action (action.yml) and the documented workflows, run step by step with the
variables GitHub sets: the job summary, the outputs, the annotations, the JUnit upload and
the verdict, in the order and under the conditions action.yml gives them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ci.ci_helpers import (
    ROOT,
    condition,
    documented,
    environment,
    run_bash,
    substitute,
    weissi_on_path,
    write_checkpoints,
    yaml,
)

xmlschema = pytest.importorskip("xmlschema")
SCHEMA = ROOT / "tests" / "report" / "junit-10.xsd"


def action() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def steps() -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in action()["runs"]["steps"]}


def github_files(tmp_path: Path) -> dict[str, str]:
    """The files and variables GitHub gives every step of a job."""
    runner = tmp_path / "runner"
    runner.mkdir()
    summary = runner / "step_summary.md"
    summary.write_text("")
    output = runner / "output"
    output.write_text("")
    return {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_WORKSPACE": str(tmp_path / "workspace"),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(output),
        "GITHUB_ENV": str(runner / "env"),
        "RUNNER_TEMP": str(runner),
        "RUNNER_OS": "Linux",
    }


def outputs(path: str) -> dict[str, str]:
    lines = Path(path).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def run_step(
    step: dict[str, Any], context: dict[str, Any], github: dict[str, str], path: str
) -> subprocess.CompletedProcess[str]:
    env = environment(**github, PATH=path)
    env.update({key: substitute(str(value), context) for key, value in step.get("env", {}).items()})
    cwd = Path(github["GITHUB_WORKSPACE"]) / substitute(
        str(step.get("working-directory", ".")), context
    )
    return run_bash(step["run"], cwd, env)


def test_every_expression_names_a_declared_input_or_step() -> None:
    declared = set(action()["inputs"])
    text = (ROOT / "action.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"inputs\.([\w-]+)", text))
    assert used <= declared, used - declared
    assert set(re.findall(r"steps\.(\w+)\.outputs", text)) == {"check"}
    assert [s.get("id") for s in action()["runs"]["steps"] if s.get("id")] == ["check"]
    for step in action()["runs"]["steps"]:
        if "run" in step:
            assert step["shell"] == "bash"
            assert "${{" not in step["run"]  # inputs reach scripts as variables, never as code


@pytest.mark.parametrize("verdict", ["fails", "passes"])
def test_the_action_reports_then_fails_the_job(tmp_path: Path, verdict: str) -> None:
    github = github_files(tmp_path)
    workspace = Path(github["GITHUB_WORKSPACE"])
    checkpoints = write_checkpoints(workspace / "models")
    if verdict == "passes":
        checkpoints["bad"].unlink()
    declared = action()["inputs"]
    inputs = {name: spec.get("default", "") for name, spec in declared.items()}
    inputs.update({"paths": "models/*.safetensors", "args": "--max-norm 1000", "install": "skip"})
    context: dict[str, Any] = {"inputs": inputs, "steps": {}}
    path = f"{weissi_on_path(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    ran = []
    for name, step in steps().items():
        if not condition(step.get("if"), context):
            continue
        ran.append(name)
        if "uses" in step:
            assert step["uses"].startswith("actions/upload-artifact@")
            uploaded = Path(substitute(step["with"]["path"], context))
            assert uploaded.is_file()
            xmlschema.XMLSchema(SCHEMA).validate(str(uploaded))
            continue
        result = run_step(step, context, github, path)
        if step.get("id") == "check":
            assert result.returncode == 0, result.stderr  # the upload runs before the verdict
            context["steps"]["check"] = {"outputs": outputs(github["GITHUB_OUTPUT"])}
            annotations = result.stdout
        elif name == "Verdict":
            assert result.returncode == 1
    check_outputs = context["steps"]["check"]["outputs"]
    summary = Path(github["GITHUB_STEP_SUMMARY"]).read_text()
    assert Path(check_outputs["junit"]) == workspace / "weissi-junit.xml"
    if verdict == "fails":
        assert ran == ["Check checkpoints", "Upload JUnit results", "Verdict"]
        assert check_outputs["exit-code"] == "1"
        assert summary.startswith("## ❌ weissi check failed: 1 of 2 checkpoints passed")
        assert "::error file=models/bad.safetensors,title=weissi non-finite%3A net.0.weight::" in (
            annotations
        )
    else:
        assert ran == ["Check checkpoints", "Upload JUnit results"]
        assert check_outputs["exit-code"] == "0"
        assert summary.startswith("## ✅ weissi check passed")
    assert not list(Path(github["RUNNER_TEMP"]).glob("weissi.*"))  # its scratch is removed


def test_an_unreadable_single_checkpoint_still_leaves_a_summary(tmp_path: Path) -> None:
    github = github_files(tmp_path)
    workspace = Path(github["GITHUB_WORKSPACE"])
    workspace.mkdir()
    (workspace / "model.safetensors").write_bytes(b"truncated")
    step = steps()["Check checkpoints"]
    context = {"inputs": {"paths": "model.safetensors", "junit": "j.xml"}}
    path = f"{weissi_on_path(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    result = run_step(step, context, github, path)
    assert result.returncode == 0
    assert outputs(github["GITHUB_OUTPUT"]) == {"exit-code": "2"}  # no JUnit to upload
    assert "weissi check stopped (exit 2)" in Path(github["GITHUB_STEP_SUMMARY"]).read_text()
    assert "corrupt safetensors header" in result.stderr


def test_no_paths_is_an_error_annotation(tmp_path: Path) -> None:
    github = github_files(tmp_path)
    Path(github["GITHUB_WORKSPACE"]).mkdir()
    path = f"{weissi_on_path(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    result = run_step(steps()["Check checkpoints"], {"inputs": {"paths": ""}}, github, path)
    assert result.stdout.startswith("::error title=weissi check::no checkpoints given")
    assert outputs(github["GITHUB_OUTPUT"]) == {"exit-code": "2"}


@pytest.mark.slow
def test_the_install_step_installs_the_actions_own_copy(tmp_path: Path) -> None:
    """pip installs the action's folder; the venv sees the machine's torch, so pip builds
    only weissi (offline: no build isolation, no dependencies to fetch)."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    github = github_files(tmp_path)
    Path(github["GITHUB_WORKSPACE"]).mkdir()
    step = steps()["Install weissi"]
    inputs = {"install": "action", "pip-args": "--no-deps --no-build-isolation --quiet"}
    env = environment(**github, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH")  # the installed copy, not this tree
    env.update({k: substitute(str(v), {"inputs": inputs}) for k, v in step["env"].items()})
    result = run_bash(step["run"], Path(github["GITHUB_WORKSPACE"]), env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"weissi {_version()}")
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import weissi_cli; print(weissi_cli.__file__)"],
        capture_output=True, text=True, env=env, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert str(venv) in installed


def _version() -> str:
    from weissi_cli import __version__

    return __version__


def test_the_documented_workflow_uses_the_actions_inputs() -> None:
    workflow = yaml.safe_load(documented("uses: OWNER/weissi@"))
    steps_found = [s for job in workflow["jobs"].values() for s in job["steps"]]
    ours = [s for s in steps_found if str(s.get("uses", "")).startswith("OWNER/weissi@")]
    assert len(ours) == 1
    declared = action()["inputs"]
    given = ours[0]["with"]
    assert set(given) <= set(declared)
    assert {name for name, spec in declared.items() if spec.get("required")} <= set(given)


def test_the_documented_workflow_runs_as_written(tmp_path: Path) -> None:
    """The documented `with:` values, through the action's steps."""
    workflow = yaml.safe_load(documented("uses: OWNER/weissi@"))
    given = next(
        s["with"] for job in workflow["jobs"].values() for s in job["steps"]
        if str(s.get("uses", "")).startswith("OWNER/weissi@")
    )  # fmt: skip
    github = github_files(tmp_path)
    write_checkpoints(Path(github["GITHUB_WORKSPACE"]) / "models")
    inputs = {name: spec.get("default", "") for name, spec in action()["inputs"].items()}
    inputs.update({key: str(value) for key, value in given.items()})
    path = f"{weissi_on_path(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    result = run_step(steps()["Check checkpoints"], {"inputs": inputs}, github, path)
    assert result.returncode == 0, result.stderr
    assert outputs(github["GITHUB_OUTPUT"])["exit-code"] == "1"  # the NaN model fails
    summary = Path(github["GITHUB_STEP_SUMMARY"]).read_text()
    assert "| `models/bad.safetensors` | non-finite | `net.0.weight` |" in summary


def test_the_documented_steps_without_the_action_run_as_written(tmp_path: Path) -> None:
    steps_yaml = yaml.safe_load(documented("WEISSI_EXIT"))
    github = github_files(tmp_path)
    workspace = Path(github["GITHUB_WORKSPACE"])
    write_checkpoints(workspace / "models")
    path = f"{weissi_on_path(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    run_steps = [step for step in steps_yaml if "run" in step]
    script = run_steps[0]["run"]
    installs = [line for line in script.splitlines() if line.strip().startswith("pip install")]
    assert len(installs) == 1  # weissi is this tree's here; every other line runs verbatim
    script = script.replace(installs[0], ":")
    env = environment(**github, PATH=path)
    first = run_bash(script, workspace, env)
    assert first.returncode == 0, first.stderr
    assert Path(github["GITHUB_ENV"]).read_text() == "WEISSI_EXIT=1\n"
    assert "## ❌ weissi check failed" in Path(github["GITHUB_STEP_SUMMARY"]).read_text()
    xmlschema.XMLSchema(SCHEMA).validate(str(workspace / "weissi-junit.xml"))
    verdict = run_steps[1]
    context = {"env": {"WEISSI_EXIT": "1"}}
    assert condition(verdict.get("if"), context)
    assert run_bash(verdict["run"], workspace, {**env, "WEISSI_EXIT": "1"}).returncode == 1
