"""The CLI reference page is generated from the application and kept current."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from weissi_cli.cli import reference
from weissi_cli.cli.app import COMMANDS, build_app

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_reference_page_is_the_generated_one() -> None:
    assert PAGE.read_text(encoding="utf-8") == reference.render_reference(), (
        "docs/cli.md differs from the application: run python -m weissi_cli.cli.reference"
    )


def _sections(text: str) -> dict[str, str]:
    sections = {}
    for part in text.split("\n## ")[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip("`")] = body
    return sections


def _row(section: str, spelling: str) -> str:
    rows = [line for line in section.splitlines() if line.startswith(f"| `{spelling}")]
    assert len(rows) == 1, f"{spelling}: {len(rows)} rows"
    return rows[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_argument_and_option_is_listed_with_its_default(name: str) -> None:
    command = typer.main.get_command(build_app()).commands[name]  # type: ignore[attr-defined]
    section = _sections(reference.render_reference())[f"weissi {name}"]
    assert f"weissi {name} [OPTIONS]" in section
    assert reference._inline((command.help or "").splitlines()[0]) in section
    options = [p for p in command.params if p.param_type_name == "option"]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    for argument in arguments:
        assert f"| `{argument.name}" in section
    for option in options:
        spellings = sorted(option.opts, key=lambda spelling: len(spelling) > 2)
        row = _row(section, spellings[0])
        assert all(f"`{spelling}" in row for spelling in spellings)
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        default = option.default
        if option.required:
            assert cells[1] == "required"
        elif option.is_flag:
            assert cells[1] == ("on" if default is True else "off")
        elif default is None:
            assert cells[1] == "—"
        else:
            assert cells[1] == f"`{default}`"
    table_rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(table_rows) == len(options) + len(arguments)


def test_the_root_options_are_listed() -> None:
    section = _sections(reference.render_reference())["weissi"]
    assert "| `--version` |" in section
    assert "weissi [OPTIONS] COMMAND" in section


def test_help_text_is_escaped_outside_code_spans() -> None:
    assert reference._inline("a *b* `c*d` [x]") == r"a \*b\* `c*d` \[x\]"
    assert reference._cell("fails\n  when |w| > v") == r"fails when \|w\| \> v"


def test_check_mode_reports_a_stale_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "cli.md"
    page.write_text("# CLI reference\n\nout of date\n", encoding="utf-8")
    assert reference.main([str(page), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert reference.main([str(page)]) == 0
    assert page.read_text(encoding="utf-8") == reference.render_reference()
    assert reference.main([str(page), "--check"]) == 0
    assert reference.main([str(tmp_path / "missing.md"), "--check"]) == 1
