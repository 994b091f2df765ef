"""The hostile `.pt2` corpus, built once per session for the safety and fuzz tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.exported_models import export, relu_mlp
from tests.io.pt2_corpus import MARKER_MODULE, Hostile, build_corpus


@dataclass(frozen=True)
class Corpus:
    valid: Path
    hostile: dict[str, Hostile]
    folder: Path  # holds the archives and the module a hostile tree spec imports
    marker: Path  # what any payload creates when it runs


@pytest.fixture(scope="session")
def pt2_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("pt2_corpus")
    valid = export(*relu_mlp(), folder / "valid.pt2")
    marker = folder / "PAYLOAD_RAN"
    hostile = build_corpus(valid, folder / "hostile", marker)
    return Corpus(valid, hostile, folder / "hostile", marker)


@pytest.fixture
def armed(pt2_corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> Iterator[Corpus]:
    """The corpus with its marker module importable (as a hostile tree spec would import
    it) and not yet imported, and no marker: whatever runs a payload leaves the marker."""
    monkeypatch.syspath_prepend(str(pt2_corpus.folder))
    sys.modules.pop(MARKER_MODULE, None)
    pt2_corpus.marker.unlink(missing_ok=True)
    yield pt2_corpus
    sys.modules.pop(MARKER_MODULE, None)
