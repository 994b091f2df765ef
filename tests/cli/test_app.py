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
