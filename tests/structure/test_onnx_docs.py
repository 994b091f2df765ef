"""The documentation's ONNX op table is the table of rows itself."""

from __future__ import annotations

from pathlib import Path

from weissi_cli.structure.onnx_ops import op_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "onnx.md"


def test_the_onnx_op_table_in_the_docs_is_current() -> None:
    assert op_table() in DOCS.read_text(encoding="utf-8")
