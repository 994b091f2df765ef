"""The application: `main` registers only the command being run, with the same behaviour."""

from __future__ import annotations

import sys

import pytest
import typer
from typer.testing import CliRunner

from weissi_cli.cli import app as app_module
from weissi_cli.cli.app import COMMANDS, build_app, main

RUNNER = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_one_command_app_gives_the_same_help(name: str) -> None:
    alone = RUNNER.invoke(build_app(name), [name, "--help"])
    full = RUNNER.invoke(build_app(), [name, "--help"])
    assert alone.exit_code == full.exit_code == 0
    assert alone.stdout == full.stdout
    assert f"Usage: weissi {name} [OPTIONS]" in alone.stdout


def test_one_command_app_gives_the_same_usage_errors() -> None:
    alone = RUNNER.invoke(build_app("inspect"), ["inspect", "--no-such-flag", "x"])
    full = RUNNER.invoke(build_app(), ["inspect", "--no-such-flag", "x"])
    assert alone.exit_code == full.exit_code == 2
    assert alone.stderr == full.stderr
    assert "No such option: --no-such-flag" in alone.stderr


@pytest.mark.parametrize(
    ("argv", "only"),
    [
        (["graph", "--help"], "graph"),
        (["inspct", "model.safetensors"], None),  # not a command: the full app says so
        (["--help"], None),
        ([], None),
    ],
)
def test_main_builds_only_the_command_named(
    argv: list[str], only: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str | None] = []

    def recording(requested: str | None = None) -> typer.Typer:
        built.append(requested)
        return build_app(requested)

    monkeypatch.setattr(app_module, "build_app", recording)
    monkeypatch.setattr(sys, "argv", ["weissi", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert built == [only]
    assert exited.value.code in (0, 2)


def test_unknown_command_is_named_with_a_suggestion(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["weissi", "inspct", "model.safetensors"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "No such command 'inspct'. Did you mean 'inspect'?" in capsys.readouterr().err


@pytest.mark.parametrize("name", [None, *sorted(COMMANDS)])
def test_h_is_help(name: str | None) -> None:
    args = [name] if name else []
    short = RUNNER.invoke(build_app(), [*args, "-h"])
    long = RUNNER.invoke(build_app(), [*args, "--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout
    assert "-h, --help" in short.stdout


def test_completion_is_offered_and_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    root = RUNNER.invoke(build_app(), ["--help"])
    assert "--install-completion" in root.stdout
    assert "--show-completion" in root.stdout
    # Typer detects the calling shell unless told not to; a test runner started
    # without a shell among its ancestors would otherwise be refused.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    shown = RUNNER.invoke(build_app(), ["--show-completion", "bash"], prog_name="weissi")
    assert shown.exit_code == 0, shown.output
    assert "_WEISSI_COMPLETE=complete_bash" in shown.stdout
    assert "complete -o default -F _weissi_completion weissi" in shown.stdout


def test_completion_completes_commands_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_WEISSI_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "weissi check --max-")
    monkeypatch.setenv("COMP_CWORD", "2")
    result = RUNNER.invoke(build_app(), [], prog_name="weissi")
    assert set(result.stdout.split()) == {
        "--max-imbalance",
        "--max-l2-ratio",
        "--max-abs",
        "--max-norm",
    }


def test_help_stays_fast_and_light() -> None:
    """`weissi --help` loads neither torch, numpy nor Rich, and starts in well under 0.3 s
    more than the interpreter itself (the medians of five runs, measured here)."""
    import statistics
    import subprocess
    import time

    probe = (
        "import sys; sys.argv = ['weissi', '--help']\n"
        "from weissi_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'numpy', 'rich') if m in sys.modules], file=sys.stderr)\n"
    )

    def median(code: str) -> tuple[float, str]:
        times, stderr = [], ""
        for _ in range(5):
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            times.append(time.perf_counter() - began)
            stderr = done.stderr
        return statistics.median(times), stderr

    baseline, _ = median("pass")
    help_time, loaded = median(probe)
    assert loaded.strip() == "[]"
    assert help_time - baseline < 0.3
