"""The documentation's op table is the engine's own table."""

from __future__ import annotations

from pathlib import Path

from weissi_cli.structure.engine.rules import rule_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "structure.md"


def test_the_op_table_in_the_docs_is_current() -> None:
    assert rule_table() in DOCS.read_text(encoding="utf-8")
