"""Fixtures of the solver tests."""

from __future__ import annotations

import pytest

from weissi_cli.balance import streamed
from weissi_cli.balance.streamed import StreamedSquares


@pytest.fixture
def streamed_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No axis squares held (every matrix streamed), and the name of the tensor each pass
    over streamed squares reads, once per pass."""
    monkeypatch.setattr(streamed, "HELD_BYTES", 0)
    passes: list[str] = []
    original = StreamedSquares._stream

    def counted(self: StreamedSquares, product: object) -> None:
        passes.append(self.name)
        original(self, product)  # type: ignore[arg-type]

    monkeypatch.setattr(StreamedSquares, "_stream", counted)
    return passes
