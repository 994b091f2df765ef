"""`weissi check` as a CI gate: many checkpoints, every report from one pass, JUnit valid
against the schema pytest validates with, a Markdown job summary that stays short."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import Result

from tests.helpers import mlp_state, write_safetensors

xmlschema = pytest.importorskip("xmlschema")

SCHEMA = Path(__file__).resolve().parents[1] / "report" / "junit-10.xsd"


@pytest.fixture(scope="module")
def junit_schema() -> Any:
    return xmlschema.XMLSchema(SCHEMA)


@pytest.fixture
def models(workdir: Path) -> dict[str, Path]:
    """Two passing MLPs, one with NaN and a dead unit, one tilted by 1e4, one unreadable."""
    found = {}
    for name, seed in (("good_a", 1), ("good_b", 2)):
        found[name] = write_safetensors(
            workdir / f"{name}.safetensors",
            mlp_state(sizes=(6, 8, 3), dtype=torch.float32, seed=seed),
        )
    state = mlp_state(sizes=(6, 8, 8, 3), dtype=torch.float32, seed=3)
    state["net.0.weight"][0, 0] = float("nan")
    state["net.2.weight"][3, :] = 0.0
    found["broken"] = write_safetensors(workdir / "broken.safetensors", state)
    state = mlp_state(sizes=(6, 8, 8, 3), dtype=torch.float32, seed=4)
    state["net.4.weight"] = state["net.4.weight"] * 1e4
    found["tilted"] = write_safetensors(workdir / "tilted.safetensors", state)
    (workdir / "unreadable.safetensors").write_bytes(b"not a checkpoint")
    found["unreadable"] = workdir / "unreadable.safetensors"
    return found


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of each checkpoint a pass over tensor data reads, once per pass."""
    import weissi_cli.api.check as api
    import weissi_cli.stats as stats

    seen: list[str] = []

    def counted(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(Path(checkpoint.path).name)
            return function(checkpoint, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(api, "compute_stats_and_details", counted(api.compute_stats_and_details))
    monkeypatch.setattr(
        stats, "compute_stats_and_squares", counted(stats.compute_stats_and_squares)
    )
    return seen


ALL_REPORTS = ("--junit", "weissi.xml", "--markdown", "summary.md", "--json", "weissi.json")


def test_every_report_comes_from_one_pass_over_each_checkpoint(
    run: Callable[..., Result], models: dict[str, Path], workdir: Path, passes: list[str]
) -> None:
    names = ["good_a", "broken", "tilted", "good_b"]
    result = run(
        "check", *(models[n].name for n in names), "--max-imbalance", "100", "--max-norm", "1e6",
        *ALL_REPORTS, "--github", "--format", "markdown", "-o", "stdout.md",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert sorted(passes) == sorted(models[n].name for n in names)  # one pass each
    for name in ("weissi.xml", "summary.md", "weissi.json", "stdout.md"):
        assert (workdir / name).stat().st_size > 0
    assert (workdir / "summary.md").read_text() == (workdir / "stdout.md").read_text()
    assert result.stdout.startswith("::")  # the annotations, with the Markdown in its file


def test_one_pass_for_a_model_folder_and_its_symmetry_rules(
    run: Callable[..., Result], llama_folders: dict[int, Path], passes: list[str], tmp_path: Path
) -> None:
    """A transformer folder is read once, with or without --max-imbalance/--max-l2-ratio:
    the axis squares those rules solve from (one factor per attention head) come from the
    same pass, and give the values a separate reading of them gives to the last digit."""
    folder = llama_folders[2]
    assert run("check", str(folder), "--junit", str(tmp_path / "a.xml")).exit_code == 0
    assert passes == ["model.safetensors"]
    passes.clear()
    rules = ("--max-l2-ratio", "100", "--max-imbalance", "1e6", "--format", "json")
    result = run("check", str(folder), *rules)
    assert result.exit_code == 0, result.output
    assert passes == ["model.safetensors"]
    # --fp16-headroom puts the pass on numpy, so the squares are read by a pass of their own
    passes.clear()
    apart = run("check", str(folder), *rules, "--fp16-headroom")
    assert apart.exit_code == 0, apart.output
    assert passes == ["model.safetensors", "model.safetensors"]
    symmetry_rules = [
        {k: rule[k] for k in ("rule", "value", "verdict")}
        for rule in json.loads(result.stdout)["rules"]
        if rule["scope"] == "symmetries"
    ]
    assert {rule["rule"] for rule in symmetry_rules} == {"max-l2-ratio", "max-imbalance"}
    assert all(isinstance(rule["value"], float) for rule in symmetry_rules)
    assert symmetry_rules == [
        {k: rule[k] for k in ("rule", "value", "verdict")}
        for rule in json.loads(apart.stdout)["rules"]
        if rule["scope"] == "symmetries"
    ]


def test_the_symmetry_rules_leave_every_other_value_as_it_was(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    """Asking for the symmetry rules adds their squares to the one pass; the statistics of
    every tensor, and so every other rule's value, stay what they are without them (the
    projections here have 102,400 values: the kernel sums them in pieces)."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=320, intermediate_size=384, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64,
    )  # fmt: skip
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    values = {}
    for extra in ((), ("--max-l2-ratio", "100", "--max-imbalance", "1e6")):
        result = run("check", str(folder), "--max-norm", "1e6", "--max-abs", "1e6",
                     *extra, "--format", "json")  # fmt: skip
        assert result.exit_code == 0, result.output
        values[extra] = {
            (rule["rule"], rule["scope"]): rule["value"]
            for rule in json.loads(result.stdout)["rules"]
            if rule["scope"] != "symmetries"
        }
    plain, with_rules = values.values()
    assert any("o_proj" in scope for _, scope in plain)
    assert plain == with_rules


def test_symmetries_that_each_take_one_factor_are_checked_from_the_one_pass(
    run: Callable[..., Result],
    passes: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deep MLP's symmetries each scale whole axes, so their layer-wise optimum needs only
    the tensors' totals, which the pass already has: no second pass, the same values."""
    from tests.onnx_models import large_mlp

    model = large_mlp(tmp_path / "mlp", hidden=96, width=48)
    rules = ("--max-l2-ratio", "1e6", "--max-imbalance", "1e6", "--format", "json")
    result = run("check", str(model), *rules)
    assert result.exit_code == 0, result.output
    assert passes == ["model.onnx"]
    found = {r["scope"] + r["rule"]: r["value"] for r in json.loads(result.stdout)["rules"]}
    import weissi_cli.api.symmetries as symmetries

    monkeypatch.setattr(symmetries, "_uniform", lambda *args: {})  # keep every moving axis
    passes.clear()
    again = run("check", str(model), *rules)
    assert passes == ["model.onnx"]  # the axes' squares come from the same pass
    read = {r["scope"] + r["rule"]: r["value"] for r in json.loads(again.stdout)["rules"]}
    assert found.keys() == read.keys()
    assert "symmetriesmax-l2-ratio" in found
    for key, value in read.items():
        if isinstance(value, float):
            assert found[key] == pytest.approx(value, rel=1e-6), key


def test_exit_codes_and_one_summary_line_per_checkpoint(
    run: Callable[..., Result], models: dict[str, Path]
) -> None:
    passing = run("check", models["good_a"].name, models["good_b"].name)
    assert passing.exit_code == 0
    lines = [line for line in passing.stdout.splitlines() if line.startswith("✓ ")]
    assert lines == [
        "✓ good_a.safetensors: passed · 0 failed · 0 warnings · 4 passed",
        "✓ good_b.safetensors: passed · 0 failed · 0 warnings · 4 passed",
    ]
    assert "weissi check passed: 2 of 2 checkpoints passed" in passing.stdout
    failing = run("check", models["good_a"].name, models["tilted"].name, "--max-imbalance", "100")
    assert failing.exit_code == 1
    assert "✗ tilted.safetensors: failed · 1 failed" in failing.stdout
    unreadable = run(
        "check", models["good_a"].name, models["unreadable"].name, models["tilted"].name,
        "--max-imbalance", "100", "--junit", "weissi.xml",
    )  # fmt: skip
    assert unreadable.exit_code == 2  # bad input wins over a failed rule
    assert "✗ unreadable.safetensors: not checked" in unreadable.stdout
    assert "✗ tilted.safetensors: failed" in unreadable.stdout  # still checked


def test_machine_formats_keep_stdout_clean_and_summaries_on_stderr(
    run: Callable[..., Result], models: dict[str, Path]
) -> None:
    result = run("check", models["good_a"].name, models["broken"].name, "--format", "json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["schema"] == "weissi.checks/1"
    assert [c["source"]["path"] for c in payload["checkpoints"]] == [
        "good_a.safetensors",
        "broken.safetensors",
    ]
    assert all(c["schema"] == "weissi.check/1" for c in payload["checkpoints"])
    assert payload["passed"] is False
    assert payload["exit_code"] == 1
    assert "✗ broken.safetensors: failed" in result.stderr
    quiet = run("check", models["good_a"].name, models["broken"].name, "--format", "json", "-q")
    assert quiet.stderr == ""
    single = json.loads(run("check", models["good_a"].name, "--format", "json").stdout)
    assert single["schema"] == "weissi.check/1"  # one checkpoint: its own payload


def test_globs_and_folders_expand_to_their_checkpoints(
    run: Callable[..., Result], models: dict[str, Path], workdir: Path
) -> None:
    folder = workdir / "exports"
    folder.mkdir()
    for name in ("good_a", "good_b"):
        shutil.copy(models[name], folder / models[name].name)
    (folder / "notes.txt").write_text("not a checkpoint")
    by_folder = json.loads(run("check", "exports", "--format", "json").stdout)
    by_glob = json.loads(run("check", "exports/*.safetensors", "--format", "json").stdout)
    for payload in (by_folder, by_glob):
        paths = [c["source"]["path"] for c in payload["checkpoints"]]
        assert paths == ["exports/good_a.safetensors", "exports/good_b.safetensors"]
    nothing = run("check", "exports/*.pt")
    assert nothing.exit_code == 2
    assert "no file or folder matches" in nothing.stderr


def test_junit_is_valid_with_one_suite_per_checkpoint(
    run: Callable[..., Result], models: dict[str, Path], workdir: Path, junit_schema: Any
) -> None:
    import xml.etree.ElementTree as ET

    names = ["good_a", "broken", "unreadable", "tilted"]
    run(
        "check", *(models[n].name for n in names), "--max-imbalance", "100", "--max-norm", "1e6",
        "--fp16-headroom", "--junit", "weissi.xml",
    )  # fmt: skip
    junit_schema.validate(str(workdir / "weissi.xml"))
    root = ET.parse(workdir / "weissi.xml").getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [models[n].name for n in names]
    cases = {
        (suite.get("name"), case.get("classname"), case.get("name")): case
        for suite in suites
        for case in suite.findall("testcase")
    }
    failure = cases[("tilted.safetensors", "weissi.max-imbalance", "chain0")].find("failure")
    assert failure is not None
    assert failure.text is not None
    assert "tensors: net.0.weight" in failure.text
    assert re.search(r"^value: \d{4}$", failure.text, re.MULTILINE)  # the imbalance, ~1e4
    assert "threshold: 100" in failure.text
    assert "fix: `weissi rebalance tilted.safetensors -o OUT`" in failure.text
    skipped = cases[("broken.safetensors", "weissi.max-imbalance", "chain0")].find("skipped")
    assert skipped is not None
    assert "NaN or Inf" in str(skipped.get("message"))
    skipped_norm = cases[("broken.safetensors", "weissi.max-norm", "net.0.weight")]
    assert skipped_norm.find("skipped") is not None  # never shown as passed
    unread = cases[("unreadable.safetensors", "weissi.read", "read the checkpoint")]
    assert unread.find("failure") is not None
    for suite in suites:
        cases_here = suite.findall("testcase")
        assert int(suite.get("tests", "")) == len(cases_here)
        assert int(suite.get("failures", "")) == sum(
            c.find("failure") is not None for c in cases_here
        )
        assert int(suite.get("skipped", "")) == sum(
            c.find("skipped") is not None for c in cases_here
        )


def test_a_rule_without_structure_is_skipped_not_passed(
    run: Callable[..., Result], workdir: Path
) -> None:
    write_safetensors(workdir / "odd.safetensors", {"a": torch.ones(3, 3), "b": torch.ones(5, 2)})
    payload = json.loads(
        run("check", "odd.safetensors", "--max-imbalance", "10", "--format", "json").stdout
    )
    record = next(r for r in payload["rules"] if r["rule"] == "max-imbalance")
    assert record["verdict"] == "skip"
    assert "no chains of layers or scale symmetries" in record["message"]
    assert payload["summary"]["skip"] == 1


def test_markdown_leads_with_the_verdict_and_failures(
    run: Callable[..., Result], models: dict[str, Path], workdir: Path
) -> None:
    run(
        "check", models["good_a"].name, models["tilted"].name, "--max-imbalance", "100",
        "--markdown", "summary.md",
    )  # fmt: skip
    lines = (workdir / "summary.md").read_text().splitlines()
    assert lines[0] == "## ❌ weissi check failed: 1 of 2 checkpoints passed, 1 failed"
    assert "| ❌ | `tilted.safetensors` | 1 | 0 | 0 | 6 |" in lines
    failures = lines.index("**Failures**")
    rules = next(i for i, line in enumerate(lines) if line.startswith("| rule | checked"))
    assert failures < rules
    assert lines[failures + 4].startswith("| `tilted.safetensors` | max-imbalance | `chain0` | 5")


def test_a_passing_transformer_summary_is_a_few_dozen_lines(
    run: Callable[..., Result], llama_folders: dict[int, Path], tmp_path: Path
) -> None:
    """288 weight tensors (32 blocks of 9), every per-tensor rule on: the passing values are
    folded, one line per rule."""
    summary = tmp_path / "summary.md"
    result = run(
        "check", str(llama_folders[32]), "--max-abs", "100", "--max-norm", "1e3",
        "--fp16-headroom", "--fp16-tolerance", "0.5", "--max-l2-ratio", "100",
        "--markdown", str(summary),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = summary.read_text()
    lines = text.splitlines()
    assert len(lines) == GOLDEN_SUMMARY_LINES, text
    assert lines[0].startswith("## ✅ weissi check passed: 0 failed")
    assert text.count("<details>") == 2  # max-abs and max-norm, 291 values each
    folded = re.findall(r"<details><summary>(.*?)</summary>", text)
    assert folded == ["max-abs: 291 passed (≤ 100)", "max-norm: 291 passed (≤ 1000)"]


GOLDEN_SUMMARY_LINES = 23


def test_fp16_tolerance_as_fraction_or_count(run: Callable[..., Result], workdir: Path) -> None:
    state = mlp_state(sizes=(10, 10, 2), dtype=torch.float32)
    state["net.0.weight"][0, :3] = 1e-9  # 3 of 100 values flush to zero in float16
    write_safetensors(workdir / "tiny.safetensors", state)

    def verdict(*tolerance: str) -> str:
        result = run("check", "tiny.safetensors", "--fp16-headroom", *tolerance, "--format", "json")
        record = next(
            r for r in json.loads(result.stdout)["rules"]
            if r["rule"] == "fp16-headroom" and r["scope"] == "net.0.weight"
        )  # fmt: skip
        return str(record["verdict"])

    assert verdict() == "fail"
    assert verdict("--fp16-tolerance", "3") == "pass"
    assert verdict("--fp16-tolerance", "2") == "fail"
    assert verdict("--fp16-tolerance", "0.03") == "pass"  # 3% of 100 values
    assert verdict("--fp16-tolerance", "2%") == "fail"
    state["net.0.weight"][1, 1] = 1e6  # overflows float16: no tolerance covers that
    write_safetensors(workdir / "tiny.safetensors", state)
    assert verdict("--fp16-tolerance", "50") == "fail"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.5", "must be whole"),
        ("-1", "the tolerance must be"),
        ("150%", "below 100%"),
        ("lots", "the tolerance must be"),
    ],
)
def test_a_bad_tolerance_is_a_usage_error(
    run: Callable[..., Result], models: dict[str, Path], value: str, message: str
) -> None:
    result = run("check", models["good_a"].name, "--fp16-headroom", "--fp16-tolerance", value)
    assert result.exit_code == 2
    assert message in result.stderr


def test_tolerance_from_pyproject(
    run: Callable[..., Result], models: dict[str, Path], workdir: Path
) -> None:
    (workdir / "pyproject.toml").write_text(
        '[tool.weissi.check]\nfp16-headroom = true\nfp16-tolerance = "0.1%"\n'
    )
    payload = json.loads(run("check", models["good_a"].name, "--format", "json").stdout)
    assert payload["settings"]["fp16_tolerance"] == pytest.approx(0.001)


def test_report_destinations_are_refused_before_any_pass(
    run: Callable[..., Result], models: dict[str, Path], workdir: Path, passes: list[str]
) -> None:
    (workdir / "old.xml").write_text("an earlier report")
    refused = [
        ("--junit", "old.xml"),  # exists, no --force
        ("--json", models["good_b"].name),  # an input
        ("--markdown", "missing/summary.md"),
    ]
    for option, destination in refused:
        result = run("check", models["good_a"].name, models["good_b"].name, option, destination)
        assert result.exit_code == 2, (option, result.output)
    same = run("check", models["good_a"].name, "--junit", "r.txt", "--markdown", "r.txt")
    assert same.exit_code == 2
    assert "both --junit and --markdown name this file" in same.stderr
    assert passes == []
    assert (workdir / "old.xml").read_text() == "an earlier report"


def test_github_annotations_carry_the_fix(
    run: Callable[..., Result], models: dict[str, Path]
) -> None:
    result = run("check", models["tilted"].name, "--max-imbalance", "100", "--github", "-q")
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    error = next(line for line in annotations if line.startswith("::error"))
    assert error.startswith(
        "::error file=tilted.safetensors,title=weissi max-imbalance%3A chain0::"
    )
    assert "weissi rebalance tilted.safetensors -o OUT" in error
    assert "weissi check failed" in result.stdout  # the text report follows the annotations
