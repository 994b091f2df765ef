"""Names from a checkpoint or spec reach the terminal escaped: an escape sequence, a bell, a
line break or a bidirectional override in a tensor name never reaches it raw."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import Result

from tests.helpers import mlp_state, write_torch
from weissi_cli.cli.console import stdout_console
from weissi_cli.report.printable import printable, printable_lines, xml_text

# Retitles the terminal, clears the screen, rings the bell; a forged report line; a C1
# control (CSI); a right-to-left override.
HOSTILE = "\x1b]0;owned\x07\x1b[2J"
FORGED = "x\n✓ verified"
CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


def assert_nothing_raw(*texts: str) -> None:
    for text in texts:
        for control in CONTROLS:
            assert control not in text, (control, text)
        assert FORGED not in text


@pytest.fixture
def hostile(workdir: Path) -> Path:
    """An MLP whose layers, chain and extra tensors carry control characters, pinned by a
    spec file (TOML escapes)."""
    state = mlp_state(sizes=(5, 4, 3), dtype=torch.float32)
    renamed = {
        f"a{HOSTILE}.weight": state["net.0.weight"],
        f"a{HOSTILE}.bias": state["net.0.bias"],
        "b\x9b31m.weight": state["net.2.weight"] * 100,
        "b\x9b31m.bias": state["net.2.bias"],
        f"{FORGED}": torch.ones(3),
        "\u202etxt.exe": torch.ones(2),
    }
    write_torch(workdir / "hostile.pt", renamed)
    (workdir / "spec.toml").write_text(
        "version = 1\n[[chain]]\n"
        'id = "c\\u001b[2J"\n'
        'layers = ["a\\u001b]0;owned\\u0007\\u001b[2J", "b\\u009b31m"]\n'
    )
    return workdir / "hostile.pt"


@pytest.mark.parametrize(
    "command",
    [
        ("check", "hostile.pt", "--spec", "spec.toml", "--max-abs", "0.5", "--format", "markdown"),
        ("check", "hostile.pt", "--spec", "spec.toml", "--max-abs", "0.5", "--format", "github"),
        ("inspect", "hostile.pt", "--spec", "spec.toml"),
        ("graph", "hostile.pt", "--spec", "spec.toml"),
        ("check", "hostile.pt", "--spec", "spec.toml", "--max-abs", "0.5"),
        ("rebalance", "hostile.pt", "--spec", "spec.toml", "-o", "out.pt"),
    ],
    ids=lambda command: "-".join(command[:1] + command[-1:]),
)
def test_every_renderer_escapes_names(
    run: Callable[..., Result], hostile: Path, command: tuple[str, ...]
) -> None:
    result = run(*command)
    assert result.exit_code in (0, 1), result.stderr
    assert_nothing_raw(result.stdout, result.stderr)
    assert "\\x1b" in result.stdout or "\\x1b" in result.stderr


def test_inspect_shows_the_escaped_names(run: Callable[..., Result], hostile: Path) -> None:
    result = run("inspect", "hostile.pt", "--spec", "spec.toml")
    assert "a\\x1b]0;owned\\x07\\x1b[2J" in result.stdout
    assert "c\\x1b[2J" in result.stdout
    assert "x\\n✓ verified" in result.stdout
    assert "\\u202etxt.exe" in result.stdout


def test_diff_of_different_weights_escapes_the_table(
    run: Callable[..., Result], hostile: Path, workdir: Path
) -> None:
    state = {name: value * 2 for name, value in torch.load(hostile, weights_only=True).items()}
    write_torch(workdir / "other.pt", state)
    result = run("diff", "hostile.pt", "other.pt")
    assert_nothing_raw(result.stdout, result.stderr)
    assert "\\x9b31m" in result.stdout


def test_warnings_escape_what_they_quote(run: Callable[..., Result], workdir: Path) -> None:
    name = f"run{HOSTILE}.pt"
    write_torch(workdir / name, {"model": mlp_state(), "loss": torch.tensor(0.5)})
    result = run("inspect", name)
    assert result.exit_code == 0, result.stderr
    assert "warning: run\\x1b]0;owned\\x07\\x1b[2J.pt: the model is the state dict" in result.stderr
    assert_nothing_raw(result.stdout, result.stderr)


def test_errors_escape_what_they_quote(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", f"missing{HOSTILE}\n✓ verified.safetensors")
    assert result.exit_code == 2
    assert_nothing_raw(result.stderr)
    assert result.stderr.splitlines()[0] == (
        "error: missing\\x1b]0;owned\\x07\\x1b[2J\\n✓ verified.safetensors: no such file or folder"
    )


def test_the_console_escapes_what_a_renderer_left_raw(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    table = Table()
    table.add_column("name")
    table.add_row(f"t{HOSTILE}")
    console.print(table)
    console.print(Text(f"n{HOSTILE}"), "two\nlines")
    out = capsys.readouterr().out
    assert_nothing_raw(out)
    assert "two\nlines" in out  # its own line breaks stay


def test_printable_escapes_each_control_as_python_does() -> None:
    assert printable("a\x1b[1mb\x07\x9b\u202e\ud800\n\t") == (
        "a\\x1b[1mb\\x07\\x9b\\u202e\\ud800\\n\\t"
    )
    assert printable("plain ✓ text") == "plain ✓ text"
    assert printable_lines("a\nb\x1b") == "a\nb\\x1b"
    assert xml_text("a\tb\n\x00\x1b\ufffe") == "a\tb\n\\x00\\x1b\\ufffe"


def test_junit_of_hostile_names_parses(run: Callable[..., Result], hostile: Path) -> None:
    import xml.etree.ElementTree as ET

    result = run(
        "check", "hostile.pt", "--spec", "spec.toml", "--max-abs", "0.5", "--format", "junit"
    )
    assert result.exit_code == 1, result.stderr
    root = ET.fromstring(result.stdout.encode("utf-8"))
    names = {case.get("name") for suite in root for case in suite}
    assert "a\\x1b]0;owned\\x07\\x1b[2J.weight" in names
    assert "x\n✓ verified" in names  # a line feed is XML text, encoded in the attribute
