"""`weissi check`: rules, thresholds from flags and pyproject.toml, every output format."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from xml.sax import saxutils

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import Result

from tests.helpers import mlp_state, write_safetensors
from weissi_cli.report import check as check_report


@pytest.fixture
def broken(workdir: Path) -> Path:
    """An MLP with an injected Inf, a dead unit and a 1e4 imbalance."""
    state = mlp_state(sizes=(6, 8, 8, 3), dtype=torch.float32, seed=1)
    state["net.0.weight"][0, 0] = float("inf")
    state["net.2.weight"][3, :] = 0.0  # unit 3 of the second layer gets no input
    state["net.4.weight"] = state["net.4.weight"] * 1e4
    return write_safetensors(workdir / "broken.safetensors", state)


def rules(result: Result) -> dict[tuple[str, str], dict[str, object]]:
    payload = json.loads(result.stdout)
    return {(r["rule"], r["scope"]): r for r in payload["rules"]}


def test_broken_model_fails_with_the_right_rules(run: Callable[..., Result], broken: Path) -> None:
    result = run(
        "check", broken.name, "--max-imbalance", "100", "--no-dead-units", "--format", "json"
    )
    assert result.exit_code == 1
    found = rules(result)
    assert found[("non-finite", "net.0.weight")]["verdict"] == "fail"
    assert found[("dead-units", "net.2.weight")]["verdict"] == "fail"
    assert "all-zero row(s) [3]" in str(found[("dead-units", "net.2.weight")]["message"])
    assert found[("non-finite", "net.2.weight")]["verdict"] == "pass"


def test_imbalance_rule_fails_a_1e4_imbalance(run: Callable[..., Result], workdir: Path) -> None:
    state = mlp_state(sizes=(6, 8, 8, 3), dtype=torch.float32, seed=1)
    state["net.4.weight"] = state["net.4.weight"] * 1e4
    write_safetensors(workdir / "tilted.safetensors", state)
    result = run("check", "tilted.safetensors", "--max-imbalance", "100", "--format", "json")
    assert result.exit_code == 1
    record = rules(result)[("max-imbalance", "chain0")]
    assert record["verdict"] == "fail"
    assert float(record["value"]) > 1e3  # type: ignore[arg-type]


def test_rebalanced_model_passes(run: Callable[..., Result], workdir: Path) -> None:
    state = mlp_state(sizes=(6, 8, 8, 3), dtype=torch.float32, seed=1)
    state["net.4.weight"] = state["net.4.weight"] * 1e4
    write_safetensors(workdir / "tilted.safetensors", state)
    assert (
        run("rebalance", "tilted.safetensors", "-o", "fixed.safetensors", "--assume-relu").exit_code
        == 0
    )
    result = run(
        "check", "fixed.safetensors", "--max-imbalance", "1.001", "--max-l2-ratio", "1.0001"
    )
    assert result.exit_code == 0
    assert "weissi check passed" in result.stdout


def test_dead_units_are_a_warning_without_the_flag(
    run: Callable[..., Result], workdir: Path
) -> None:
    state = mlp_state(sizes=(6, 8, 3), dtype=torch.float32)
    state["net.2.weight"][:, 5] = 0.0  # unit 5 feeds nothing
    write_safetensors(workdir / "dead.safetensors", state)
    result = run("check", "dead.safetensors", "--format", "json")
    assert result.exit_code == 0
    record = rules(result)[("dead-units", "net.2.weight")]
    assert record["verdict"] == "warn"
    assert "all-zero column(s) [5]" in str(record["message"])


def test_fp16_headroom(run: Callable[..., Result], workdir: Path) -> None:
    state = mlp_state(sizes=(4, 4, 2), dtype=torch.float32)
    state["net.0.weight"][0, 0] = 1e5  # overflows float16
    state["net.2.weight"][0, 0] = 1e-9  # flushes to zero in float16
    write_safetensors(workdir / "wide.safetensors", state)
    result = run("check", "wide.safetensors", "--fp16-headroom", "--format", "json")
    assert result.exit_code == 1
    found = rules(result)
    assert "1 value(s) overflow float16" in str(found[("fp16-headroom", "net.0.weight")]["message"])
    assert "flush to zero in float16" in str(found[("fp16-headroom", "net.2.weight")]["message"])


def test_thresholds_come_from_pyproject_and_flags_win(
    run: Callable[..., Result], broken: Path, workdir: Path
) -> None:
    (workdir / "pyproject.toml").write_text("[tool.weissi.check]\nmax-abs = 0.001\n")
    configured = json.loads(run("check", broken.name, "--format", "json").stdout)
    assert configured["settings"]["max_abs"] == 0.001
    assert configured["settings"]["from"].endswith("pyproject.toml")
    flagged = json.loads(run("check", broken.name, "--max-abs", "5", "--format", "json").stdout)
    assert flagged["settings"]["max_abs"] == 5.0


def test_bad_pyproject_key_is_a_usage_error(
    run: Callable[..., Result], broken: Path, workdir: Path
) -> None:
    (workdir / "pyproject.toml").write_text("[tool.weissi.check]\nmax-imbalanse = 3\n")
    result = run("check", broken.name)
    assert result.exit_code == 2
    assert "unknown key 'max-imbalanse'" in result.stderr


def test_junit_has_the_schema_shape(run: Callable[..., Result], broken: Path) -> None:
    result = run("check", broken.name, "--max-imbalance", "100", "--format", "junit")
    root = ET.fromstring(result.stdout)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert suites
    assert int(root.get("failures", "0")) == sum(int(s.get("failures", "0")) for s in suites)
    assert int(root.get("tests", "0")) == sum(len(s.findall("testcase")) for s in suites)
    failing = [c for s in suites for c in s.findall("testcase") if c.find("failure") is not None]
    assert {c.get("name") for c in failing} == {"net.0.weight"}
    warned = [c for s in suites for c in s.findall("testcase") if c.find("system-out") is not None]
    assert {c.get("name") for c in warned} == {"net.2.weight"}  # the dead unit
    skipped = [c for s in suites for c in s.findall("testcase") if c.find("skipped") is not None]
    assert {c.get("name") for c in skipped} == {"chain0"}  # NaN in its weights: not evaluated
    assert [s.get("name") for s in suites] == [broken.name]
    assert all(
        c.get("classname", "").startswith("weissi.") for s in suites for c in s.findall("testcase")
    )


def test_github_annotations_follow_the_workflow_command_syntax(
    run: Callable[..., Result], broken: Path
) -> None:
    lines = run(
        "check", broken.name, "--max-imbalance", "100", "--format", "github"
    ).stdout.splitlines()
    pattern = re.compile(r"^::(error|warning|notice)( [a-z]+=[^,:]*(,[a-z]+=[^,:]*)*)?::.+$")
    assert lines
    assert all(pattern.match(line) for line in lines), lines
    assert any(
        line.startswith("::error file=broken.safetensors,title=weissi non-finite%3A net.0.weight::")
        for line in lines
    )


def test_markdown_and_output_file(run: Callable[..., Result], broken: Path, workdir: Path) -> None:
    result = run("check", broken.name, "--format", "markdown", "--output", "report.md")
    assert result.exit_code == 1
    assert result.stdout == ""
    text = (workdir / "report.md").read_text()
    assert text.startswith("## ❌ weissi check failed")
    assert "| non-finite | `net.0.weight` | 1 | 0 |" in text


def test_unknown_format_is_refused(run: Callable[..., Result], broken: Path) -> None:
    result = run("check", broken.name, "--format", "xml")
    assert result.exit_code == 2
    assert "--format must be one of" in result.stderr


@given(st.text(alphabet=st.sampled_from("ab<>&\"'\n\r\t é"), max_size=12))
def test_junit_escaping_matches_the_standard_library(text: str) -> None:
    assert check_report.escape(text) == saxutils.escape(text)
    assert check_report.quoteattr(text) == saxutils.quoteattr(text)
