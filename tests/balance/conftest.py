"""Fixtures of the solver tests."""

from __future__ import annotations

from typing import Any

import pytest

from weissi_cli.balance import streamed
from weissi_cli.balance.streamed import StreamedSquares


@pytest.fixture
def streamed_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No axis squares held (every matrix streamed), and the name of the tensor each pass
    over streamed squares reads, once per pass."""
    monkeypatch.setattr(streamed, "HELD_BYTES", 0)
    passes: list[str] = []
    for method in ("_stream", "_products"):  # every pass goes through one of the two
        original = getattr(StreamedSquares, method)

        def counted(self: StreamedSquares, *args: object, original: Any = original) -> None:
            passes.append(self.name)
            original(self, *args)

        monkeypatch.setattr(StreamedSquares, method, counted)
    return passes
